"""VQA: the LightningModule that answers questions about pictures (data=vqa, model=vqa), with one of the fusion
designs of nanovlm.fusion (`fusion=early|cross|late|blind`), trained on answer cross-entropy.

Validation logs `val/vqa_acc` (exact answers over the val questions; on the CoGenT split, over condition B),
`val/vqa_acc_<family>` for each question family and, on CoGenT, `val/vqa_acc_A` over the held-out condition-A
images. `model.image_init=<ckpt>` starts the image encoder from a dual encoder's or captioner's checkpoint (the
LLaVA / nanoVLM recipe: a pretrained vision tower), `model.freeze_image=true` keeps it fixed.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import nn

from nanovlm.data.questions import ANSWERS, FAMILIES
from nanovlm.data.tokenizer import TextTokenizer
from nanovlm.fusion.sizes import FusionSizes
from nanovlm.run.config import CONFIG_DIR
from nanovlm.tasks.dual_encoder import OptimizerFactory, SchedulerFactory, weight_decay_groups


def load_image_encoder(image_encoder: nn.Module, path: str) -> None:
    """Copy a training checkpoint's image encoder (`image_encoder.*` of any nanovlm task) into `image_encoder`."""
    from nanovlm.run.saved import load_checkpoint

    if not Path(path).is_file():
        raise ValueError(f"model.image_init: no checkpoint file at {path!r}")
    state = load_checkpoint(Path(path), key="model.image_init")["state_dict"]
    weights = {k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")}
    try:
        image_encoder.load_state_dict(weights)
    except RuntimeError as err:
        summary = " ".join(str(err).split())[:300]
        raise ValueError(f"model.image_init: {path!r}'s image encoder does not fit encoder= here: {summary}") from None


class VQA(L.LightningModule):
    """An image encoder and a fusion module that maps (image, question) to answer logits over ANSWERS."""

    task = "vqa"
    monitor = "val/vqa_acc"  # what best.ckpt keeps the best of (train() reads it)
    text_encoder = None  # the question is read inside the fusion module, so no embedding pictures, but
    has_pictures = True  # plots=vqa's example answers (train() draws them)

    @classmethod
    def from_config(
        cls,
        cfg: DictConfig,
        tokenizer: TextTokenizer,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
    ) -> VQA:
        """The fusion module is sized by the tokenizer (vocabulary, length, PAD and EOS ids, the answer words' ids)
        and by the image encoder's token grid, which its yaml cannot know; each design takes the sizes it needs."""
        if cfg.get("fusion") is None:
            designs = "|".join(sorted(p.stem for p in (CONFIG_DIR / "fusion").glob("*.yaml")))
            raise ValueError(f"model=vqa needs fusion={designs} (data=vqa chooses early)")
        sizes = FusionSizes.of(tokenizer, image_encoder, ANSWERS)
        # late, blind, pairs and film read the question through the configured text encoder
        reads_question = "text_encoder" in inspect.signature(get_class(cfg.fusion._target_)).parameters
        design = instantiate(cfg.fusion, _partial_=True)  # then sizes as they are (instantiate would copy them)
        fusion = design(sizes, **({"text_encoder": text_encoder} if reads_question else {}))
        task = instantiate(cfg.model, _partial_=True)  # the model group's own keys: image_init, freeze_image
        return task(image_encoder, fusion, optimizer, scheduler)

    def __init__(
        self,
        image_encoder: nn.Module,
        fusion: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        image_init: str | None = None,
        freeze_image: bool = False,
        embed_dim: int | None = None,  # config.yaml's model.embed_dim, read by the encoders' yamls
    ) -> None:
        super().__init__()
        if image_init is not None and not Path(image_init).is_file():
            raise ValueError(f"model.image_init: no checkpoint file at {image_init!r}")
        self.image_encoder, self.fusion, self.loss = image_encoder, fusion, nn.CrossEntropyLoss()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.image_init, self.freeze_image = image_init, freeze_image
        # A fusion that never reads the picture (blind) leaves the image encoder untrained: frozen, it is not counted
        # as trainable (the summary, model/params) nor handed to the optimizer.
        if freeze_image or not fusion.uses_image:
            self.image_encoder.requires_grad_(False)
        n = len(FAMILIES)
        self.register_buffer("_correct", torch.zeros(2, n), persistent=False)  # [condition, family]
        self.register_buffer("_count", torch.zeros(2, n), persistent=False)
        self._loss_sum, self._loss_count = torch.zeros(()), 0
        self.logged: dict[str, float] = {}
        self.validated_step: int | None = None

    def forward(self, images: torch.Tensor | None, questions: torch.Tensor) -> torch.Tensor:
        """[B, len(ANSWERS)] answer logits for images [B, 3, S, S] (None for fusion=blind) and question tokens."""
        if not self.fusion.uses_image:
            return self.fusion(None, None, questions)
        image_emb, image_tokens = self.image_encoder.encode_with_tokens(images)
        return self.fusion(image_emb, image_tokens, questions)

    @torch.no_grad()
    def answer(self, images: torch.Tensor, questions: torch.Tensor) -> list[str]:
        """The answer word for each (image, question) pair."""
        return [ANSWERS[i] for i in self(images.to(self.device), questions.to(self.device)).argmax(-1).tolist()]

    # --- Training and validation ---------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        # Before Lightning restores a checkpoint to resume from, so a resumed run keeps its trained weights.
        if stage == "fit" and self.image_init is not None:
            load_image_encoder(self.image_encoder, self.image_init)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"], batch["tokens"]), batch["answer"])
        self._loss_sum += loss.detach() * len(batch["answer"])
        self._loss_count += len(batch["answer"])
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0
        if self.freeze_image:
            self.image_encoder.eval()  # a frozen tower keeps its dropout off, as its checkpoint was evaluated

    def on_train_epoch_end(self) -> None:
        loss = self._loss_sum / max(self._loss_count, 1)
        self.log("train/loss", loss, prog_bar=True, batch_size=self._loss_count)
        self.log_to_loggers({"train/lr": self.optimizers().param_groups[0]["lr"]})

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["image"], batch["tokens"])
        self.log("val/loss", F.cross_entropy(logits, batch["answer"]), batch_size=len(logits))
        right = (logits.argmax(-1) == batch["answer"]).float()
        where = batch["condition"] * len(FAMILIES) + batch["family"]  # [B] flat (condition, family) cell
        self._correct.view(-1).index_add_(0, where, right)
        self._count.view(-1).index_add_(0, where, torch.ones_like(right))

    def on_validation_epoch_end(self) -> None:
        # Summed over processes under DDP (each validated its own share of the questions); as is on one device.
        correct, count = (
            self.trainer.strategy.reduce(t.clone(), reduce_op="sum") for t in (self._correct, self._count)
        )
        self._correct.zero_(), self._count.zero_()
        if count.sum() == 0:  # pragma: no cover - an empty val split
            return
        target = 1 if count[1].sum() > 0 else 0  # CoGenT: condition B is what val/vqa_acc reports
        asked = [(i, f) for i, f in enumerate(FAMILIES) if count[target, i] > 0]  # data.families may leave some out
        metrics = {f"val/vqa_acc_{f}": correct[target, i] / count[target, i] for i, f in asked}
        if target == 1:
            metrics["val/vqa_acc_A"] = correct[0].sum() / count[0].sum().clamp(min=1)
        self.log("val/vqa_acc", correct[target].sum() / count[target].sum(), prog_bar=True)
        self.log_to_loggers(metrics)
        if not self.trainer.sanity_checking:
            self.validated_step = self.global_step

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        """What train() prints at the end (instead of retrieval recall)."""
        asked = [f for f in FAMILIES if f"val/vqa_acc_{f}" in metrics]
        families = "  ".join(f"{f} {metrics[f'val/vqa_acc_{f}']:.3f}" for f in asked)
        lines = [
            f"final val      VQA accuracy {metrics.get('val/vqa_acc', float('nan')):.3f}",
            f"per family     {families}",
        ]
        if "val/vqa_acc_A" in metrics:
            lines[0] += f"  (CoGenT condition B; held-out condition A {metrics['val/vqa_acc_A']:.3f})"
        return lines

    def log_to_loggers(self, metrics: dict[str, torch.Tensor | float]) -> None:
        """Values already global, straight to the loggers (as DualEncoder.log_to_loggers); kept in `self.logged`."""
        values = {k: float(v) for k, v in metrics.items()}
        self.logged.update(values)
        for logger in self.loggers:
            logger.log_metrics({**values, "epoch": self.current_epoch}, step=self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """Weight decay on weight matrices only (DualEncoder's groups); the scheduler, if any, every batch."""
        decay, no_decay = weight_decay_groups(self)
        optimizer = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
