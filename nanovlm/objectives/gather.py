"""The cross-process gather the contrastive losses run under DDP (open_clip's gather_with_grad + local_loss design).

Each process scores its own queries against every process's gallery; these functions build that gallery. Outside a
process group (or with one process) each returns its input, so the single-process path costs nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's `x` [B, D] concatenated in rank order [W*B, D], and where this process's rows start.

    The gather keeps gradients: backward sums, over all processes, the gradients that flow into each
    process's rows. With DDP then averaging parameter gradients, N processes with batch B train exactly
    like one process with batch N*B (open_clip's gather_with_grad + local_loss design). Outside a
    process group it returns (x, 0), so the single-process path costs nothing.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x)), dist.get_rank() * len(x)


def gather_ids(x: torch.Tensor) -> torch.Tensor:
    """Every process's integer ids `x` [B, ...] concatenated in rank order (no gradient: ids are labels)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_negatives(
    negative_emb: torch.Tensor | None, negative_valid: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Every process's hard negatives [W*M, D] (with gradients) and their validity [W*M], like the captions."""
    if negative_emb is None:
        return None, None
    all_negative_emb, _ = gather_with_grad(negative_emb)
    if negative_valid is None:
        return all_negative_emb, None
    return all_negative_emb, gather_ids(negative_valid.bool())
