"""DualEncoder: the LightningModule that pairs an image encoder and a text encoder under one loss."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig
from torch import nn

from nanovlm.data.datamodule import Gallery
from nanovlm.data.tokenizer import TextTokenizer
from nanovlm.evaluate.metrics import HardNegativeAccuracy, RetrievalRecall

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

# Only the weight matrices of these layers are decayed (MultiheadAttention owns its fused
# in_proj_weight directly). Biases, norms, embeddings, [CLS]/positional parameters and the
# loss's scale/bias are not: shrinking them towards 0 has no regularising meaning.
DECAYED_LAYERS = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)


def check_hard_negatives(loss: nn.Module, world: Any) -> None:
    """`loss.hard_negatives=true` trains on the world's generated negative captions: a world without them is
    refused (ValueError), by `training.build` before any run starts and by `DualEncoder.setup` for other callers."""
    if getattr(loss, "hard_negatives", False) and not getattr(world, "negative_kinds", ()):
        world_name = f"{type(world).__module__}.{type(world).__qualname__}" if world is not None else "no datamodule"
        raise ValueError(f"loss.hard_negatives=true needs a world with hard negatives (data=scenes), got {world_name}")


def check_objective(task: type[DualEncoder], loss_cfg: DictConfig) -> None:
    """An objective names the task it trains (`task`, its conf/model option): a captioning loss cannot train a dual
    encoder, nor CLIP's a captioner. The loss yamls choose their model themselves, so this fires only when
    `model=` is given against them (ValueError: one ConfigError line from `training.build`)."""
    wanted = getattr(get_class(loss_cfg._target_), "task", task.task)
    if wanted != task.task:
        raise ValueError(
            f"loss ({loss_cfg._target_}) trains model={wanted}, not model={task.task}; "
            "leave out model= (each loss option picks its model)"
        )


def weight_decay_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decay, no_decay): trainable parameters split as in nanoGPT/open_clip."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_matrix = isinstance(module, DECAYED_LAYERS) and name.endswith("weight")
            (decay if is_matrix else no_decay).append(param)
    return decay, no_decay


def check_embed_dim(embed_dim: int | None, *encoders: nn.Module | None) -> None:
    """Every encoder outputs `embed_dim` (model.embed_dim) wide vectors, or the scores are a shape error at the
    first step; an encoder's own `embed_dim` set apart from it (`encoder.embed_dim=16`) is refused here instead."""
    if embed_dim is None:
        return
    for encoder in encoders:
        width = getattr(encoder, "embed_dim", embed_dim)
        if width != embed_dim:
            raise ValueError(f"an encoder outputs {width} dims but model.embed_dim={embed_dim}; set model.embed_dim")


