"""Contrastive losses over a batch of paired, L2-normalised embeddings.

A loss owns the parameters that define it (CLIP's temperature, SigLIP's scale and bias) so that
choosing a loss in the config is the whole change; the module just calls `loss(img, txt)`.

The maths lives in two plain functions, `clip_loss` and `siglip_loss`, that take the logit scale
(and bias) as arguments and accept a `label_offset`: with embeddings gathered from other processes,
a process passes its local queries, the gathered gallery and the position of its own items in it.

With `hard_negatives=True` (NegCLIP, Yuksekgonul et al. 2023) a loss also takes generated negative captions:
extra texts that are negatives only. They add columns to the image->text side (every image of the global batch
sees every valid extra text); the text->image side is unchanged. Under DDP they are gathered with gradients
like the captions.

Several true pairs per batch: a caption can be shown by several images (data=scenes: 9 each; COCO: an image has
5 captions). With `caption_id` given, every column whose caption equals the row's is a positive (`positives`
[B, N] bool): CLIP spreads the target mass evenly over them (UniCL, Yang et al. 2022; SupCon's L_out, Khosla et
al. 2020), SigLIP labels each such pair +1, and a hard negative is never a negative for an image whose own
caption it is. With unique captions the masks are the diagonal and the losses are today's open_clip ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nanovlm.objectives.gather import gather_ids, gather_negatives, gather_with_grad

# open_clip caps the learned logit scale at 100 (tau >= 0.01): beyond it training gets unstable.
MAX_LOGIT_SCALE = math.log(100.0)


def batch_targets(
    caption_id: torch.Tensor | None,
    negative_emb: torch.Tensor | None,
    negative_valid: torch.Tensor | None,
    negative_id: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(positives [B, N], negative_emb [M, D], negative_valid [B, M] or [M]): what this process's rows are scored
    against beyond the gathered captions, the one place both losses get it from.

    `caption_id` [B]: the caption of each local pair (None: every pair is its own caption, the diagonal).
    `negative_emb` [M_local, D] and `negative_valid` [M_local]: the local hard negatives (None: none), gathered
    with gradients like the captions. `negative_id` [M_local]: the caption each spells (-1: not a caption of the
    world); a negative is dropped from the rows whose own caption it is, so no row is pushed away from its truth.
    Ids are gathered across processes like the embeddings."""
    negative_emb, all_negative_valid = gather_negatives(negative_emb, negative_valid)
    if caption_id is None:
        return None, negative_emb, all_negative_valid
    all_caption_id = gather_ids(caption_id)
    positives = caption_id[:, None] == all_caption_id[None, :]  # [B, N]
    if negative_id is None:
        return positives, negative_emb, all_negative_valid
    not_own = gather_ids(negative_id)[None, :] != caption_id[:, None]  # [B, M]
    return positives, negative_emb, not_own if all_negative_valid is None else all_negative_valid.bool() & not_own


def diagonal(rows: int, columns: int, offset: int, device: torch.device) -> torch.Tensor:
    """[rows, columns] bool: row i's one positive is column i + offset (a process's own pairs in the batch)."""
    return torch.arange(columns, device=device)[None, :] == torch.arange(rows, device=device)[:, None] + offset


