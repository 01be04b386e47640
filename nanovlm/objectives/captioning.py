"""Captioning objectives: a small transformer text decoder (nanovlm.models.decoder) writes an image's caption.

`loss=cap` trains only the decoder's next-token cross-entropy (Cap/CapPa, Tschannen et al. 2023);
`loss=coca` adds it to CLIP's contrastive loss (CoCa, Yu et al. 2022). As with CLIP's temperature, the
objective owns its parameters: here the whole decoder, so choosing the loss is the whole change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanovlm.data.shapes import SEQ_LEN
from nanovlm.models.decoder import TextDecoder
from nanovlm.models.decoding import DECODERS
from nanovlm.objectives.contrastive import ClipLoss


def teacher_forced_loss(
    decoder: TextDecoder, memory: torch.Tensor, tokens: torch.Tensor, parallel: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy: the decoder reads tokens[:, :-1] (the true prefix, [CLS] first, whatever
    it would have predicted itself) and is scored on tokens[:, 1:].

    `parallel` [B] bool marks captions trained by parallel prediction (CapPa): their inputs are all [CLS], so
    every word must be read off the image alone, with no earlier word to lean on.
    """
    inputs = tokens[:, :-1]  # [B, T-1]
    if parallel is not None:
        inputs = torch.where(parallel[:, None], tokens[:, :1].expand_as(inputs), inputs)
    logits = decoder(inputs, memory)  # [B, T-1, V]
    # Padding is not a target: the mean is over real tokens (EOS included), whatever the batch's padded length.
    ignore = -100 if decoder.pad_id is None else decoder.pad_id
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=ignore)


SCORES = ("likelihood", "cosine")
RETRIEVAL = ("auto", True, False)
# Above this many (image, distinct caption input) decoder passes, ranking a whole gallery by likelihood is not done
# by default (loss.retrieval=auto, nanovlm.evaluate): the seed world needs 243 x 27, data=scenes 12,636 x 468.
MAX_LIKELIHOOD_PAIRS = 1_000_000


class CaptionLoss(nn.Module):
    """loss=cap: teacher-forced next-token cross-entropy of a TextDecoder that this objective owns.

    `vocab_size`, `token_dim`, `num_tokens` and `embed_dim` come from the world and the image encoder (see
    `nanovlm.tasks.captioner.Captioner.from_config`); the yaml gives the decoder's sizes and `constrained`, whether
    generation keeps each slot to the words it can hold. A captioner has no text embedding, so it scores a
    caption by its log-likelihood (`score`). `retrieval` says whether validation ranks the whole gallery
    (val/R@*): by likelihood every (image, distinct caption input) pair is a decoder pass, and on data=scenes that
    is 12,636 x 468 per validation. "auto" (the default) ranks when that is at most MAX_LIKELIHOOD_PAIRS passes
    (or the score is cosine) and otherwise says so in one line; true always ranks, false never (val/R@* nan).
    Hard-negative accuracy and the caption metrics are computed either way.
    """

    task = "captioner"  # the conf/model option it trains (tasks.dual_encoder.check_objective)
    score = "likelihood"
    uses_text_encoder = False  # the Captioner is built without one

    def __init__(
        self,
        vocab_size: int,
        token_dim: int,
        num_tokens: int,
        embed_dim: int,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        constrained: bool = True,
        parallel_fraction: float = 0.0,
        retrieval: bool | str = "auto",
        decoding: str = "greedy",
        max_len: int = SEQ_LEN,
        pad_id: int | None = None,
    ) -> None:
        super().__init__()
        if retrieval not in RETRIEVAL:
            raise ValueError(f"loss.retrieval must be one of auto, true, false, got {retrieval!r}")
        if not 0.0 <= parallel_fraction <= 1.0:
            raise ValueError(f"loss.parallel_fraction must be in [0, 1], got {parallel_fraction}")
        if decoding not in DECODERS:
            raise ValueError(f"loss.decoding must be one of {', '.join(DECODERS)}, got {decoding!r}")
        self.decode = DECODERS[decoding]
        self.decoder = TextDecoder(
            vocab_size, token_dim, num_tokens, embed_dim, width, depth, heads, mlp_ratio, dropout, max_len, pad_id
        )
        self.parallel_fraction, self.retrieval = parallel_fraction, retrieval
        self.constrained = constrained

    def forward(
        self,
        image_emb: torch.Tensor,
        memory: torch.Tensor,
        tokens: torch.Tensor,
        text_emb: torch.Tensor | None,
        caption_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of a batch; `memory` is `self.decoder.memory(...)` of its images. `text_emb` and `caption_id`
        (each pair's caption, for a contrastive term's several true pairs) are unused here."""
        return self.caption_loss(memory, tokens)

    def caption_loss(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing; in training, a random `parallel_fraction` of the captions by parallel prediction."""
        parallel = None
        if self.training and self.parallel_fraction > 0:
            parallel = torch.rand(len(tokens), device=tokens.device) < self.parallel_fraction  # [B]
        return teacher_forced_loss(self.decoder, memory, tokens, parallel)

    def extra_log(self) -> dict[str, torch.Tensor]:
        return {}


class CocaLoss(CaptionLoss):
    """loss=coca: `contrastive_weight` x CLIP's loss on the pooled embeddings + `caption_weight` x the
    captioning loss. The contrastive part is `ClipLoss` itself (temperature and all). CoCa's paper weighs
    captioning 2 : 1; here both default to 1 (see docs/captioning.md).

    `score` picks how candidates are ranked: "cosine" of the contrastive embeddings (CoCa's retrieval), or
    "likelihood" under the decoder (as loss=cap does).
    """

    def __init__(
        self,
        vocab_size: int,
        token_dim: int,
        num_tokens: int,
        embed_dim: int,
        contrastive_weight: float = 1.0,
        caption_weight: float = 1.0,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
        score: str = "cosine",
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        constrained: bool = True,
        parallel_fraction: float = 0.0,
        retrieval: bool | str = "auto",
        decoding: str = "greedy",
        max_len: int = SEQ_LEN,
        pad_id: int | None = None,
    ) -> None:
        super().__init__(
            vocab_size, token_dim, num_tokens, embed_dim, width, depth, heads, mlp_ratio, dropout, constrained,
            parallel_fraction, retrieval, decoding, max_len, pad_id,
        )  # fmt: skip
        if contrastive_weight < 0 or caption_weight < 0 or contrastive_weight + caption_weight == 0:
            raise ValueError(
                "loss.contrastive_weight and loss.caption_weight must be >= 0 and not both 0, "
                f"got {contrastive_weight} and {caption_weight}"
            )
        if score not in SCORES:
            raise ValueError(f"loss.score must be one of {', '.join(SCORES)}, got {score!r}")
        self.contrastive = ClipLoss(temperature, learnable_temperature)
        self.uses_text_encoder = True
        self.contrastive_weight, self.caption_weight, self.score = contrastive_weight, caption_weight, score

    def forward(
        self,
        image_emb: torch.Tensor,
        memory: torch.Tensor,
        tokens: torch.Tensor,
        text_emb: torch.Tensor | None,
        caption_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert text_emb is not None, "loss=coca needs the text encoder's embeddings"
        captioning = self.caption_loss(memory, tokens)
        contrastive = self.contrastive(image_emb, text_emb, caption_id=caption_id)
        return self.contrastive_weight * contrastive + self.caption_weight * captioning

    def extra_log(self) -> dict[str, torch.Tensor]:
        return self.contrastive.extra_log()
