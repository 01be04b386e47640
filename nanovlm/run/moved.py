"""Where the names of the flat layout (nanovlm/*.py before the subpackages) went, so old spellings keep a way in.

A checkpoint stores the resolved config it was trained with, `_target_` strings included (`nanovlm.losses.ClipLoss`),
and `nanovlm.evaluate` and `ckpt_path=` rebuild the model from it. `upgrade_config` rewrites such a config to today's
paths, so an old checkpoint evaluates and resumes as it did; `saved.saved_config` applies it wherever a saved
config is read. A `_target_` typed by a user in the old spelling (a yaml of their own, `+callbacks.x._target_=...`)
is not rewritten silently: `config.check_target_node` refuses it in one line naming the new path (`moved_to`).

No torch here: `config` imports this before train.py decides whether torch is needed.
"""

from __future__ import annotations

import copy
from typing import Any

# Every module of the flat layout -> the module most of its names moved to.
MODULES: dict[str, str] = {
    "nanovlm.data": "nanovlm.data.shapes",
    "nanovlm.scenes": "nanovlm.data.scenes",
    "nanovlm.encoders": "nanovlm.models",
    "nanovlm.encoders.image": "nanovlm.models.image",
    "nanovlm.encoders.text": "nanovlm.models.text",
    "nanovlm.encoders.transformer": "nanovlm.models.transformer",
    "nanovlm.losses": "nanovlm.objectives.contrastive",
    "nanovlm.captioning": "nanovlm.objectives.captioning",
    "nanovlm.module": "nanovlm.tasks.dual_encoder",
    "nanovlm.captioner": "nanovlm.tasks.captioner",
    "nanovlm.ranking": "nanovlm.evaluate.ranking",
    "nanovlm.metrics": "nanovlm.evaluate.metrics",
    "nanovlm.plots": "nanovlm.evaluate.plots",
    "nanovlm.evaluate": "nanovlm.evaluate.checkpoint",
    "nanovlm.bench": "nanovlm.bench.figures",
    "nanovlm.sweeps": "nanovlm.sweeps.spec",
    **{
        f"nanovlm.{name}": f"nanovlm.run.{name}"
        for name in (
            "training", "config", "preflight", "checkpoints", "guards", "tracking", "console", "cli", "callbacks",
            "schedules",
        )
    },
}  # fmt: skip

# Names that went elsewhere than their module's entry above (a module split in several).
NAMES: dict[str, str] = {
    **{f"nanovlm.data.{n}": f"nanovlm.data.datamodule.{n}" for n in ("WorldDataModule", "TensorSliceDataset")},
    **{f"nanovlm.data.{n}": f"nanovlm.data.tokenizer.{n}" for n in ("Tokenizer", "CLS")},
    "nanovlm.encoders.CNNEncoder": "nanovlm.models.image.CNNEncoder",
    "nanovlm.encoders.ViTEncoder": "nanovlm.models.image.ViTEncoder",
    "nanovlm.encoders.MeanPoolTextEncoder": "nanovlm.models.text.MeanPoolTextEncoder",
    "nanovlm.encoders.AttentionTextEncoder": "nanovlm.models.text.AttentionTextEncoder",
    **{
        f"nanovlm.losses.{n}": f"nanovlm.objectives.gather.{n}"
        for n in ("gather_with_grad", "gather_ids", "gather_negatives")
    },
    **{
        f"nanovlm.captioning.{n}": f"nanovlm.models.decoder.{n}"
        for n in ("TextDecoder", "log_likelihood", "pair_log_likelihoods", "likelihood_passes")
    },
    **{
        f"nanovlm.captioning.{n}": f"nanovlm.models.decoding.{n}"
        for n in ("slot_vocabulary", "greedy_decode", "parallel_decode", "DECODERS")
    },
    **{
        f"nanovlm.evaluate.{n}": f"nanovlm.evaluate.retrieval.{n}"
        for n in ("retrieval", "retrieval_from_scores", "hard_negatives")
    },
    **{f"nanovlm.evaluate.{n}": f"nanovlm.evaluate.zero_shot.{n}" for n in ("attribute_prototypes", "zero_shot")},
    **{f"nanovlm.plots.{n}": f"nanovlm.evaluate.zero_shot.{n}" for n in ("AttributeValues", "world_attributes")},
    "nanovlm.plots.ATTRIBUTE_VALUES": "nanovlm.data.shapes.ATTRIBUTE_VALUES",
    **{f"nanovlm.bench.{n}": f"nanovlm.bench.loops.{n}" for n in ("EpochTimer", "FirstStepClock", "plain_run")},
    **{f"nanovlm.sweeps.{n}": f"nanovlm.sweeps.report.{n}" for n in ("collect", "report", "summarise", "Job")},
}

# The task a checkpoint of the flat layout trained, by its loss: it had no `model._target_` (the loss chose the class).
TASK_OF_OLD_LOSS: dict[str, str] = {
    "nanovlm.captioning.CaptionLoss": "nanovlm.tasks.captioner.Captioner",
    "nanovlm.captioning.CocaLoss": "nanovlm.tasks.captioner.Captioner",
}
DEFAULT_TASK = "nanovlm.tasks.dual_encoder.DualEncoder"


def moved_to(path: str) -> str | None:
    """Today's dotted path of `path`, a name of the flat layout; None when `path` is not one. Every module of
    MODULES is gone or is now a package that defines nothing itself, so no current path is taken for an old one."""
    if path in NAMES:
        return NAMES[path]
    module, _, name = path.rpartition(".")
    return f"{MODULES[module]}.{name}" if module in MODULES else None


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config (plain containers) with every old `_target_` rewritten to today's, and the `model` group's
    `_target_` filled in where the checkpoint predates the group. Today's configs come back unchanged (a copy)."""
    config = copy.deepcopy(config)
    old_loss = (config.get("loss") or {}).get("_target_")
    _rewrite_targets(config)
    model = config.get("model")
    if isinstance(model, dict) and "_target_" not in model:
        model["_target_"] = TASK_OF_OLD_LOSS.get(old_loss, DEFAULT_TASK)
    loss = config.get("loss")
    contrastive = isinstance(loss, dict) and str(loss.get("_target_", "")).endswith(("ClipLoss", "SigLipLoss"))
    if contrastive and "multi_positive" not in loss:
        loss["multi_positive"] = False  # trained before several true pairs were counted: the diagonal-only loss
    return config


def _rewrite_targets(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("_target_", "()") and isinstance(value, str) and (new := moved_to(value)) is not None:
                node[key] = new
            else:
                _rewrite_targets(value)
    elif isinstance(node, list):
        for item in node:
            _rewrite_targets(item)
