"""Where the Hydra configs live, and the checks that turn a bad config into one readable line.

Validation has two layers, so that a new encoder or loss needs no edit here:
- a short table of fixed top-level keys (seed, model.embed_dim, data.batch_size, ...) with type and range, the one
  place each range is written: `check_fixed_keys` runs it before torch is imported, and a constructor that takes
  one of these keys calls `check_value`;
- every `_target_` node is checked against its target's constructor: unknown keys list the allowed ones, and
  values are checked against the parameter's type hint. Range checks that belong to one class (temperature > 0,
  heads dividing the width, ...) live in that class's constructor as a ValueError naming the config key;
  `training.build` turns those into a ConfigError before anything heavy runs.
"""

from __future__ import annotations

import collections.abc
import inspect
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from nanovlm.run.moved import moved_to

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # nanovlm/, where the wheel puts conf/


def _find_config_dir() -> Path:
    """`conf/` beside the package in a checkout (editable install); `nanovlm/conf` in a wheel."""
    for candidate in (_PACKAGE_DIR.parent / "conf", _PACKAGE_DIR / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"nanovlm's Hydra configs (config.yaml) are missing beside {_PACKAGE_DIR}")


CONFIG_DIR = _find_config_dir()


class ConfigError(ValueError):
    """A config value the run cannot use. The message names the key, the bad value and what is allowed."""


class RunError(RuntimeError):
    """A run stopped on purpose with a message for the user (e.g. a NaN loss): one line and exit 1, not a
    stack trace. Defined here, not beside its subclasses, so that `cli_errors` needs no torch or Lightning."""


