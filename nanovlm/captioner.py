"""Captioner: the LightningModule for the captioning objectives (loss=cap, loss=coca).

It is a DualEncoder whose objective also writes captions, so it inherits everything that does not depend on
how a caption is scored: optimizer groups, the epoch's train/loss, logging, the retrieval metrics and their
tie rule. A subclass, rather than branches inside DualEncoder, keeps the contrastive module as it was; what a
captioner adds is in four places here:
- its batch goes through `encode_with_tokens` and the decoder's memory as well as the pooled embeddings;
- loss=cap has no text encoder (`text_encoder=None`): a caption is scored by its log-likelihood given the
  image, loss=coca by cosine unless `loss.score=likelihood`. Retrieval ranks with whichever score, through the
  same RetrievalRecall as the dual encoders;
- validation also writes each val image's caption greedily and logs `val/caption_exact` and per-slot accuracy;
- `generate` / `score_pairs` are what `nanovlm.evaluate` and other callers use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from nanovlm.captioning import (
    CaptionLoss,
    greedy_decode,
    log_likelihood,
    pair_log_likelihoods,
    slot_vocabulary,
)
from nanovlm.data import CLS, VOCAB
from nanovlm.metrics import CaptionAccuracy
from nanovlm.module import DualEncoder, OptimizerFactory, SchedulerFactory

# The seed world's caption slots, in token order after [CLS]; the metric names are val/caption_<slot>.
SHAPES_SLOTS: tuple[str, ...] = ("colour", "shape", "position")


@dataclass(frozen=True)
class Images:
    """Images as the model sees them: pooled embeddings [B, D] and the decoder's memory [B, M, W]."""

    emb: torch.Tensor
    memory: torch.Tensor

    def take(self, index: torch.Tensor) -> Images:
        return Images(self.emb[index], self.memory[index])


@dataclass(frozen=True)
class Captions:
    """Captions as the model sees them: token ids [B, T] and text embeddings [B, D] (None without a text
    encoder, loss=cap)."""

    tokens: torch.Tensor
    emb: torch.Tensor | None

    def take(self, index: torch.Tensor) -> Captions:
        return Captions(self.tokens[index], None if self.emb is None else self.emb[index])


