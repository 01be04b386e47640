"""Reading a checkpoint back: finding it, loading it safely, and what it holds beyond the weights.

`ResumableRun` (nanovlm.run.checkpoints) stores the resolved config, the W&B run id and the tokenizer's state under
`checkpoint["nanovlm"]`; resuming (`training.build`) and `nanovlm.evaluate` read them here, so a checkpoint of
another model or another vocabulary is refused in one line instead of failing later with a shape error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nanovlm.data.tokenizer import TextTokenizer, tokenizer_from_state
from nanovlm.run.config import ConfigError
from nanovlm.run.moved import upgrade_config

# Config sections that decide the model's parameters: a checkpoint only fits a model built from the same ones.
MODEL_SECTIONS = ("model", "encoder", "text_encoder", "loss", "fusion")
CHECKPOINT_KEY = "nanovlm"


def resolve_ckpt_path(ckpt_path: str) -> Path:
    """`ckpt_path` may name a checkpoint file or a run dir (then its checkpoints/last.ckpt)."""
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file ({path})")
    return path


def load_checkpoint(path: Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Read a checkpoint on the CPU; a truncated or foreign file becomes a ConfigError naming it."""
    try:
        # weights_only: tensors and plain containers only, no arbitrary code from the pickle.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"{key}={path}: not a readable checkpoint, it may be truncated or corrupt "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
            "try best.ckpt beside it"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}={path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def saved_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The resolved config the checkpoint's run was trained with (None for a foreign checkpoint), in today's
    spelling: a checkpoint of the flat layout names `nanovlm.losses.ClipLoss` and has no `model._target_`, which
    `moved.upgrade_config` rewrites, so it evaluates and resumes as it did."""
    config = checkpoint.get(CHECKPOINT_KEY, {}).get("config")
    return None if config is None else upgrade_config(config)


def saved_tokenizer(checkpoint: dict[str, Any]) -> TextTokenizer | None:
    """The tokenizer the checkpoint's run read its texts with; None for a checkpoint older than the tokenizer
    protocol (its world's closed word tokenizer, which `build_model` makes by default)."""
    state = checkpoint.get(CHECKPOINT_KEY, {}).get("tokenizer")
    return None if state is None else tokenizer_from_state(state)


def check_tokenizer(checkpoint: dict[str, Any], tokenizer: TextTokenizer, key: str, path: Path) -> None:
    """Refuse to read texts with another tokenizer than the checkpoint's (a subword vocabulary trained on other
    captions would give every id another meaning)."""
    saved = checkpoint.get(CHECKPOINT_KEY, {}).get("tokenizer")
    if saved is not None and _meaning(saved) != _meaning(tokenizer.state()):
        raise ConfigError(
            f"{key}={path} was trained with another tokenizer than this data gives "
            f"({saved.get('kind')}, {saved.get('vocab_size', len(saved.get('vocab', [])))} tokens): "
            "use the data it was trained on"
        )


def _meaning(state: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer state less where its kind is registered ("module", which checkpoints older than it lack)."""
    return {k: v for k, v in state.items() if k != "module"}


def check_compatible(checkpoint: dict[str, Any], model: torch.nn.Module, config: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint of another model, naming the config keys (or parameters) that differ."""
    saved = saved_config(checkpoint)
    if saved is not None:
        diffs = _diff(*({k: c.get(k) for k in MODEL_SECTIONS} for c in (saved, config)))
        if diffs:
            shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs[:3])
            raise ConfigError(f"ckpt_path={path} was trained with a different model: {shown}")
    ours = model.state_dict()
    theirs = checkpoint["state_dict"]
    for name in sorted(set(ours) | set(theirs)):
        a, b = theirs.get(name), ours.get(name)
        if a is None or b is None or a.shape != b.shape:
            got = "missing" if a is None else list(a.shape)
            want = "missing" if b is None else list(b.shape)
            raise ConfigError(f"ckpt_path={path} does not fit the model: {name} is {got} in it, {want} in the model")


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [(prefix, a, b)]


def wandb_run_id(checkpoint: dict[str, Any]) -> str | None:
    return checkpoint.get(CHECKPOINT_KEY, {}).get("wandb_run_id")
