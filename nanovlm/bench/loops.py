"""The two training paths the benchmark compares: `lightning_run` (train() as train.py runs it, with timers hooked
in) and `plain_run`, the loop a researcher would write over the same model classes and tensors.

Both rank by nanovlm.evaluate.ranking (ties fail, NaN last), so their recalls agree where their scores do.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from nanovlm.evaluate.ranking import beats, true_item_rank

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def compose_cfg(*overrides: str) -> DictConfig:
    """The config train.py would compose, with `overrides`."""
    from hydra import compose, initialize_config_dir

    from nanovlm.run.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# --- Timers hooked into the Lightning path ------------------------------------------------------------------------


class EpochTimer(L.Callback):
    """Wall clock at each train epoch start, validation start and fit end: epoch and train-only times."""

    def __init__(self) -> None:
        self.epoch_start: list[float] = []
        self.val_start: list[float] = []
        self.fit_end = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start.append(time.perf_counter())

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_start.append(time.perf_counter())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_end = time.perf_counter()

    def times(self) -> tuple[list[float], list[float]]:
        """(train-only seconds, whole-epoch seconds incl. validation and checkpoints) per epoch."""
        ends = [*self.epoch_start[1:], self.fit_end]
        return [v - s for s, v in zip(self.epoch_start, self.val_start, strict=False)], [
            e - s for s, e in zip(self.epoch_start, ends, strict=True)
        ]


class FirstStepClock(L.Callback):
    """Writes the Unix time of the first training step to `path`: (c) in a train.py subprocess."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == 0 and batch_idx == 0:
            Path(self.path).write_text(repr(time.time()))


# --- The plain loop ----------------------------------------------------------------------------------------------


def top1(scores: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Share of queries (rows) whose best true item outscores every false one, by the one ranking rule
    (`nanovlm.evaluate.ranking`: ties fail, NaN last). The plain loop keeps its own validation (no torchmetrics, no
    gallery cache), but ranks with the same rule: two code paths that use two tie rules disagree on near-ties."""
    return true_item_rank(scores, true).eq(1).float().mean()


@torch.no_grad()
def plain_validate(model: torch.nn.Module, world) -> dict[str, float]:
    """val R@1 both ways against the world's whole gallery (every image, every distinct caption), and on a world
    with hard negatives the share of val images whose caption outscores each kind of negative (as DualEncoder)."""
    model.eval()
    gallery = world.gallery()
    images = torch.cat([model.image_encoder(gallery.images[i : i + 2048]) for i in range(0, len(gallery.images), 2048)])
    texts = model.text_encoder(gallery.tokens)  # [C, D]
    rows = gallery.rows(world.val_idx)  # [V] the val images' gallery rows
    i2t = top1(images[rows] @ texts.T, gallery.truth[rows])
    queries = gallery.captions_of(rows)  # a caption shown by several val images is one text query
    t2i = top1(texts[queries] @ images.T, gallery.truth[:, queries].T)
    result = {"val/i2t_R@1": float(i2t), "val/t2i_R@1": float(t2i), "val/R@1": float((i2t + t2i) / 2)}
    if world.negative_kinds:
        caption = world.caption_of[world.val_idx]  # [V] each val image's caption
        negatives, valid = (world.caption_extras[k][caption] for k in ("negatives", "negative_valid"))  # [V, K, ...]
        negative_emb = model.text_encoder(negatives.flatten(0, 1)).view(*negatives.shape[:2], -1)  # [V, K, D]
        true_scores = (images[rows] * texts[gallery.columns(caption)]).sum(-1)  # [V]
        wins = beats(true_scores[:, None], (images[rows][:, None] * negative_emb).sum(-1))  # [V, K], ties fail
        for k, kind in enumerate(world.negative_kinds):
            result[f"val/hn_{kind}"] = float(wins[valid[:, k], k].float().mean())
    model.train()
    return result


def shuffle(n: int, base_seed: bool = True) -> torch.Tensor:
    """A random order of n items from the global RNG, as DataLoader(shuffle=True) draws it: a base seed when its
    iterator is made, then the sampler's seed at the first batch. The plain loop sees the same batches as train()."""
    if base_seed:
        torch.empty((), dtype=torch.int64).random_()
    generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_()))
    return torch.randperm(n, generator=generator)


