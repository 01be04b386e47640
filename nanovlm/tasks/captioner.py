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
- `write`, `score_matrix`, `pair_scores` and `score_pairs` are what `nanovlm.evaluate` and other callers use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig
from torch import nn

from nanovlm.data.datamodule import Gallery
from nanovlm.data.tokenizer import TextTokenizer
from nanovlm.evaluate.metrics import CaptionAccuracy
from nanovlm.models.decoder import likelihood_passes, log_likelihood, pair_log_likelihoods
from nanovlm.models.decoding import slot_vocabulary
from nanovlm.objectives.captioning import MAX_LIKELIHOOD_PAIRS, CaptionLoss
from nanovlm.tasks.dual_encoder import DualEncoder, OptimizerFactory, SchedulerFactory, check_objective


@dataclass(frozen=True)
class Images:
    """Images as the model reads them: pooled embeddings [B, D] and the decoder's memory [B, M, W]."""

    emb: torch.Tensor
    memory: torch.Tensor

    def take(self, index: torch.Tensor) -> Images:
        return Images(self.emb[index], self.memory[index])


@dataclass(frozen=True)
class Captions:
    """Captions as the model reads them: token ids [B, T] and text embeddings [B, D] (None without a text
    encoder, loss=cap)."""

    tokens: torch.Tensor
    emb: torch.Tensor | None

    def take(self, index: torch.Tensor) -> Captions:
        return Captions(self.tokens[index], None if self.emb is None else self.emb[index])


def slot_names(caption_form: str) -> tuple[str, ...]:
    """Metric names of a world's caption slots from its form: "<colour> <shape> <position>" -> colour, shape,
    position; a slot name that occurs twice is numbered ("<colour> <shape> <relation> <colour> <shape>" ->
    colour_1, shape_1, relation, colour_2, shape_2)."""
    names = [word.strip("<>") for word in caption_form.split()]
    counts = {n: names.count(n) for n in names}
    seen: dict[str, int] = {}
    numbered = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        numbered.append(f"{name}_{seen[name]}" if counts[name] > 1 else name)
    return tuple(numbered)