class DualEncoder(L.LightningModule):
    """Encoders + contrastive loss + retrieval metrics.

    Validation ranks each val query against the world's whole gallery of the other modality, encoded once per
    validation epoch: image->text against every distinct caption (one is true), text->image against every image
    (all images showing the caption are true; R@k: one of them is in the top k). On a world with hard negatives
    (data=scenes) it also logs val/hn_<kind>: the share of val images whose caption outscores that negative.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_embed_dim(embed_dim, image_encoder, text_encoder)
        self.image_encoder, self.text_encoder, self.loss = image_encoder, text_encoder, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_i2t, self.val_t2i = RetrievalRecall(), RetrievalRecall()
        self.val_hn: HardNegativeAccuracy | None = None  # made in setup() for a world with hard negatives
        self._gallery: tuple[torch.Tensor, torch.Tensor, Gallery] | None = None
        self._loss_sum, self._loss_count = torch.zeros(()), 0
        self.logged: dict[str, float] = {}
        self.validated_step: int | None = None  # the global step of the last validation (train() checks it)
        self.several_true_pairs = True  # whether the loss gets caption ids; setup() asks the world

    monitor = "val/R@1"  # what best.ckpt keeps the best of (train() reads it)
    task = "dual_encoder"  # its conf/model option; an objective's `task` names the one it trains

    @classmethod
    def from_config(
        cls,
        cfg: DictConfig,
        tokenizer: TextTokenizer,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
    ) -> DualEncoder:
        """The task `cfg.model` describes (its `_target_` is this class), around the encoders `build_model` made.
        The objective is built here, not there, because what it needs beyond its yaml depends on the task: a
        captioner's decoder is sized by the tokenizer and the image encoder (Captioner.from_config)."""
        check_objective(cls, cfg.loss)
        task = instantiate(cfg.model, _partial_=True)  # the model group's own keys: embed_dim
        return task(image_encoder, text_encoder, instantiate(cfg.loss), optimizer, scheduler)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_encoder(images), self.text_encoder(tokens)

    def score_pairs(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B] how well caption `tokens[i]` fits `images[i]`: their cosine. Every objective has such a score
        (a captioner's is the caption's log-likelihood); hard-negative accuracy compares these scores."""
        image_emb, text_emb = self(images, tokens)
        return (image_emb * text_emb).sum(dim=-1)

    def setup(self, stage: str) -> None:
        if stage == "fit" and hasattr(self.loss, "set_world_size"):  # before Lightning restores a checkpoint
            self.loss.set_world_size(self.trainer.world_size)  # SigLIP's bias: -ln of the global batch
        datamodule = getattr(self.trainer, "datamodule", None)
        self.several_true_pairs = bool(getattr(datamodule, "repeats_captions", True))
        check_hard_negatives(self.loss, datamodule)
        kinds = tuple(getattr(datamodule, "negative_kinds", ()))
        if kinds and self.val_hn is None:
            self.val_hn = HardNegativeAccuracy(kinds).to(self.device)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image_emb, text_emb = self(batch["image"], batch["tokens"])
        # [B]: pairs of the same caption are all positives. A world without repeated captions passes none, and the
        # loss takes open_clip's one-positive path (the same maths; the same bits).
        caption_id = batch.get("caption_id") if self.several_true_pairs else None
        if getattr(self.loss, "hard_negatives", False):
            negatives = batch["negatives"]  # [B, K, L]
            negative_emb = self.text_encoder(negatives.flatten(0, 1))  # [B*K, D]
            negative_id = batch.get("negative_id")  # [B, K]: the caption each negative spells
            loss = self.loss(
                image_emb,
                text_emb,
                negative_emb,
                batch["negative_valid"].flatten(),
                caption_id=caption_id,
                negative_id=None if negative_id is None else negative_id.flatten(),
            )
        else:
            loss = self.loss(image_emb, text_emb, caption_id=caption_id)
        self._loss_sum += loss.detach() * len(image_emb)
        self._loss_count += len(image_emb)
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0

    def on_train_epoch_end(self) -> None:
        # One self.log per epoch: each call's Lightning bookkeeping is a sizeable share of a step this small.
        loss = self._loss_sum / max(self._loss_count, 1)
        self.log("train/loss", loss, prog_bar=True, batch_size=self._loss_count, sync_dist=True)
        extra = {f"train/{name}": value for name, value in self.loss.extra_log().items()}
        self.log_to_loggers({**extra, "train/lr": self.optimizers().param_groups[0]["lr"]})

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """[N, D] in chunks: a whole scenes gallery (12,636 images) at once would hold ~0.5 GB of activations."""
        return torch.cat(
            [self.image_encoder(images[i : i + chunk].to(self.device)) for i in range(0, len(images), chunk)]
        )

    def on_validation_epoch_start(self) -> None:
        gallery: Gallery = self.trainer.datamodule.gallery()
        images = self.encode_images(gallery.images)
        texts = self.text_encoder(gallery.tokens.to(self.device))
        self._gallery = (images, texts, gallery)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        assert self._gallery is not None
        gallery_images, gallery_texts, gallery = self._gallery
        # Every val image and caption is also in the gallery, already encoded (same weights, eval mode): index.
        rows, columns = gallery.rows(batch["index"]), gallery.columns(batch["caption_id"])
        image_emb, text_emb = gallery_images[rows], gallery_texts[columns]
        # self.log (not log_to_loggers): callbacks such as EarlyStopping(monitor="val/loss") read it.
        # Val batches of a world with repeated captions are mostly one caption's images.
        val_loss = self.loss(image_emb, text_emb, caption_id=columns if self.several_true_pairs else None)
        self.log("val/loss", val_loss, batch_size=len(image_emb), sync_dist=True)
        # Image queries: every caption the image shows is a true item. Text queries: each caption the batch's images
        # show, once (its id is the caption: across batches and processes a caption is counted once), with every
        # gallery image showing it true.
        self.val_i2t.update(image_emb @ gallery_texts.T, gallery.truth[rows], batch["index"])
        asked = gallery.captions_of(rows)  # [Q] gallery columns
        asked_id = gallery.caption_index[asked]
        self.val_t2i.update(gallery_texts[asked] @ gallery_images.T, gallery.truth[:, asked].T, asked_id)
        if self.val_hn is not None:
            negatives = batch["negatives"]  # [B, K, L]
            negative_emb = self.text_encoder(negatives.flatten(0, 1)).view(*negatives.shape[:2], -1)  # [B, K, D]
            # The same cosines score_pairs gives, from the embeddings already at hand.
            true_scores = (image_emb * text_emb).sum(-1)  # [B]
            negative_scores = (image_emb[:, None] * negative_emb).sum(-1)  # [B, K]
            self.val_hn.update(true_scores, negative_scores, batch["negative_valid"], batch["index"])

    def on_validation_epoch_end(self) -> None:
        metrics: dict[str, torch.Tensor] = {}
        for direction, metric in (("i2t", self.val_i2t), ("t2i", self.val_t2i)):
            if metric.update_count == 0:  # not ranked this epoch (a captioner with loss.retrieval=false): nan
                metrics.update({f"val/{direction}_{k}": torch.tensor(float("nan")) for k in ("R@1", "R@5", "R@10")})
                continue
            metrics.update({f"val/{direction}_{k}": v for k, v in metric.compute().items()})
            metric.reset()
        if self.val_hn is not None:
            metrics.update({f"val/hn_{kind}": v for kind, v in self.val_hn.compute().items()})
            self.val_hn.reset()
        # One number for checkpointing, early stopping and sweeps: both directions must be good. It goes
        # through self.log, which is what ModelCheckpoint and callbacks read; already global (metric sync).
        self.log("val/R@1", (metrics["val/i2t_R@1"] + metrics["val/t2i_R@1"]) / 2, prog_bar=True, sync_dist=True)
        self.log_to_loggers(metrics)
        self._gallery = None
        if not self.trainer.sanity_checking:
            self.validated_step = self.global_step

    def log_to_loggers(self, metrics: dict[str, torch.Tensor | float]) -> None:
        """Values that need no reduction across processes (already global, or the same on every rank), sent
        straight to the loggers instead of through self.log's per-key bookkeeping (11 keys per validation; the
        cost is in docs/performance.md). The latest value of each is kept in `self.logged` (train() returns them)."""
        values = {k: float(v) for k, v in metrics.items()}
        self.logged.update(values)
        for logger in self.loggers:  # Lightning's loggers write on rank 0 only
            logger.log_metrics({**values, "epoch": self.current_epoch}, step=self.global_step)

    def _optimizer_factory_for_trainer(self) -> OptimizerFactory:
        """The configured factory, unfused when gradients are clipped under mixed precision: Lightning refuses to
        clip for an optimizer that unscales gradients itself, as fused Adam declares (a speed setting must not
        turn `trainer=gpu +trainer.gradient_clip_val=1` into a crash)."""
        factory = self.optimizer_factory
        trainer = self._trainer
        mixed = "mixed" in str(getattr(trainer, "precision", ""))
        clips = getattr(trainer, "gradient_clip_val", None) not in (None, 0)
        if mixed and clips and getattr(factory, "keywords", {}).get("fused"):
            rank_zero_warn("optimizer.fused=true cannot clip gradients under mixed precision; using the unfused step")
            return functools.partial(factory, fused=False)
        return factory

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """The optimizer's own weight_decay applies to weight matrices only (see DECAYED_LAYERS). A loss
        with a `param_lr` (SigLIP's scale and bias) gets a third group at that lr. With a scheduler
        factory, the scheduler scales every group's lr alike, stepped every batch over the whole run."""
        decay, no_decay = weight_decay_groups(self)
        groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        param_lr = getattr(self.loss, "param_lr", None)
        loss_ids = {id(p) for p in self.loss.parameters()}
        loss_params = [p for p in no_decay if id(p) in loss_ids]  # trainable ones only
        if param_lr is not None and loss_params:
            groups[1]["params"] = [p for p in no_decay if id(p) not in loss_ids]
            groups.append({"params": loss_params, "weight_decay": 0.0, "lr": param_lr})
        optimizer = self._optimizer_factory_for_trainer()(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
