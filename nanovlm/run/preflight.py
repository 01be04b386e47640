"""Can this run start here? The checks of the launch settings (devices, strategy, optimizer) against this machine,
torch and Lightning, done before anything is spawned, logged or trained.

Each of these used to surface late, as a traceback: a missing GPU when Lightning built the Trainer, a negative
learning rate when torch built the optimizer inside `fit`, 300 CPU devices as 300 processes being spawned. Here
each is one ConfigError naming the key. `check` needs torch only, so `train.py` runs it before Lightning loads;
`check_trainer` builds a throwaway Trainer, the one way to ask Lightning everything it would refuse.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nanovlm.run.config import ConfigError, check_target_node, hydra_runtime, is_multirun

# Lightning's errors name the Trainer argument; these come first when a message names several.
TRAINER_KEYS = ("accelerator", "strategy", "precision", "devices", "num_nodes")

# What torch's optimizers accept for the hyperparameters they share; their own errors say only "Invalid ...".
OPTIMIZER_RANGES = {
    "lr": ("learning rate", ">= 0"),
    "eps": ("epsilon", ">= 0"),
    "betas": ("beta", "two numbers in [0, 1)"),
    "weight_decay": ("weight_decay", ">= 0"),
    "momentum": ("momentum", ">= 0"),
}


def check(cfg: DictConfig) -> None:
    """Everything that needs torch but not Lightning: the launch mode, the devices, the optimizer."""
    check_launch(cfg)
    check_devices(cfg)
    check_optimizer(cfg)
    check_schedule_length(cfg)


def check_launch(cfg: DictConfig) -> None:
    """Lightning's `ddp` strategy re-runs train.py with the same arguments for every extra device; under
    Hydra's -m each copy would run the whole sweep again. SLURM (one task per rank) and torchrun start the
    ranks themselves, and `ddp_spawn` forks from inside the job, so those are fine."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    launched_per_rank = any(k in os.environ for k in ("SLURM_NTASKS", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"))
    if is_multirun() and strategy.startswith("ddp") and "spawn" not in strategy and not launched_per_rank:
        raise ConfigError(
            f"trainer.strategy={strategy} re-launches train.py per device, which under -m re-runs the sweep; "
            "in a multirun use trainer.strategy=ddp_spawn or hydra/launcher=slurm"
        )


def check_devices(cfg: DictConfig) -> None:
    """A GPU accelerator on a machine without one, and more CPU processes than cores. Lightning accepts any CPU
    device count and starts that many processes, each importing torch: 300 of them hang the machine."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    has_cuda, has_mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if accelerator in ("gpu", "cuda") and not has_cuda:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU; "
            f"use {_cpu_choice()} (or trainer.accelerator=auto)"
        )
    if accelerator == "mps" and not has_mps:
        raise ConfigError(f"trainer.accelerator=mps but this machine has no Apple GPU; use {_cpu_choice()}")
    devices = cfg.trainer.get("devices", "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not has_cuda and not has_mps)
    cores = available_cores()
    if on_cpu and isinstance(devices, int) and not isinstance(devices, bool) and devices > cores:
        raise ConfigError(
            f"trainer.devices={devices} asks for {devices} CPU processes but this machine has {cores} cores; "
            f"use trainer.devices={cores} or fewer"
        )


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (`taskset`, a SLURM job's `--cpus-per-task`, a
    container's cpuset) where the OS reports one, else every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _cpu_choice() -> str:
    """What to type instead of a GPU trainer preset: its CPU twin."""
    hydra_cfg = hydra_runtime()
    choice = str(hydra_cfg.runtime.choices.get("trainer")) if hydra_cfg is not None else ""
    return "trainer=ddp_cpu" if choice == "ddp" else "trainer=cpu"


def check_optimizer(cfg: DictConfig) -> None:
    """Build the optimizer (and the scheduler) once on a stand-in parameter: torch checks lr, betas, ... in the
    constructor, which Lightning would otherwise first call inside `fit`, after the W&B run started."""
    for section in ("optimizer", "scheduler"):
        if cfg.get(section):
            check_target_node(section, cfg[section])  # unknown keys and wrong types first, with their own words
    try:
        optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        if cfg.get("scheduler"):
            instantiate(cfg.scheduler)(optimizer, total_steps=1)
    except Exception as exc:
        error = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        message = " ".join(str(error).split())
        if message.startswith("scheduler."):  # our schedules name their key already
            raise ConfigError(message) from None
        target = cfg.optimizer._target_
        values = OmegaConf.to_container(cfg.optimizer, resolve=True)
        for key in (str(k) for k in cfg.optimizer if not str(k).startswith("_")):
            words, allowed = OPTIMIZER_RANGES.get(key, (key, ""))
            if words.lower() in message.lower():
                must = f"must be {allowed}" if allowed else "is refused"
                raise ConfigError(f"optimizer.{key} {must}, got {values[key]} ({target}: {message})") from None
        raise ConfigError(f"optimizer ({target}) refuses its settings: {message}") from None


def check_schedule_length(cfg: DictConfig) -> None:
    """`trainer.max_epochs=-1` (Lightning's "no epoch limit") is fine on its own, but a scheduler spreads its
    decay over the run's steps and needs to know how many there are."""
    unbounded = cfg.trainer.get("max_epochs") == -1 and cfg.trainer.get("max_steps", -1) in (-1, None)
    if cfg.get("scheduler") and unbounded:
        raise ConfigError(
            "trainer.max_epochs=-1 gives the run no end, which the scheduler needs to know: "
            "set +trainer.max_steps=<steps>, or use scheduler=none"
        )


def check_trainer(cfg: DictConfig) -> None:
    """Build the configured Trainer once, silently, and throw it away: what Lightning refuses (an unknown
    accelerator, strategy or precision, a bad device list) becomes a ConfigError naming the key now, not a
    traceback after the W&B run started. It is cheap and starts no process (launchers start in `fit`)."""
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # "GPU available: ..." is for the real one
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            instantiate(cfg.trainer, logger=False, enable_progress_bar=False, enable_model_summary=False)
    except InstantiationException as exc:
        raise _trainer_error(cfg, exc.__cause__ or exc) from None
    except Exception as exc:
        raise _trainer_error(cfg, exc) from None
    finally:
        quiet.setLevel(level)


def _trainer_error(cfg: DictConfig, error: BaseException) -> ConfigError:
    message = " ".join(str(error).split())
    present = [str(k) for k in cfg.trainer if not str(k).startswith("_")]
    ordered = [k for k in TRAINER_KEYS if k in present] + [k for k in present if k not in TRAINER_KEYS]
    # `devices=0` or `strategy` in Lightning's words is the argument it refuses; a bare word may be context
    # ("... not a valid input using cpu accelerator").
    quoted = [k for k in ordered if f"{k}=" in message or f"`{k}`" in message]
    named = quoted or [k for k in ordered if k.lower() in message.lower()]
    if named:
        return ConfigError(f"trainer.{named[0]}={cfg.trainer[named[0]]} is refused by Lightning: {message}")
    settings = ", ".join(f"{k}={cfg.trainer[k]}" for k in TRAINER_KEYS if k in present)
    return ConfigError(f"trainer ({settings}) is refused by Lightning: {message}")