class Captioner(DualEncoder):
    """An image encoder, the objective's text decoder (`loss.decoder`) and, for loss=coca, a text encoder."""

    loss: CaptionLoss
    task = "captioner"

    @classmethod
    def from_config(
        cls,
        cfg: DictConfig,
        tokenizer: TextTokenizer,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
    ) -> Captioner:
        """The Captioner `cfg.model` and a captioning `cfg.loss` describe. The decoder is sized by the tokenizer's
        vocabulary, length and padding id and by the image encoder's token grid, which the yaml cannot know, so they
        are passed here; loss=cap drops the text encoder. A closed world's caption form names the slots the caption
        metrics report; free-form captions have none (only val/caption_exact)."""
        check_objective(cls, cfg.loss)
        loss: CaptionLoss = instantiate(
            cfg.loss,
            vocab_size=tokenizer.vocab_size,
            token_dim=image_encoder.token_dim,
            num_tokens=image_encoder.num_tokens,
            embed_dim=image_encoder.embed_dim,
            max_len=tokenizer.max_len,
            pad_id=tokenizer.pad_id,
        )
        text_encoder = text_encoder if loss.uses_text_encoder else None
        slots = slot_names(tokenizer.form) if tokenizer.form else ()
        task = instantiate(cfg.model, _partial_=True)  # the model group's own keys: embed_dim
        return task(image_encoder, text_encoder, loss, optimizer, scheduler, slots, tokenizer.bos_id, tokenizer.eos_id)

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module | None,
        loss: CaptionLoss,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        slots: tuple[str, ...] = ("colour", "shape", "position"),
        bos_id: int = 0,
        eos_id: int | None = None,
        embed_dim: int | None = None,
    ) -> None:
        if loss.score == "cosine" and text_encoder is None:
            raise ValueError("loss.score=cosine needs a text encoder (loss=coca); loss=cap scores by likelihood")
        super().__init__(image_encoder, text_encoder, loss, optimizer, scheduler, embed_dim)  # type: ignore[arg-type]
        self.slots, self.bos_id, self.eos_id = slots, bos_id, eos_id
        # Keeping each slot to its words needs slots: free-form captions (no caption form) are written unconstrained.
        self.constrained = loss.constrained and bool(slots)
        self.val_caption = CaptionAccuracy(slots)
        self._gallery_read: tuple[Images, Captions, Gallery] | None = None
        self._allowed: torch.Tensor | None = None  # [T, V] words each slot can hold (constrained decoding)
        self.ranks_gallery = loss.retrieval is not False  # loss.retrieval=auto is decided per world in setup()

    # --- Reading, scoring, writing ------------------------------------------------------------------------------

    def read_images(self, images: torch.Tensor, chunk: int = 2048) -> Images:
        """Embeddings and decoder memory of `images`, in chunks (a scenes gallery has 12,636 images)."""
        parts = []
        for i in range(0, len(images), chunk):
            image_emb, image_tokens = self.image_encoder.encode_with_tokens(images[i : i + chunk].to(self.device))
            parts.append((image_emb, self.loss.decoder.memory(image_emb, image_tokens)))
        return Images(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    def read_captions(self, tokens: torch.Tensor) -> Captions:
        tokens = tokens.to(self.device)
        return Captions(tokens, self.text_encoder(tokens) if self.text_encoder is not None else None)

    def score_matrix(self, images: Images, captions: Captions) -> torch.Tensor:
        """[I, C] scores of every image with every caption, higher is a better match: the caption's
        log-likelihood given the image, or the cosine of their embeddings (loss=coca's default)."""
        if self.loss.score == "likelihood":
            return pair_log_likelihoods(self.loss.decoder, images.memory, captions.tokens)
        assert captions.emb is not None
        return images.emb @ captions.emb.T

    def pair_scores(self, images: Images, captions: Captions) -> torch.Tensor:
        """[B] scores of images[i] with captions[i], on the same scale as `score_matrix`."""
        if self.loss.score == "likelihood":
            return log_likelihood(self.loss.decoder, images.memory, captions.tokens)
        assert captions.emb is not None
        return (images.emb * captions.emb).sum(dim=-1)

    def negative_scores(self, images: Images, negatives: torch.Tensor) -> torch.Tensor:
        """[B, K] scores of images[i] with each of its K negative captions negatives[i] [B, K, L]."""
        k = negatives.shape[1]
        repeated = images.take(torch.arange(len(negatives), device=negatives.device).repeat_interleave(k))
        return self.pair_scores(repeated, self.read_captions(negatives.flatten(0, 1))).view(len(negatives), k)

    def score_pairs(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B] how well caption tokens[i] fits images[i] (DualEncoder's scoring interface): log-likelihood for
        loss=cap, cosine for loss=coca unless loss.score=likelihood."""
        return self.pair_scores(self.read_images(images), self.read_captions(tokens))

    @torch.no_grad()
    def write(
        self, memory: torch.Tensor, world_tokens: torch.Tensor, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Captions [B, T] for the images whose memory is given (loss.decoding), ending at EOS where the tokenizer
        has one; with loss.constrained on a closed world, each slot keeps to the words it holds in `world_tokens`
        (the world's distinct captions, see `slot_vocabulary`; pass `allowed` if already computed)."""
        if allowed is None and self.constrained:
            allowed = slot_vocabulary(world_tokens, self.loss.decoder.head.out_features)
        decoder = self.loss.decoder
        return self.loss.decode(
            decoder, memory, self.bos_id, world_tokens.shape[1], allowed, self.eos_id, decoder.pad_id
        )

    def caption_metric(self) -> CaptionAccuracy:
        return CaptionAccuracy(self.slots)

    # --- Training and validation ---------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.loss.retrieval == "auto" and self.loss.score == "likelihood" and datamodule is not None:
            gallery = datamodule.gallery()
            passes = likelihood_passes(len(gallery.images), gallery.tokens)
            self.ranks_gallery = passes <= MAX_LIKELIHOOD_PAIRS
            if not self.ranks_gallery and stage == "fit":
                rank_zero_info(
                    f"val/R@* not measured: ranking this world's gallery by likelihood is {passes:,} decoder passes "
                    "per validation (loss.retrieval=true ranks it anyway; loss=coca ranks by cosine)"
                )

    @property
    def monitor(self) -> str:
        """The metric best.ckpt keeps the best of: val/R@1 when validation ranks the gallery, else the share of
        exactly right captions (a never-finite monitor would never pick a best epoch)."""
        return "val/R@1" if self.ranks_gallery else "val/caption_exact"

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, captions = self.read_images(batch["image"]), self.read_captions(batch["tokens"])
        caption_id = batch.get("caption_id") if self.several_true_pairs else None  # as DualEncoder.training_step
        loss = self.loss(images.emb, images.memory, captions.tokens, captions.emb, caption_id)
        self._loss_sum += loss.detach() * len(captions.tokens)
        self._loss_count += len(captions.tokens)
        return loss

    def on_validation_epoch_start(self) -> None:
        gallery = self.trainer.datamodule.gallery()
        images, captions = self.read_images(gallery.images), self.read_captions(gallery.tokens)
        self._gallery_read = images, captions, gallery
        if self.constrained:
            self._allowed = slot_vocabulary(captions.tokens, self.loss.decoder.head.out_features)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        assert self._gallery_read is not None
        gallery_images, gallery_captions, gallery = self._gallery_read
        # Every val image and caption is also in the gallery, already read (same weights, eval mode): index.
        rows, columns = gallery.rows(batch["index"]), gallery.columns(batch["caption_id"])
        images, captions = gallery_images.take(rows), gallery_captions.take(columns)
        caption_id = columns if self.several_true_pairs else None
        loss = self.loss(images.emb, images.memory, captions.tokens, captions.emb, caption_id)
        self.log("val/loss", loss, batch_size=len(rows), sync_dist=True)
        if self.ranks_gallery:  # the same queries and targets as DualEncoder's (see its validation_step)
            self.val_i2t.update(self.score_matrix(images, gallery_captions), gallery.truth[rows], batch["index"])
            asked = gallery.captions_of(rows)
            scores = self.score_matrix(gallery_images, gallery_captions.take(asked)).T  # [Q, N]
            self.val_t2i.update(scores, gallery.truth[:, asked].T, gallery.caption_index[asked])
        if self.val_hn is not None:
            negatives = self.negative_scores(images, batch["negatives"])  # [B, K]
            self.val_hn.update(self.pair_scores(images, captions), negatives, batch["negative_valid"], batch["index"])
        written = self.write(images.memory, captions.tokens, self._allowed)
        self.val_caption.update(written, captions.tokens, batch["index"])

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # val/R@1, the recall metrics of both directions, val/hn_<kind>
        caption = {f"val/caption_{name}": value for name, value in self.val_caption.compute().items()}
        self.val_caption.reset()
        # Through self.log, like val/R@1, so a callback can monitor it; the per-slot numbers go to the loggers.
        self.log("val/caption_exact", caption.pop("val/caption_exact"), prog_bar=True)
        self.log_to_loggers(caption)
        self._gallery_read, self._allowed = None, None
