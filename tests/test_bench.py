"""The benchmark: its plain loop is the same training as train(), its table is produced and sane; stop_at_recall."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from nanovlm.bench import figures, loops, table
from nanovlm.run.config import ConfigError, validate
from nanovlm.run.training import train
from tests.conftest import REPO, user_env


def test_epoch_timer_splits_train_and_validation() -> None:
    timer = loops.EpochTimer()
    timer.epoch_start, timer.val_start, timer.fit_end = [0.0, 1.0, 2.5], [0.75, 2.0, 3.0], 3.5
    train_s, epoch_s = timer.times()
    assert train_s == [0.75, 1.0, 0.5]
    assert epoch_s == [1.0, 1.5, 1.0]


def test_steady_drops_the_warm_up_epoch_and_cell_shows_the_range() -> None:
    assert table.steady([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert table.cell([0.2, 0.1, 0.4]) == "0.200 s (0.100–0.400, n=3)"


@pytest.mark.slow
def test_plain_loop_stops_at_the_same_epoch_and_recall_as_train(make_cfg) -> None:
    """Same seeds, batches, optimizer and validation: the plain loop and train() are the same computation."""
    cfg = make_cfg("trainer.max_epochs=30", "stop_at_recall=0.2")
    timer = loops.EpochTimer()
    metrics = train(cfg, extra_callbacks=[timer])
    plain = loops.plain_run(cfg, stop_at=0.2)
    epochs = len(timer.epoch_start)
    assert 1 <= epochs < 30  # stopped early, at the first epoch reaching the target
    assert metrics["val/R@1"] >= 0.2
    assert plain["epochs"] == epochs
    assert plain["val/R@1"] == pytest.approx(metrics["val/R@1"], abs=1e-6)


@pytest.mark.slow
def test_plain_loop_equals_train_on_scenes_with_hard_negatives(make_cfg) -> None:
    """(e)'s two loops on the scenes world, hard negatives in the loss and in validation: the same numbers.

    Both rank by `nanovlm.evaluate.ranking` (ties fail), so exact ties agree; the tolerance is 2 of the 6,318 val
    queries, for a near-tie just outside the tie tolerance that the two loops' differently batched matmuls (a val batch
    of negatives against all of them at once) can still put on either side on another CPU, BLAS or thread count."""
    _, overrides = figures.EPOCH_BENCH["(e)"]
    tiny = ["encoder.channels=[8,16,16,16]", "model.embed_dim=16", "text_encoder.width=16"]
    cfg = make_cfg(*overrides, *tiny, "trainer.max_epochs=2")
    ours, plain = loops.lightning_run(cfg), loops.plain_run(cfg)
    assert ours["epochs"] == plain["epochs"] == 2
    keys = ("val/i2t_R@1", "val/t2i_R@1", "val/hn_order", "val/hn_binding", "val/hn_relation")
    for key in keys:
        assert plain[key] == pytest.approx(ours[key], abs=2 / 6318), key
    assert 0 < ours["val/hn_order"] < 1  # neither untrained nor trivial: the comparison has something to compare


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_stop_at_recall_out_of_range_names_the_key(make_cfg, value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"stop_at_recall must be a number in (0, 1], got {value}")):
        validate(make_cfg(f"stop_at_recall={value}"))


@pytest.mark.slow
def test_quick_bench_writes_a_sane_table(tmp_path) -> None:
    out = tmp_path / "bench.md"
    table, numbers = figures.run_bench(quick=True, out=out)
    assert out.read_text() == table
    assert "| figure |" in table and "(a) shapes: train epoch" in table and "(c) import to first step" in table
    assert numbers["(a) same_result"] == 1.0  # both loops ended at the same val R@1
    for key in ("(a) train epoch, s", "(a) train + val epoch, s", "(c) first step none"):
        assert math.isfinite(numbers[key]) and numbers[key] > 0, key
    for seconds in re.findall(r"(\d+\.\d+) s \(", table):
        assert float(seconds) > 0


def test_launchers_do_not_import_torch_or_lightning() -> None:
    """train.py's module level and sweep.py load neither torch nor Lightning (~2.5 s): under the joblib launcher
    the main process only composes and dispatches, and sweep.py only runs train.py -m and reads result.json."""
    probe = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import train, sweep, nanovlm, nanovlm.sweeps.spec; "
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=user_env(), check=True)
    assert proc.stdout.strip() == "[]"
    # ...while the package's public names still work, loaded on first use
    import nanovlm

    assert nanovlm.train is train and nanovlm.DualEncoder.__name__ == "DualEncoder"


def test_parallel_ceiling_is_twice_one_fit_over_two_at_once() -> None:
    """Hand-built fits: a stand-in command reports 1.0 s on all threads and 1.5 s on half of them, so one fit
    alone takes 1.0 s and two at once take 1.5 s: two fits side by side run 2 x 1.0 / 1.5 = 1.33x faster."""
    fit = "import json, sys; print(json.dumps({'time/fit_s': 1.5 if sys.argv[-1].endswith('=%d') else 1.0}))"
    half = max(1, (os.cpu_count() or 1) // 2)
    rows, numbers = figures.bench_parallel_bound(epochs=1, repeats=2, command=[sys.executable, "-c", fit % half])
    (row,) = rows
    assert row[0].startswith("(d) plain-loop fits") and row[3] == "1.33x speed-up for fits"
    assert numbers["(d) parallel ceiling"] == pytest.approx(2 * 1.0 / 1.5)


@pytest.mark.slow
def test_plain_loop_cli_prints_its_fit_as_json() -> None:
    """What (b) and (d) read from `python -m nanovlm.bench --plain`: the last line, JSON, with the fit's time."""
    command = [sys.executable, "-m", "nanovlm.bench", "--plain", "trainer.max_epochs=1", "torch_threads=1"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=user_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["epochs"] == 1 and 0 <= result["val/R@1"] <= 1 and result["time/fit_s"] > 0
