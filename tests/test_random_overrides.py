"""Property: any set of command-line overrides either trains or fails with one line naming a key it was given.

Hypothesis draws override sets from the config tree itself (every leaf key of the composed config, each group and
its options), with valid and invalid values, wrong types, unknown keys and unknown options. In this process each
set goes through what train.py does (compose, the fixed keys, preflight, train); a few sets also run as train.py.
Never a traceback, never a hang: every run is capped at one epoch of at most 4 steps.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, ListConfig, OmegaConf

from nanovlm.run import cli, preflight
from nanovlm.run.config import CONFIG_DIR, ConfigError, RunError, check_fixed_keys
from nanovlm.run.training import train
from tests.conftest import QUIET, REPO, user_env

# Small and bounded: one epoch (4 steps of 64) of a tiny model, no W&B, no pictures.
BASE = [
    "logger=none",
    "plots=none",
    *QUIET,
    "trainer.max_epochs=1",
    "+trainer.max_steps=4",
    "model.embed_dim=8",
]
# Groups whose options start other processes or services (DDP workers, a W&B run, drawing): tested elsewhere.
SKIPPED_GROUPS = {"logger", "plots", "hydra", "combo", "sweep"}
SKIPPED_OPTIONS = {"trainer": {"ddp", "ddp_cpu"}}
# Groups that exist only under an option of another group (data=vqa puts `fusion` in the defaults list): drawn and
# composed together with it.
NEEDS = {"fusion": ["data=vqa"]}
# Keys whose random values could start processes (devices > 1, num_nodes > 1: a DDP run waiting for peers) or
# move the run dir: drawn from these values only.
SAFE_VALUES: dict[str, list] = {
    "trainer.devices": [1, 0, -7, "x", 300, "auto"],
    "trainer.num_nodes": [1, 0, "x"],
    "trainer.strategy": ["auto", "nosuch", 3],
    "trainer.accelerator": ["cpu", "auto", "gpu", "mps", "nosuch"],
    "torch_threads": [1, 2, 0, -1, "x", None],
    "trainer.max_epochs": [1, 0, -1, 1.5, "x", None],
    "ckpt_path": [None, "/no/such.ckpt", "", 3],
}
UNSAFE_KEYS = {"run_dir", "callbacks", "trainer.default_root_dir", "trainer.max_steps"}
GENERIC_VALUES = [-1, 0, 1, 3, 64, 0.5, 1e-9, -0.5, "abc", "", None, True, False, [1, 2], ["x"], {"a": 1}]


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[f"run_dir={tempfile.mkdtemp()}", *overrides])


def _leaves(node, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key in node:
        path = f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys += _leaves(child, f"{path}.")
        elif path not in UNSAFE_KEYS:
            keys.append(path)
    return keys


@functools.cache
def tree() -> tuple[list[str], dict[str, list[str]]]:
    """Every leaf key of the default config (plus the options' own keys), and every group's options. Built on
    first use (it composes every option), not at collection: `make test-fast` does not draw."""
    groups = {
        d.name: sorted(p.stem for p in d.glob("*.yaml") if not p.stem.startswith("_"))
        for d in sorted(CONFIG_DIR.iterdir())
        if d.is_dir() and d.name not in SKIPPED_GROUPS
    }
    groups = {g: [o for o in opts if o not in SKIPPED_OPTIONS.get(g, set())] for g, opts in groups.items()}
    keys: set[str] = set()
    for group, options in groups.items():
        for option in options:
            keys |= set(_leaves(_compose([*BASE, *NEEDS.get(group, []), f"{group}={option}"])))
    return sorted(keys), groups


def _render(value) -> str:
    """A value in Hydra's override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_render(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _value_override(key: str, draw) -> str:
    return f"{key}={_render(draw(st.sampled_from(SAFE_VALUES.get(key, GENERIC_VALUES))))}"


@st.composite
def override_sets(draw, unsafe_free_only: bool = False) -> list[str]:
    """1-3 overrides: a key with a value, an unknown key (with or without +), or a group option (or a made-up one)."""
    keys, groups = tree()
    overrides = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "value", "value", "unknown", "group"]))
        if kind == "value":
            overrides.append(_value_override(draw(st.sampled_from(keys)), draw))
        elif kind == "unknown":
            section = draw(st.sampled_from(["", *sorted(groups), "model."]))
            section = f"{section}." if section and not section.endswith(".") else section
            plus = draw(st.sampled_from(["", "+"]))
            overrides.append(f"{plus}{section}nosuch_key={_render(draw(st.sampled_from(GENERIC_VALUES)))}")
        else:
            group = draw(st.sampled_from(sorted(groups)))
            overrides += [*NEEDS.get(group, []), f"{group}={draw(st.sampled_from([*groups[group], 'nosuch']))}"]
    return overrides