def multi_positive_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(t_i || softmax(logits_i)), with the target t_i spread evenly over row i's P_i
    positives (the first positives.shape[1] columns; later columns, the hard negatives, are never positives).

    That is the cross-entropy -sum_j t_ij log softmax(logits_i)_j minus the targets' entropy ln P_i: the same
    gradients, but a minimum of 0 however many positives a row has, where the cross-entropy's is ln P_i (ln 9 for
    a scenes batch of one caption's 9 images, which validation's sorted batches mostly are), so val/loss can be
    read and monitored as it is on the seed world. With one positive per row it is F.cross_entropy. Written out,
    not as F.cross_entropy's probability targets: a dropped (-inf) column with target 0 would give 0 * -inf = nan.
    """
    # At least float32, as autocast runs F.cross_entropy: a bf16 logsumexp loses the gradient's precision.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    positives = F.pad(positives, (0, logits.shape[1] - positives.shape[1]))  # [B, N + M]
    count = positives.sum(dim=1, keepdim=True)  # [B, 1] P_i
    positive_logit = (logits.masked_fill(~positives, 0.0) / count).sum(dim=1)  # [B] mean logit of the positives
    return (logits.logsumexp(dim=1) - positive_logit - count.squeeze(1).log()).mean()


def clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    all_image_emb: torch.Tensor | None = None,
    all_text_emb: torch.Tensor | None = None,
    label_offset: int = 0,
    negative_emb: torch.Tensor | None = None,
    negative_valid: torch.Tensor | None = None,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE. Local queries [B, D] are ranked against the (possibly gathered) other
    side [N, D]; query i's positive is column i + label_offset, or with `positives` [B, N] bool every marked
    column (the same mask both ways: image i and text i share caption i's positives). `logit_scale` is log(1/tau).

    `negative_emb` [M, D] (possibly gathered) are extra texts appended to every image's row only;
    `negative_valid` [M] or [B, M] bool drops the ones that do not exist or are that row's truth (logit -inf)."""
    all_image_emb = image_emb if all_image_emb is None else all_image_emb
    all_text_emb = text_emb if all_text_emb is None else all_text_emb
    scale = logit_scale.exp()
    logits_per_image = scale * image_emb @ all_text_emb.T  # [B, N]
    if negative_emb is not None:
        extra = scale * image_emb @ negative_emb.T  # [B, M]
        if negative_valid is not None:
            extra = extra.masked_fill(~negative_valid.bool().expand_as(extra), float("-inf"))
        logits_per_image = torch.cat([logits_per_image, extra], dim=1)  # [B, N + M]; positives stay in the first N
    logits_per_text = scale * text_emb @ all_image_emb.T  # [B, N]
    if positives is None:  # one true pair per row: open_clip's loss, bit for bit
        labels = torch.arange(len(image_emb), device=image_emb.device) + label_offset
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    i2t = multi_positive_cross_entropy(logits_per_image, positives)
    return (i2t + multi_positive_cross_entropy(logits_per_text, positives)) / 2


def siglip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    label_offset: int = 0,
    negative_emb: torch.Tensor | None = None,
    negative_valid: torch.Tensor | None = None,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pairwise sigmoid loss, -sum_ij log sigmoid(z_ij * (s * x_i . y_j + b)) / B, with z_ij = +1
    for the true pairs (j = i + label_offset, or every column `positives` [B, N] marks) and -1 otherwise.
    `text_emb` [N, D] may be gathered.

    `negative_emb` [M, D] (possibly gathered) adds M more texts with z = -1 for every image; `negative_valid`
    [M] or [B, M] bool keeps only the ones that exist and are not that row's truth. The sum is still divided by
    B, the number of images."""
    logits = logit_scale.exp() * image_emb @ text_emb.T + logit_bias  # [B, N]
    if positives is None:
        positives = diagonal(len(image_emb), len(text_emb), label_offset, logits.device)
    signs = positives.to(logits.dtype) * 2 - 1  # +1 true pair, -1 otherwise
    loss = -F.logsigmoid(signs * logits).sum()
    if negative_emb is not None:
        extra = -F.logsigmoid(-(logit_scale.exp() * image_emb @ negative_emb.T + logit_bias))  # [B, M]
        if negative_valid is not None:
            extra = extra * negative_valid.to(extra.dtype).expand_as(extra)
        loss = loss + extra.sum()
    return loss / len(image_emb)


class ClipLoss(nn.Module):
    """CLIP's symmetric cross-entropy over logits = cosine / tau.

    tau is stored as a log logit scale, log(1/tau), the form open_clip learns it in. Fixed by
    default (a buffer, any tau > 0); with `learnable_temperature` it is a parameter, clamped to at
    most ln 100 (tau >= 0.01) before every use, as open_clip does after each step.

    `multi_positive` (default): pairs given the same `caption_id` are all positives of each other, and a hard
    negative is not used against the rows whose caption it spells (see `batch_targets`). False: only the
    diagonal, whatever the ids say (the loss before several true pairs were counted; for comparisons).
    """

    task = "dual_encoder"  # the conf/model option it trains (tasks.dual_encoder.check_objective)

    def __init__(
        self,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
        param_lr: float | None = None,
        hard_negatives: bool = False,
        multi_positive: bool = True,
    ) -> None:
        super().__init__()
        self.hard_negatives, self.multi_positive = hard_negatives, multi_positive
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        self.param_lr = _check_param_lr(param_lr)
        init = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    @property
    def temperature(self) -> torch.Tensor:
        return self.logit_scale.detach().exp().reciprocal()

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        negative_emb: torch.Tensor | None = None,
        negative_valid: torch.Tensor | None = None,
        caption_id: torch.Tensor | None = None,
        negative_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`negative_emb` [M, D], `negative_valid` [M] and `negative_id` [M]: this process's hard negatives
        (hard_negatives=true) and the caption each spells; `caption_id` [B] each pair's caption."""
        if isinstance(self.logit_scale, nn.Parameter):
            _clamp_logit_scale(self.logit_scale)
        all_image_emb, offset = gather_with_grad(image_emb)
        all_text_emb, _ = gather_with_grad(text_emb)
        positives, all_negative_emb, all_negative_valid = batch_targets(
            caption_id if self.multi_positive else None, negative_emb, negative_valid, negative_id
        )
        return clip_loss(
            image_emb,
            text_emb,
            self.logit_scale,
            all_image_emb,
            all_text_emb,
            offset,
            all_negative_emb,
            all_negative_valid,
            positives,
        )

    def extra_log(self) -> dict[str, torch.Tensor]:
        """Scalars worth a line on the dashboard."""
        return {"temperature": self.temperature}


