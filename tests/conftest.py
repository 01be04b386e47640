"""Shared fixtures and helpers: the composed config shrunk for tests, each test in its own run dir; running the
top-level scripts as a user would (through the warm interpreter of tests/warm.py, torch and Lightning imported
once); reading an offline W&B run back; each pytest-xdist worker's share of the cores.

Tests marked `slow` train to convergence, run a script in a subprocess, spawn Lightning's DDP processes or draw
many random configs; tests marked `integration` train in-process for a few epochs. `make test-fast` skips both;
CI runs everything at the newest versions and all but the slow tests at the floors. The collectives tests of
test_distributed.py fork their two processes on Linux and stay unmarked: there they take well under a second.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from nanovlm.run.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


# The cores this run may use, before an xdist worker takes its share (`taskset` in CI narrows them for all workers).
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs `-n auto`), each worker takes its own share of the cores, so that its
    torch (train() sizes its threads by the cores it may use) and its subprocesses do not oversubscribe them."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
    if worker.startswith("gw") and 1 < count <= len(CORES) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, CORES[int(worker[2:]) % count :: count])


@pytest.fixture
def every_core():
    """All of the run's cores for one test, also in an xdist worker that holds a share: DDP over two CPU
    processes needs two (preflight refuses more processes than cores)."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    share = os.sched_getaffinity(0)
    os.sched_setaffinity(0, CORES)
    try:
        yield
    finally:
        os.sched_setaffinity(0, share)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that read the one default run (`default_cli_run`), and the doc commands (whose pool waits for
    it), go to one xdist worker (`--dist loadgroup`): a session fixture runs once per worker that uses it.
    First among the hooks: xdist's worker writes each test's `xdist_group` marks into its node id in this same
    hook, and a mark added after that is not seen."""
    for item in items:
        if "default_cli_run" in getattr(item, "fixturenames", ()) or item.name.startswith("test_doc_command["):
            item.add_marker(pytest.mark.xdist_group("default_cli_run"))


UNGROUPED = pytest.StashKey[str]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail the grouped tests if `--dist loadgroup` did not group them: xdist tells its scheduler a test's group
    by a suffix `@<group>` on the node id, which pytest 9.2 ignores (pytest-xdist#1386); every worker would then
    train the default run and run every doc command, minutes of the suite twice over. (A worker that raised
    here would crash without its message reaching the terminal, so the tests fail at set-up instead.)"""
    if not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        if any(item.iter_markers("xdist_group")) and "@" not in item.nodeid:
            item.stash[UNGROUPED] = (
                f"pytest-xdist --dist loadgroup did not group this test: pytest {pytest.__version__} ignores "
                "xdist_group here (pytest-xdist#1386); install pytest<9.2 (pyproject.toml's [dev] pins it)"
            )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if UNGROUPED in item.stash:
        pytest.fail(item.stash[UNGROUPED], pytrace=False)


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/config.yaml with overrides; run_dir is the test's tmp dir, W&B is off, and no pictures are
    drawn unless an override asks for a `plots` option (the tests about pictures)."""

    def _make(*overrides: str) -> DictConfig:
        plots = [] if any(o.startswith("plots=") for o in overrides) else ["plots=none"]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=[f"run_dir={tmp_path}", "logger=none", *plots, *QUIET, *overrides])

    return _make


def user_env() -> dict[str, str]:
    """The environment a user's shell would give a subprocess. Once a test in this process has started a
    W&B run, wandb exports WANDB_SERVICE so that child processes share its service; a run of a child killed
    by a test would then stay registered there ("run ID ... is in use" when it is resumed)."""
    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


_warm: dict[str, str] = {}  # the running server's socket path
_warm_lock = threading.Lock()


def warm_python() -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment that run `python ...` through tests/warm.py's server, started on first
    use and stopped when the session ends; with NANOVLM_TEST_COLD=1 set, a plain interpreter (every run cold)."""
    if os.environ.get("NANOVLM_TEST_COLD"):
        return [sys.executable], {}
    with _warm_lock:  # the doc-command pool asks from several threads at once
        return _start_warm()