def _named_keys(overrides: list[str]) -> set[str]:
    """Words a message may use to name what it refuses: each override's key and its last part, each group."""
    names = set()
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        parts = key.split(".")
        # a nested unknown key is refused at its first unknown level: "unknown key data.tokenizer" for ...tokenizer.kind
        prefixes = {f"unknown key {'.'.join(parts[:n])}" for n in range(1, len(parts))}
        names |= {key, parts[-1], f"{key}={value}", *prefixes}
    return names


def _count(outcome: str) -> None:
    """How often each outcome came up (pytest --hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(outcome)


def _check_outcome(overrides: list[str]) -> None:
    """What train.py does with these overrides, in this process: trains, or fails with one line naming a key."""
    try:
        cfg = _compose([*BASE, *overrides])
        check_fixed_keys(cfg)
        preflight.check(cfg)
        metrics = train(cfg)
    except (ConfigError, RunError) as error:  # exit 2 (bad input), or exit 1 for a run stopped (a NaN loss)
        line = cli.one_line(error)
        _count(f"refused by {type(error).__name__}")
        assert "\n" not in str(error) and line == str(error), f"{overrides}: {error!r}"
        if isinstance(error, ConfigError):
            assert any(name in line for name in _named_keys(overrides)), f"{overrides}: {line}"
        return
    except Exception as error:  # Hydra's own errors: cli.hydra_errors prints these as one line, exit 2
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        assert isinstance(error, HydraException | OmegaConfBaseException), f"{overrides}: {error!r}"
        _count("refused by Hydra")
        line = cli.one_line(error)
        assert "\n" not in line and any(name in line for name in _named_keys(overrides)), f"{overrides}: {line}"
        return
    _count("trained")
    score = metrics.get("val/R@1", metrics.get("val/vqa_acc"))  # the task's monitor: data=vqa answers, not ranks
    assert score is not None and 0.0 <= score <= 1.0, (overrides, metrics)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(override_sets())
def test_random_overrides_train_or_fail_with_one_line_naming_a_key(overrides: list[str]) -> None:
    _check_outcome(overrides)


@pytest.mark.parametrize("overrides", [["model.embed_dim=abc", "+encoder.nosuch_key=1"], ["trainer=nosuch"]])
def test_known_bad_sets_fail_in_process(overrides: list[str]) -> None:
    """The property test's checker itself: sets that must fail do, and a valid set trains."""
    with pytest.raises(Exception) as info:
        cfg = _compose([*BASE, *overrides])
        check_fixed_keys(cfg)
    assert "\n" not in cli.one_line(info.value)
    _check_outcome(overrides)
    _check_outcome(["loss.temperature=0.1"])


@pytest.mark.slow
@settings(max_examples=3, deadline=None, derandomize=True)
@given(override_sets())
def test_random_overrides_through_train_py(overrides: list[str]) -> None:
    """The same property as a user sees it: exit 0, or one line on stderr with exit 1 or 2; never a traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**user_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        result = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *BASE, *overrides, f"hydra.run.dir={Path(tmp) / 'run'}"],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert "Traceback" not in result.stderr + result.stdout, (overrides, result.stderr[-3000:])
    if result.returncode == 0:
        assert "final val R@1" in result.stdout
    else:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode in (1, 2) and lines[-1].startswith("error: "), (overrides, result.stderr[-3000:])
        assert result.returncode == 1 or len(lines) == 1, (overrides, result.stderr[-3000:])


@pytest.mark.slow  # composes every option of every group, as the random-override tests above do
def test_the_drawn_tree_covers_every_group_and_fixed_key() -> None:
    keys, groups = tree()
    assert {"encoder", "text_encoder", "loss", "optimizer", "scheduler", "trainer", "data"} <= set(groups)
    assert {"model.embed_dim", "data.batch_size", "trainer.max_epochs", "loss.temperature", "optimizer.lr"} <= set(keys)
    assert OmegaConf.is_list(ListConfig([]))  # the list override syntax used above composes