class SigLipLoss(nn.Module):
    """SigLIP's pairwise sigmoid loss with a learnable logit scale and bias.

    The scale starts at `scale` (learned as its log, like CLIP's). The bias starts at `bias`; None
    means -ln(the number of texts each image is scored against), i.e. -ln(batch_size x world size): the
    log-odds of one positive among that many, the rule behind the paper's -10 (≈ -ln 32k at its batch sizes).
    At batch 64 the paper's -10 buries the positives so deep that training stalls near chance. Under DDP every
    image sees the gathered texts of all processes, so `set_world_size` (DualEncoder.setup, before a checkpoint
    is restored) sets the bias for the global batch; hard negatives are not counted (their number varies).

    `param_lr` is the learning rate of these two scalars (None: the optimizer's). The paper trains
    them at the encoders' lr for 100k+ steps; our runs have ~1k, in which an lr of 3e-3 moves the
    bias by < 0.5 and the scale stays near its start. The zoo runs end at s ~ 40-100, b ~ -11 to -31.
    """

    task = "dual_encoder"  # the conf/model option it trains (tasks.dual_encoder.check_objective)

    def __init__(
        self,
        scale: float = 10.0,
        bias: float | None = None,
        batch_size: int = 64,
        learnable: bool = True,
        param_lr: float | None = None,
        hard_negatives: bool = False,
        multi_positive: bool = True,
    ) -> None:
        super().__init__()
        self.hard_negatives, self.multi_positive = hard_negatives, multi_positive
        self.param_lr = _check_param_lr(param_lr)
        self.batch_size, self.bias_from_batch = batch_size, bias is None
        if not 0.0 < scale <= 100.0:
            raise ValueError(f"loss.scale must be in (0, 100], got {scale}")
        if bias is None and batch_size < 2:
            raise ValueError(f"loss.batch_size must be >= 2 to set loss.bias to -ln(batch_size), got {batch_size}")
        bias = -math.log(batch_size) if bias is None else bias
        self.logit_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=learnable)
        self.logit_bias = nn.Parameter(torch.tensor(float(bias)), requires_grad=learnable)

    @torch.no_grad()
    def set_world_size(self, world_size: int) -> None:
        """With `bias=None`, start the bias at -ln(batch_size x world_size): the number of texts each image is
        scored against once every process's texts are gathered. A set bias is left alone."""
        if self.bias_from_batch:
            self.logit_bias.fill_(-math.log(self.batch_size * world_size))

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        negative_emb: torch.Tensor | None = None,
        negative_valid: torch.Tensor | None = None,
        caption_id: torch.Tensor | None = None,
        negative_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As ClipLoss.forward."""
        _clamp_logit_scale(self.logit_scale)
        # Each process scores its own images against every process's texts: together the N*B x N*B pairs.
        all_text_emb, offset = gather_with_grad(text_emb)
        positives, all_negative_emb, all_negative_valid = batch_targets(
            caption_id if self.multi_positive else None, negative_emb, negative_valid, negative_id
        )
        return siglip_loss(
            image_emb,
            all_text_emb,
            self.logit_scale,
            self.logit_bias,
            offset,
            all_negative_emb,
            all_negative_valid,
            positives,
        )

    def extra_log(self) -> dict[str, torch.Tensor]:
        return {"scale": self.logit_scale.detach().exp(), "bias": self.logit_bias.detach()}


def _check_param_lr(param_lr: float | None) -> float | None:
    if param_lr is not None and param_lr <= 0:
        raise ValueError(f"loss.param_lr must be > 0 or null (the optimizer's lr), got {param_lr}")
    return param_lr


@torch.no_grad()
def _clamp_logit_scale(logit_scale: torch.Tensor) -> None:
    """In place, like open_clip's `logit_scale.clamp_(0, ln 100)` after each optimizer step: the
    parameter itself stays in range, so a gradient can bring it back down at once."""
    logit_scale.clamp_(max=MAX_LOGIT_SCALE)
