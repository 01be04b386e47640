"""What `train.py` and `sweep.py` promise on the command line: every bad input is one line on stderr and exit
code 2, a run stopped on purpose (a NaN loss) is one line and exit 1, a signal ends the run with 128 + its number
(130 for Ctrl-C, 143 for SIGTERM) — never a stack trace for any of these.

No torch or Lightning is imported here: a typo must cost Hydra's start-up, not the seconds of importing them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from omegaconf import DictConfig

from nanovlm.run.config import ConfigError, RunError, is_multirun

BAD_INPUT = 2  # what argparse and most CLIs use for a usage error
RUN_FAILED = 1


class Interrupted(BaseException):
    """A signal ended the run (SIGINT, SIGTERM, or a scheduler's pre-timeout signal).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it; Lightning
    passes it through its failure path (loggers finalised as failed) and `train()` records the run as failed.
    """

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention for "killed by signal n"
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def signals_raise(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """While training, SIGINT and SIGTERM raise `Interrupted` instead of Python's KeyboardInterrupt (which
    Lightning turns into `sys.exit(1)`) or Lightning's SIGTERM handling (which ends the process with exit 0).

    During `fit`, Lightning's own SIGTERM handler runs first (it stops DDP workers) and then this one.
    A second signal of the same kind while the run is being closed takes the default action (exit at once).
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def one_line(exc: BaseException) -> str:
    """One readable line for a config mistake caught by Hydra or by `validate`."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException) and exc.options is not None and exc.missing_cfg_file:
        group, _, choice = exc.missing_cfg_file.rpartition("/")
        allowed = ", ".join(sorted(exc.options)) or "(none)"
        return f"unknown option {group}={choice}; allowed {group} options: {allowed}"
    cause = exc.__cause__
    if isinstance(exc, ConfigCompositionException) and cause is not None and "not in struct" in str(cause):
        full_key = getattr(cause, "full_key", None) or _first_line(str(exc))
        parent = getattr(cause, "parent_node", None)
        where = full_key.rpartition(".")[0] or "the top level"
        keys = ", ".join(str(k) for k in parent if k != "hydra") if isinstance(parent, DictConfig) else "see conf/"
        return f"unknown key {full_key}; keys in {where}: {keys} (use +{full_key}=... to add a new one)"
    if isinstance(exc, OverrideParseException | ConfigCompositionException):
        return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return _first_line(str(exc))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def fail(message: str, code: int, prefix: str = "error") -> None:
    print(f"{prefix}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def hydra_errors() -> Iterator[None]:
    """Around the `@hydra.main` call: what goes wrong before the job starts (an unknown option or key, a
    run dir that cannot be created) is one line and exit 2.

    Hydra would print a multi-line report for composition errors unless HYDRA_FULL_ERROR is set, so it is set
    here. Anything unexpected still shows its full traceback.
    """
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        yield
    except (ConfigError, MissingConfigException, ConfigCompositionException, OverrideParseException) as exc:
        fail(one_line(exc), BAD_INPUT)
    except ValueError as exc:  # Hydra's own command-line checks, e.g. `-m --cfg job` (one of the two, not both)
        if _job_started:
            raise
        fail(one_line(exc), BAD_INPUT)
    except OSError as exc:
        if exc.filename is None or _job_started:
            raise
        # Hydra creates the run dir (and writes .hydra/ and the log file there) before the job starts.
        key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(sys.argv) else "hydra.run.dir"
        fail(f"{key}: cannot create or write {exc.filename} ({exc.strerror}); use a writable directory", BAD_INPUT)


_job_started = False


@contextlib.contextmanager
def job_errors(cfg: DictConfig) -> Iterator[None]:
    """Inside the Hydra job: a config mistake prints one `error: ...` line and exits 2, a RunError (NaN loss)
    exits 1, a signal exits 128 + its number — before Hydra adds its "Error executing job" report.

    In one job of a multirun a config mistake or RunError must reach Hydra's launcher instead, which records
    the job as failed and goes on with the others (SystemExit would end the whole sweep); a signal ends the sweep.
    """
    global _job_started
    _job_started = True
    try:
        yield
    except ConfigError as exc:
        _record_config_error(cfg, exc)
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        if not is_multirun():
            sys.exit(BAD_INPUT)
        raise
    except RunError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        if not is_multirun():
            sys.exit(RUN_FAILED)
        raise
    except Interrupted as exc:
        fail(_interrupted_line(cfg, exc), exc.exit_code, prefix="stopped")


def _interrupted_line(cfg: DictConfig, exc: Interrupted) -> str:
    """What stopped the run and how to go on from its last checkpoint."""
    if exc.__class__ is not Interrupted:  # a subclass (Preempted) says it itself
        return str(exc)
    line = f"{signal.Signals(exc.signum).name} ended the run (marked failed)"
    run_dir = Path(str(cfg.run_dir)) if _resolves(cfg, "run_dir") and cfg.get("run_dir") else None
    if run_dir is not None and (run_dir / "checkpoints" / "last.ckpt").is_file():
        line += f"; to continue from its last checkpoint: ckpt_path={run_dir}"
    return line


def _record_config_error(cfg: DictConfig, error: ConfigError) -> None:
    """After a config error, remove the dir Hydra made for this run if it holds only Hydra's own files, so no
    run dir looks like a run. A sweep job's dir stays, with a failed result.json, so the sweep's table can
    report the failure (`train()` writes it when the error came from there)."""
    run_dir = Path(str(cfg.get("run_dir", "") or "")) if _resolves(cfg, "run_dir") else None
    if run_dir is None or not run_dir.is_dir():
        return
    if is_multirun():
        if not (run_dir / "result.json").exists():
            write_result(run_dir, {"status": "failed", "error": f"ConfigError: {error}"})
        return
    if (run_dir / ".hydra").is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def _resolves(cfg: DictConfig, key: str) -> bool:
    try:
        cfg.get(key)
        return True
    except Exception:  # an interpolation that points nowhere
        return False


def write_result(run_dir: Path, result: dict) -> None:
    """Write result.json atomically, so a reader (a sweep collecting its jobs) never sees half a file."""
    import json

    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(run_dir / "result.json")