def plain_run(cfg: DictConfig, stop_at: float | None = None) -> dict[str, object]:
    """Train `cfg`'s model with the loop a researcher would write: the world's in-memory tensors indexed directly
    (no DataLoader), the same model classes, optimizer and schedule, the same per-epoch shuffles as `train()`, and
    a validation of its own (`plain_validate`)."""
    from hydra.utils import instantiate

    from nanovlm.run.checkpoints import epoch_seed
    from nanovlm.run.training import build_model, torch_threads

    torch.set_num_threads(torch_threads(cfg.get("torch_threads")))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    world = instantiate(cfg.data)  # same order of RNG draws as training.build()
    model = build_model(cfg, world.tokenizer)
    # The same parameter groups train() builds; the schedule is built here, over the steps this loop takes.
    make_scheduler, model.scheduler_factory = model.scheduler_factory, None
    optimizer = model.configure_optimizers()
    n, batch_size = len(world.train_idx), world.batch_size
    total_steps = cfg.trainer.max_epochs * math.ceil(n / batch_size)
    scheduler = make_scheduler(optimizer, total_steps=total_steps) if make_scheduler is not None else None
    hard_negatives = getattr(model.loss, "hard_negatives", False)
    several_true_pairs = world.repeats_captions  # as DualEncoder.setup decides: ids only where captions repeat
    train_s: list[float] = []
    epoch_s: list[float] = []
    metrics: dict[str, float] = {"val/R@1": 0.0}
    for epoch in range(cfg.trainer.max_epochs):
        start = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg.seed, epoch))  # this epoch's shuffle, as ResumableRun seeds it
        # With a schedule, Lightning makes epoch 0's iterator (its base-seed draw) while counting the schedule's
        # steps, before train() seeds epoch 0; the sampler draws its seed at the first batch, after the seeding.
        order = world.train_idx[shuffle(n, base_seed=epoch > 0 or scheduler is None)]
        for i in range(0, n, batch_size):
            index = order[i : i + batch_size]
            caption = world.caption_of[index]
            caption_id = caption if several_true_pairs else None
            image_emb, text_emb = model(world.images[index], world.tokens[caption])
            if hard_negatives:
                extras = {k: world.caption_extras[k][caption] for k in ("negatives", "negative_valid", "negative_id")}
                negatives = model.text_encoder(extras["negatives"].flatten(0, 1))
                loss = model.loss(
                    image_emb,
                    text_emb,
                    negatives,
                    extras["negative_valid"].flatten(),
                    caption_id=caption_id,
                    negative_id=extras["negative_id"].flatten(),
                )
            else:
                loss = model.loss(image_emb, text_emb, caption_id=caption_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        train_s.append(time.perf_counter() - start)
        metrics = plain_validate(model, world)
        epoch_s.append(time.perf_counter() - start)
        if stop_at is not None and metrics["val/R@1"] >= stop_at:
            break
    return {"epochs": len(epoch_s), **metrics, "train_s": train_s, "epoch_s": epoch_s}


def lightning_run(cfg: DictConfig) -> dict[str, object]:
    """`train(cfg)` with an EpochTimer appended."""
    from nanovlm.run.training import train

    timer = EpochTimer()
    metrics = train(cfg, extra_callbacks=[timer])
    train_s, epoch_s = timer.times()
    val = {k: v for k, v in metrics.items() if k.startswith("val/")}
    return {"epochs": len(epoch_s), **val, "train_s": train_s, "epoch_s": epoch_s}
