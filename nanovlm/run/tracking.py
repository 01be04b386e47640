"""Experiment tracking with Weights & Biases: run names and groups, the logger, offline fallback.

Runs are offline by default (no key, no network needed) and land in <run_dir>/wandb; `wandb sync`
uploads them later. Everything here is imported only when a logger is configured.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from netrc import netrc
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from nanovlm.run.config import hydra_runtime, is_multirun


def run_name(cfg: DictConfig) -> str:
    """The W&B run name: `logger.name`, else a sweep job's number and overrides, else the group choices that name
    the model: encoder, text encoder and loss, or for question answering encoder and fusion ("cnn-early")."""
    if cfg.logger.get("name"):
        return str(cfg.logger.name)
    groups = ("encoder", "fusion") if cfg.get("fusion") is not None else ("encoder", "text_encoder", "loss")
    hydra_cfg = hydra_runtime()
    if hydra_cfg is None:
        return "-".join(cfg[g]._target_.rsplit(".", 1)[-1] for g in groups)
    if is_multirun():
        return f"{hydra_cfg.job.num}:{hydra_cfg.job.override_dirname or 'defaults'}"
    choices = hydra_cfg.runtime.choices
    return "-".join(str(choices.get(g)) for g in groups)


def run_group(cfg: DictConfig) -> str | None:
    """The W&B group: `logger.group`, else one group per multirun sweep (named after its dir)."""
    if cfg.logger.get("group"):
        return str(cfg.logger.group)
    if is_multirun():
        return Path(hydra_runtime().sweep.dir).name
    return None


_warm_up: threading.Thread | None = None


def warm_up(cfg: DictConfig) -> None:
    """Import W&B and start its service process on a thread, beside the main thread's import of torch and Lightning.

    `wandb.init` waits for a service process (W&B's own, another program) to start; that wait needs no CPU of
    ours, so it runs while this process is busy importing. It also imports W&B Launch's package (`wandb.sdk.launch`,
    to look for staged Launch inputs), which builds generic pydantic models, and pydantic looks for their source
    with `inspect.getmodule`, which walks all of sys.modules once per stack frame: with torch and Lightning loaded
    (four times the modules) that import is several times slower (docs/performance.md). So it is imported here,
    early. `build_logger` joins the thread before it starts the run. Nothing happens without a logger, or on a DDP
    rank other than 0 (which logs nothing).
    """
    global _warm_up
    if not cfg.get("logger") or _warm_up is not None or os.environ.get("LOCAL_RANK", "0") != "0":
        return

    def start_service() -> None:
        try:
            import wandb
            import wandb.sdk.launch  # what wandb.init imports (see above)

            wandb.setup()
        except Exception:  # any failure shows again, with its own message, when build_logger starts the run
            pass

    _warm_up = threading.Thread(target=start_service, name="wandb-warm-up", daemon=True)
    _warm_up.start()


def build_logger(cfg: DictConfig, run_dir: Path, run_id: str | None = None) -> Any:
    """A WandbLogger writing into the run dir, offline by default, its run already started; False when
    `logger=none`.

    `run_id` (from a resumed checkpoint) makes W&B continue that run instead of starting a new one. The run is
    started here rather than left to the logger: Lightning's WandbLogger passes W&B a deprecated `anonymous`
    setting, which W&B answers with a warning on every run.
    """
    if not cfg.get("logger"):
        return False
    if _warm_up is not None:
        _warm_up.join()
    import wandb
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    config = OmegaConf.to_container(cfg, resolve=True)
    logger_cfg = config["logger"]
    logger_cfg.update(name=run_name(cfg), group=run_group(cfg))  # the logged config shows what was used
    init = {
        "project": logger_cfg["project"],
        "name": logger_cfg["name"],
        "group": logger_cfg["group"],
        "tags": logger_cfg.get("tags") or None,
        "mode": wandb_mode(logger_cfg["mode"]),
        "dir": str(run_dir),
        "config": config,
        "id": run_id,
        "resume": "allow",
        # No history/summary block at the end: train() prints the final numbers and where the run is.
        "settings": wandb.Settings(quiet=True),
    }
    run = start_run(init) if rank_zero_only.rank == 0 else None  # other ranks log nothing (Lightning's rule too)
    return WandbLogger(
        experiment=run,
        project=init["project"],
        name=init["name"],
        save_dir=str(run_dir),
        id=run_id,
        log_model=logger_cfg.get("log_model", False),  # true: best.ckpt and last.ckpt as W&B artifacts at the end
    )


def start_run(init: dict[str, Any], attempts: int = 15) -> Any:
    """wandb.init(**init), with the metrics' x-axis set to the trainer's step as WandbLogger would set it.

    Resuming right after a crash can find the run id still held by the killed process's W&B service
    ("run ID ... is in use") until that service notices its parent is gone; wait for it, briefly.
    """
    import wandb

    for attempt in range(attempts):
        try:
            run = wandb.init(**init)
            break
        except Exception as error:  # wandb's ServerResponseError; its module path is private
            if "is in use" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(1.0)
    run.define_metric("trainer/global_step")
    run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    return run


def run_id(logger: Any) -> str | None:
    """The W&B run id (None without a logger, and on ranks other than 0)."""
    return logger.version if logger else None


def finish(logger: Any, exit_code: int, preempting: bool = False) -> None:
    """Close the W&B run (exit code 1 marks it failed), so the next job of a sweep starts clean. `preempting`:
    the scheduler stopped it and the requeued job will resume it (W&B shows it as preempted meanwhile)."""
    if logger:
        import wandb

        if preempting:
            logger.experiment.mark_preempting()
        wandb.finish(exit_code=exit_code)


def wandb_run_dir(run_dir: Path) -> str:
    """Where the W&B run's files are, and for an offline run the command that uploads it."""
    runs = sorted((run_dir / "wandb").glob("*run-*"))
    if not runs:
        return "(none)"
    if runs[-1].name.startswith("offline-run-"):
        return f"{runs[-1]}  (offline; upload: wandb sync {runs[-1]})"
    return str(runs[-1])


# --- W&B online without a key or a network: fall back to offline, never hang ------------------------------------


def wandb_mode(requested: str) -> str:
    """`online` only when an API key is configured and the W&B server answers within a few seconds.

    Otherwise the run falls back to `offline` with a warning rather than failing: the run is not lost and
    `wandb sync` uploads it later. wandb.init itself would prompt for a key or retry for minutes.
    """
    if requested != "online":
        return requested
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(url).hostname or "api.wandb.ai"
    port = urlparse(url).port or (443 if url.startswith("https") else 80)
    if not (os.environ.get("WANDB_API_KEY") or _netrc_has(host)):
        reason = "no W&B API key (WANDB_API_KEY or ~/.netrc)"
    elif not _reachable(host, port):
        reason = f"the W&B server {host}:{port} is unreachable"
    else:
        return "online"
    message = f"logger.mode=online but {reason}: logging offline instead (upload later with `wandb sync`)"
    warnings.warn(message, stacklevel=2)
    return "offline"


def _netrc_has(host: str) -> bool:
    try:
        return netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except Exception:  # no ~/.netrc, or one that does not parse
        return False


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """TCP connect in a daemon thread: DNS lookups have no timeout of their own."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)
