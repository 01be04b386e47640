"""The benchmark: its plain loop is the same training as train(), its table is produced and sane; stop_at_recall."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from nanovlm import bench
from nanovlm.config import ConfigError, validate
from nanovlm.training import train
from tests.conftest import REPO, user_env


def test_epoch_timer_splits_train_and_validation() -> None:
    timer = bench.EpochTimer()
    timer.epoch_start, timer.val_start, timer.fit_end = [0.0, 1.0, 2.5], [0.75, 2.0, 3.0], 3.5
    train_s, epoch_s = timer.times()
    assert train_s == [0.75, 1.0, 0.5]
    assert epoch_s == [1.0, 1.5, 1.0]


def test_steady_drops_the_warm_up_epoch_and_cell_shows_the_range() -> None:
    assert bench.steady([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert bench.cell([0.2, 0.1, 0.4]) == "0.200 s (0.100–0.400, n=3)"


def test_plain_loop_stops_at_the_same_epoch_and_recall_as_train(make_cfg) -> None:
    """Same seeds, batches, optimizer and validation: the plain loop and train() are the same computation."""
    cfg = make_cfg("trainer.max_epochs=30", "stop_at_recall=0.2")
    timer = bench.EpochTimer()
    metrics = train(cfg, extra_callbacks=[timer])
    plain = bench.plain_run(cfg, stop_at=0.2)
    epochs = len(timer.epoch_start)
    assert 1 <= epochs < 30  # stopped early, at the first epoch reaching the target
    assert metrics["val/R@1"] >= 0.2
    assert plain["epochs"] == epochs
    assert plain["val/R@1"] == pytest.approx(metrics["val/R@1"], abs=1e-6)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_stop_at_recall_out_of_range_names_the_key(make_cfg, value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"stop_at_recall must be a number in (0, 1], got {value}")):
        validate(make_cfg(f"stop_at_recall={value}"))


@pytest.mark.slow
def test_quick_bench_writes_a_sane_table(tmp_path) -> None:
    out = tmp_path / "bench.md"
    table, numbers = bench.run_bench(quick=True, out=out)
    assert out.read_text() == table
    assert "| figure |" in table and "(a) train epoch" in table and "(c) import to first step" in table
    assert numbers["same_result"] == 1.0  # both loops ended at the same val R@1
    for key in ("(a) train epoch, s", "(a) train + val epoch, s", "(c) first step none"):
        assert math.isfinite(numbers[key]) and numbers[key] > 0, key
    for seconds in re.findall(r"(\d+\.\d+) s \(", table):
        assert float(seconds) > 0


def test_launchers_do_not_import_torch_or_lightning() -> None:
    """train.py's module level and sweep.py load neither torch nor Lightning (~2.5 s): under the joblib launcher
    the main process only composes and dispatches, and sweep.py only runs train.py -m and reads result.json."""
    probe = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import train, sweep, nanovlm, nanovlm.sweeps; "
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=user_env(), check=True)
    assert proc.stdout.strip() == "[]"
    # ...while the package's public names still work, loaded on first use
    import nanovlm

    assert nanovlm.train is train and nanovlm.DualEncoder.__name__ == "DualEncoder"


@pytest.mark.slow
def test_parallel_ceiling_compares_one_fit_with_two_at_once() -> None:
    rows, numbers = bench.bench_parallel_bound(epochs=2, repeats=1)
    (row,) = rows
    assert row[0].startswith("(d) plain-loop fits") and row[3].endswith("x speed-up for fits")
    # The figure itself is a timing, so its value depends on how busy the machine is: only its form is tested.
    assert math.isfinite(numbers["(d) parallel ceiling"]) and numbers["(d) parallel ceiling"] > 0