def _start_warm() -> tuple[list[str], dict[str, str]]:
    if "socket" not in _warm:
        path = str(Path(tempfile.mkdtemp(prefix="nanovlm-warm-")) / "socket")
        log = open(Path(path).with_name("server.log"), "w")  # noqa: SIM115 -- a handler's error, if any, is here
        server = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "warm.py"), "--serve", path],
            cwd=REPO, env=user_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
        if server.stdout is None or server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"tests/warm.py did not start; see {log.name}")
        atexit.register(shutil.rmtree, Path(path).parent, ignore_errors=True)  # runs after the kill below
        atexit.register(server.kill)
        _warm["socket"] = path
    return [sys.executable, "-S", str(REPO / "tests" / "warm.py")], {"NANOVLM_WARM": _warm["socket"]}


def run_cli(
    script: str,
    *args: str,
    cwd: Path,
    timeout: float = 300,
    wandb_silent: bool = True,
    env: dict | None = None,
    cold: bool = False,
) -> subprocess.CompletedProcess:
    """Run a top-level script of the repo as a user would, from `cwd`, W&B offline (and silent unless a test
    is about what the console shows); `env` adds to the environment. The script runs in a fork of the warm
    server (tests/warm.py: torch and Lightning already imported) unless `cold`: a fresh interpreter."""
    python, warm_env = ([sys.executable], {}) if cold else warm_python()
    env = {
        **user_env(), "WANDB_MODE": "offline", **({"WANDB_SILENT": "true"} if wandb_silent else {}), **warm_env,
        **(env or {}),
    }  # fmt: skip
    return subprocess.run(
        [*python, str(REPO / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def default_cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python train.py trainer.max_epochs=2 logger.log_model=true` as a user types it, W&B offline and not
    silenced: one run (a process start costs seconds) shared by the tests that read what it printed
    (test_console.py) and what it wrote (test_train.py). Returns its run dir and the finished process."""
    cwd = tmp_path_factory.mktemp("default_cli_run")
    run_dir = cwd / "run"
    result = run_cli(
        "train.py", "trainer.max_epochs=2", "logger.log_model=true", f"hydra.run.dir={run_dir}", cwd=cwd,
        wandb_silent=False, env={"WANDB_DATA_DIR": str(cwd / "wandb-data")},  # W&B stages artifacts there, not in ~
        cold=True,  # the suite's one default run from a fresh interpreter, exactly as a user starts it
    )  # fmt: skip
    return run_dir, result


def _wandb_inspect(wandb_run: Path, *options: str) -> str:
    wandb_cli = Path(sys.executable).parent / "wandb"
    command = [str(wandb_cli), "leet", "inspect", *options, "--json", str(wandb_run)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout


def _one_wandb_run(run_dir: Path) -> Path:
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    return wandb_run


def inspect_wandb_runs(run_dir: Path) -> list[dict]:
    """Read every offline W&B run under `run_dir` back the way a user would, oldest first:
    `wandb leet inspect --summary --json` (config, summary, state, run_id, name, project). A resumed run is a
    second offline-run-* dir with the same run id."""
    return [json.loads(_wandb_inspect(r, "--summary")) for r in sorted((run_dir / "wandb").glob("offline-run-*"))]


def inspect_wandb_run(run_dir: Path) -> dict:
    """`inspect_wandb_runs` of a run dir that holds exactly one W&B run."""
    return json.loads(_wandb_inspect(_one_wandb_run(run_dir), "--summary"))


def wandb_records(run_dir: Path, record_type: str) -> list[dict]:
    """The records of one type ("run", "artifact", ...) in the offline W&B run's transaction log."""
    records = [
        json.loads(line) for line in _wandb_inspect(_one_wandb_run(run_dir)).splitlines() if line.startswith("{")
    ]
    return [r[record_type] for r in records if r.get("type") == record_type]
