"""tests/warm.py: a script run through the warm server behaves as the same run from a fresh interpreter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CORES, user_env, warm_python

SCRIPT = """
import os, sys
print("argv", sys.argv[1:], "cwd", os.getcwd(), "path0", sys.path[0], "env", os.environ.get("PROBE"))
if hasattr(os, "sched_getaffinity"):
    print("cores", sorted(os.sched_getaffinity(0)))
print("read", sys.stdin.read().strip())
print("to stderr", file=sys.stderr)
if sys.argv[1] == "signal":
    sys.stdout.flush()
    os.kill(os.getpid(), 15)
raise SystemExit(int(sys.argv[1]) if sys.argv[1].isdigit() else sys.argv[1])
"""


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["0", "3", "a message", "signal"])
def test_a_warm_run_is_the_cold_run(tmp_path: Path, arg: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    (cwd := tmp_path / "cwd").mkdir()
    warm, warm_env = warm_python()
    if not warm_env:
        pytest.skip("NANOVLM_TEST_COLD is set: there is no warm server to compare")

    # Run both under other cores than the warm server was started with (xdist gives a worker a share of them):
    # the script must see its caller's, as a subprocess would (taskset where there is one).
    taskset = shutil.which("taskset") if hasattr(os, "sched_getaffinity") else None
    others = (CORES[:1] if os.sched_getaffinity(0) == set(CORES) else CORES) if taskset else CORES
    pin = [taskset, "-c", ",".join(map(str, others))] if taskset else []

    def run(python: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess:
        env = {**user_env(), **extra, "PROBE": "x"}
        return subprocess.run(
            [*pin, *python, str(script), arg], cwd=cwd, env=env, input="from stdin", capture_output=True, text=True
        )

    cold, hot = run([sys.executable], {}), run(warm, warm_env)
    assert (hot.returncode, hot.stdout, hot.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    assert cold.returncode == {"0": 0, "3": 3, "a message": 1, "signal": -15}[arg]
    assert f"cwd {cwd} path0 {tmp_path} env x" in cold.stdout and "read from stdin" in cold.stdout
    assert not pin or f"cores {others}" in cold.stdout