class Captioner(DualEncoder):
    """An image encoder, the objective's text decoder (`loss.decoder`) and, for loss=coca, a text encoder."""

    loss: CaptionLoss

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module | None,
        loss: CaptionLoss,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        slot_names: tuple[str, ...] = SHAPES_SLOTS,
        bos_id: int = VOCAB.index(CLS),
    ) -> None:
        if loss.score == "cosine" and text_encoder is None:
            raise ValueError("loss.score=cosine needs a text encoder (loss=coca); loss=cap scores by likelihood")
        super().__init__(image_encoder, text_encoder, loss, optimizer, scheduler)  # type: ignore[arg-type]
        self.val_caption = CaptionAccuracy(slot_names)
        self.bos_id = bos_id
        self._gallery_encoded: tuple[Images, Captions] | None = None
        self._allowed: torch.Tensor | None = None  # [T, V] words each slot can hold (constrained decoding)

    def encode_images(self, images: torch.Tensor) -> Images:
        image_emb, image_tokens = self.image_encoder.encode_with_tokens(images)
        return Images(image_emb, self.loss.decoder.memory(image_emb, image_tokens))

    def encode_captions(self, tokens: torch.Tensor) -> Captions:
        return Captions(tokens, self.text_encoder(tokens) if self.text_encoder is not None else None)

    def score_matrix(self, images: Images, captions: Captions) -> torch.Tensor:
        """[I, C] scores of every image with every caption, higher is a better match: the caption's
        log-likelihood given the image, or the cosine of their embeddings (loss=coca's default)."""
        if self.loss.score == "likelihood":
            return pair_log_likelihoods(self.loss.decoder, images.memory, captions.tokens)
        assert captions.emb is not None
        return images.emb @ captions.emb.T

    def score_pairs(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B] scores of images[i] with tokens[i], on the same scale as `score_matrix`."""
        encoded, captions = self.encode_images(images), self.encode_captions(tokens)
        if self.loss.score == "likelihood":
            return log_likelihood(self.loss.decoder, encoded.memory, tokens)
        assert captions.emb is not None
        return (encoded.emb * captions.emb).sum(dim=-1)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy captions [B, T] (token ids, [CLS] first) for images [B, 3, H, W]; see `greedy_decode`."""
        memory = self.encode_images(images).memory
        return greedy_decode(self.loss.decoder, memory, self.bos_id, self.loss.decoder.pos_embed.shape[1], allowed)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, captions = self.encode_images(batch["image"]), self.encode_captions(batch["tokens"])
        loss = self.loss(images.emb, images.memory, captions.tokens, captions.emb)
        self._loss_sum += loss.detach() * len(captions.tokens)
        self._loss_count += len(captions.tokens)
        return loss

    def on_validation_epoch_start(self) -> None:
        gallery = self.trainer.datamodule.gallery()
        images, tokens = gallery["image"].to(self.device), gallery["tokens"].to(self.device)
        self._gallery_encoded = self.encode_images(images), self.encode_captions(tokens)
        if self.loss.constrained:
            self._allowed = slot_vocabulary(tokens, self.loss.decoder.head.out_features)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        assert self._gallery_encoded is not None
        gallery_images, gallery_captions = self._gallery_encoded
        # Every val item is a gallery item, already encoded (same weights, eval mode): index, don't re-encode.
        index = batch["index"]
        images, captions = gallery_images.take(index), gallery_captions.take(index)
        loss = self.loss(images.emb, images.memory, captions.tokens, captions.emb)
        self.log("val/loss", loss, batch_size=len(index), sync_dist=True)
        # The gallery is in item order, so a query's item index is also its true gallery column.
        self.val_i2t.update(self.score_matrix(images, gallery_captions), index, index)
        self.val_t2i.update(self.score_matrix(gallery_images, captions).T, index, index)
        length = captions.tokens.shape[1]
        self.val_caption.update(greedy_decode(self.loss.decoder, images.memory, self.bos_id, length, self._allowed),
                                captions.tokens, index)  # fmt: skip

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # val/R@1 and the recall metrics of both directions
        caption = {f"val/caption_{name}": value for name, value in self.val_caption.compute().items()}
        self.val_caption.reset()
        # Through self.log, like val/R@1, so a callback can monitor it; the per-slot numbers go to the loggers.
        self.log("val/caption_exact", caption.pop("val/caption_exact"), prog_bar=True)
        self.log_to_loggers(caption)
        self._gallery_encoded, self._allowed = None, None


def is_captioning(loss_cfg: DictConfig) -> bool:
    """Whether a `loss` config node is a captioning objective (its target is a CaptionLoss)."""
    from hydra.utils import get_class

    return issubclass(get_class(loss_cfg._target_), CaptionLoss)


def build_captioner(
    loss_cfg: DictConfig,
    image_encoder: nn.Module,
    text_encoder: nn.Module,
    vocab_size: int,
    optimizer: OptimizerFactory,
    scheduler: SchedulerFactory | None,
) -> Captioner:
    """The Captioner a captioning `loss` config describes. The decoder is sized by the vocabulary and the image
    encoder's token grid, which the yaml cannot know, so they are passed here; loss=cap drops the text encoder."""
    loss: CaptionLoss = instantiate(
        loss_cfg,
        vocab_size=vocab_size,
        token_dim=image_encoder.token_dim,
        num_tokens=image_encoder.num_tokens,
        embed_dim=image_encoder.embed_dim,
    )
    text_encoder = text_encoder if loss.uses_text_encoder else None
    return Captioner(image_encoder, text_encoder, loss, optimizer, scheduler)