# ---------------------------------------------------------------------------------------------------------------
# Fixed top-level keys
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One fixed key: its type, and optionally a range check with the words that say what is allowed."""

    key: str
    type: type
    check: Callable[[Any], bool] | None = None
    allowed: str = ""
    optional: bool = False  # None is allowed (or the section may be absent, e.g. logger=none)


WANDB_MODES = ("offline", "online", "disabled")
RULES: tuple[Rule, ...] = (
    Rule("seed", int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32) (numpy seeds the workers with it)"),
    Rule("model.embed_dim", int, lambda v: v > 0, "an integer > 0"),
    Rule("data.batch_size", int, lambda v: v >= 2, "an integer >= 2 (a contrastive loss needs negatives)"),
    Rule("data.val_fraction", float, lambda v: 0 < v < 1, "a number in (0, 1)"),
    Rule("data.split_seed", int),
    Rule("trainer.max_epochs", int, lambda v: v >= 1 or v == -1, "an integer >= 1, or -1 for no epoch limit"),
    Rule("logger.mode", str, lambda v: v in WANDB_MODES, f"one of {', '.join(WANDB_MODES)}", optional=True),
    Rule("ckpt_path", str, optional=True),
    Rule("torch_threads", int, lambda v: v >= 1, "an integer >= 1, or null for cores / parallel jobs", optional=True),
    Rule("stop_at_recall", float, lambda v: 0 < v <= 1, "a number in (0, 1]", optional=True),
    Rule("checkpoint_every_s", float, lambda v: v >= 0, "a number of seconds >= 0 (0: every epoch)"),
)


RULE_BY_KEY = {rule.key: rule for rule in RULES}


def check_value(key: str, value: Any) -> None:
    """Raise ConfigError unless `value` passes the rule for `key`: constructors that take a fixed key
    (ShapesDataModule's batch_size, ...) call this, so each range is written once, in RULES."""
    rule = RULE_BY_KEY[key]
    if value is None and rule.optional:
        return
    if not _matches(value, rule.type):
        raise ConfigError(f"{key} must be {_type_name(rule.type)}, got {value!r}")
    if rule.check is not None and not rule.check(value):
        raise ConfigError(f"{key} must be {rule.allowed}, got {value!r}")


def _check_rule(cfg: DictConfig, rule: Rule) -> None:
    section = rule.key.rpartition(".")[0]
    if section and not cfg.get(section.split(".")[0]):
        if rule.optional:
            return
        raise ConfigError(f"{rule.key} is missing: the config has no '{section}' section")
    value = OmegaConf.select(cfg, rule.key, default=None)
    if value is None and not rule.optional:
        raise ConfigError(f"{rule.key} must be set ({rule.allowed or _type_name(rule.type)}), got null")
    check_value(rule.key, value)


# ---------------------------------------------------------------------------------------------------------------
# `_target_` nodes, checked against their constructor's signature
# ---------------------------------------------------------------------------------------------------------------


def _target_nodes(node: Any, path: str = "") -> list[tuple[str, DictConfig]]:
    """(dotted key, node) for every dict node with a `_target_`, outermost first."""
    found: list[tuple[str, DictConfig]] = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            found.append((path, node))
        for key in node:
            if path == "" and key == "hydra":
                continue
            found += _target_nodes(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            found += _target_nodes(item, f"{path}[{i}]")
    return found


def check_target_node(path: str, node: DictConfig) -> None:
    """Unknown keys (listing the allowed ones) and values of the wrong type, against the target's signature."""
    from hydra.utils import get_object

    if "_target_" not in node:  # e.g. `+scheduler.x=1` under scheduler=none: an option without settings
        keys = ", ".join(f"{path}.{k}" for k in node)
        raise ConfigError(f"unknown key {keys}: the chosen {path} option takes no settings")
    target_path = node._target_
    if not isinstance(target_path, str):
        raise ConfigError(f"{path}._target_ must be a dotted import path (a string), got {target_path!r}")
    try:
        target = get_object(target_path)
    except Exception as exc:
        if (new := moved_to(target_path)) is not None:  # a spelling of the flat layout (nanovlm.losses.ClipLoss)
            raise ConfigError(f"{path}._target_={target_path} has moved: use {new}") from None
        raise ConfigError(f"{path}._target_ cannot be imported, got {target_path!r} ({exc})") from None
    try:
        named, hints, takes_any = _parameters(target)
    except (TypeError, ValueError):
        return  # a builtin without a signature: nothing to check against
    for key in node:
        key = str(key)
        if key.startswith("_") and key.endswith("_"):
            continue  # Hydra's own keys: _target_, _partial_, _recursive_, ...
        if key not in named:
            if takes_any:
                continue
            allowed = ", ".join(named)
            raise ConfigError(f"unknown key {path}.{key} for {target_path}; allowed keys: {allowed}")
        value = OmegaConf.select(node, key)
        if isinstance(value, DictConfig) and "_target_" in value:
            continue  # a nested object, checked on its own
        hint = hints[key]
        if hint is inspect.Parameter.empty or isinstance(hint, str):
            continue
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if not _matches(value, hint):
            raise ConfigError(f"{path}.{key} must be {_type_name(hint)}, got {value!r}")


def _parameters(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """The keyword parameters `target` accepts, their type hints, and whether it takes any key at all.

    A class whose `__init__` passes `**kwargs` on to its base (a disk format to DiskDataModule) accepts its base's
    parameters too: they are collected along the MRO, so the check still names every allowed key and type."""
    named: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    owners = [c for c in inspect.getmro(target) if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    for owner in owners:
        func = owner.__init__ if inspect.isclass(owner) else owner
        params, func_hints = inspect.signature(func).parameters, _type_hints(func)
        for n, p in params.items():
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self" and n not in named:
                named[n], hints[n] = p, func_hints.get(n, p.annotation)
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return named, hints, False
    return named, hints, True


def _type_hints(func: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:
        return {}  # unresolvable forward references: fall back to the raw annotations


_YAML_SCALARS = (bool, int, float, str, type(None))


def _matches(value: Any, hint: Any) -> bool:
    """Could a YAML value satisfy `hint`? Hints a YAML value can never be (a Tensor, a Module) are skipped."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        expressible = [a for a in args if _yaml_expressible(a)]
        return not expressible or any(_matches(value, a) for a in expressible)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (os.PathLike, Path):
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        item_hints = [a for a in args if a is not Ellipsis]
        if origin is tuple and args and Ellipsis not in args:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return not item_hints or all(_matches(v, item_hints[0]) for v in value)
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return isinstance(value, dict)
    return True  # a class or protocol a YAML value cannot be checked against


def _yaml_expressible(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_yaml_expressible(a) for a in typing.get_args(hint))
    return (
        hint in _YAML_SCALARS
        or hint in (list, tuple, dict, os.PathLike, Path)
        or origin in (list, tuple, dict, typing.Literal, collections.abc.Sequence, collections.abc.Mapping)
    )


def _type_name(hint: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not Ellipsis]
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if _yaml_expressible(a)]
        literals = [v for a in members if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        others = [_type_name(a) for a in members if typing.get_origin(a) is not typing.Literal]
        return " or ".join([*others, *(["one of " + ", ".join(repr(v) for v in literals)] if literals else [])])
    if origin in (list, tuple, collections.abc.Sequence) and len(args) == 1 and args[0] in names:
        return f"a list of {names[args[0]].split(' ', 1)[1]}s"
    return "of type " + str(hint).replace("typing.", "")


# ---------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------


def check_fixed_keys(cfg: DictConfig) -> None:
    """The checks that need no torch: the config resolves, and the fixed keys (RULES) hold. `train.py` runs
    these before importing torch and Lightning, so a typo costs Hydra's start-up, not theirs."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # an interpolation that points nowhere, a bad ${oc.env:...}
        raise ConfigError(f"the config does not resolve: {_first_line(str(exc))}") from None
    for rule in RULES:
        _check_rule(cfg, rule)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value in `cfg`; cheap (no model, no data, no I/O), but it imports
    every `_target_` to read its signature."""
    check_fixed_keys(cfg)
    for path, node in _target_nodes(cfg):
        check_target_node(path, node)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def hydra_runtime() -> Any:
    """Hydra's runtime config when running under @hydra.main, else None (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun() -> bool:
    """True inside one job of `train.py -m` (a sweep), where a failure must fail the job, not the sweep."""
    hydra_cfg = hydra_runtime()
    return hydra_cfg is not None and hydra_cfg.mode.name == "MULTIRUN"
