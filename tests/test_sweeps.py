"""Sweeps end to end: sweep.py runs train.py -m, and the table equals what each W&B run recorded."""

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from matplotlib.axes import Axes

from nanovlm.run.config import ConfigError
from nanovlm.sweeps import report
from nanovlm.sweeps import spec as specs
from tests.conftest import inspect_wandb_run, run_cli, wandb_records

FAST = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "plots=none"]


def write_spec(tmp_path: Path, name: str, body: str) -> str:
    """A sweep spec file outside the repo; sweep.py takes a path as well as a name."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(body)
    return str(path)


def only_sweep_dir(cwd: Path) -> Path:
    (sweep_dir,) = (cwd / "multirun").iterdir()
    return sweep_dir


@pytest.mark.slow
def test_two_by_two_sweep_writes_runs_table_and_heatmap(tmp_path: Path) -> None:
    grid = "params:\n  loss.temperature: [0.05, 0.1]\n  model.embed_dim: [8, 16]\n"
    name = write_spec(tmp_path, "grid", grid + "heatmap: [model.embed_dim, loss.temperature]\n")
    result = run_cli("sweep.py", f"sweep={name}", *FAST, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep_dir = only_sweep_dir(tmp_path)
    job_dirs = sorted(d for d in sweep_dir.iterdir() if d.name.isdigit())
    assert len(job_dirs) == 4

    runs = [inspect_wandb_run(d) for d in job_dirs]
    assert len({r["run_id"] for r in runs}) == 4 and len({r["name"] for r in runs}) == 4
    assert all(r["state"] == "finished" for r in runs)
    assert {r["config"]["logger"]["group"] for r in runs} == {sweep_dir.name}  # one W&B group per sweep
    assert {wandb_records(d, "run")[0]["run_group"] for d in job_dirs} == {sweep_dir.name}
    settings = {(r["config"]["loss"]["temperature"], r["config"]["model"]["embed_dim"]) for r in runs}
    assert settings == {(0.05, 8), (0.05, 16), (0.1, 8), (0.1, 16)}

    with (sweep_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for run in runs:
        (row,) = [
            r
            for r in rows
            if float(r["loss.temperature"]) == run["config"]["loss"]["temperature"]
            and int(r["model.embed_dim"]) == run["config"]["model"]["embed_dim"]
        ]
        for key in ("val/R@1", "val/i2t_R@1", "val/t2i_R@1"):
            assert float(row[key]) == pytest.approx(run["summary"][key], abs=1e-6)
    assert (sweep_dir / "heatmap.png").stat().st_size > 5000
    assert (sweep_dir / "results.md").read_text().count("\n") == 2 + 4
    assert "best val/R@1" in result.stdout

    # --collect rebuilds the same table from the dirs alone.
    (sweep_dir / "results.csv").unlink()
    again = run_cli("sweep.py", "--collect", str(sweep_dir), "--no-wandb", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    with (sweep_dir / "results.csv").open() as f:
        assert list(csv.DictReader(f)) == rows


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_others(tmp_path: Path) -> None:
    # temperature 0 is rejected when the loss is built: that job fails, the others run.
    name = write_spec(tmp_path, "fail", "params:\n  loss.temperature: [0.07, 0, 0.1]\n")
    result = run_cli("sweep.py", f"sweep={name}", *FAST, "logger=none", cwd=tmp_path, timeout=300)
    assert result.returncode == 1  # the sweep reports the failure ...
    sweep_dir = only_sweep_dir(tmp_path)
    jobs = report.collect(sweep_dir)
    assert [j.status for j in jobs] == ["ok", "failed", "ok"]
    assert "loss.temperature must be > 0" in jobs[1].error
    with (sweep_dir / "results.csv").open() as f:
        rows = {r["loss.temperature"]: r for r in csv.DictReader(f)}
    assert rows["0"]["failed"] == "1" and math.isnan(float(rows["0"]["val/R@1"]))
    assert rows["0.07"]["failed"] == "0" and 0 <= float(rows["0.1"]["val/R@1"]) <= 1
    assert "job 1 FAILED (loss.temperature=0)" in result.stdout


def test_unknown_sweep_names_the_available_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown sweep sweep=nope; available: .*temperature_dim"):
        specs.load_spec("nope")


def test_summarise_averages_over_seeds_and_counts_failures(tmp_path: Path) -> None:
    def job(num: int, enc: str, seed: str, r1: float | None) -> report.Job:
        status, metrics = ("ok", {"val/R@1": r1}) if r1 is not None else ("failed", {})
        return report.Job(num, tmp_path, {"encoder": enc, "seed": seed}, status, metrics)

    jobs = [job(0, "cnn", "0", 0.9), job(1, "cnn", "1", 0.7), job(2, "vit", "0", 1.0), job(3, "vit", "1", None)]
    spec = specs.SweepSpec(name="t", params={}, average_over=["seed"], columns=[], min_columns=["val/R@1"])
    header, rows = report.summarise(jobs, spec)
    assert header[:3] == ["encoder", "val/R@1", "min val/R@1"]
    by_enc = {r["encoder"]: r for r in rows}
    assert by_enc["cnn"]["val/R@1"] == pytest.approx(0.8) and by_enc["cnn"]["failed"] == 0
    assert by_enc["cnn"]["min val/R@1"] == pytest.approx(0.7) and by_enc["vit"]["min val/R@1"] == 1.0
    assert by_enc["vit"]["val/R@1"] == 1.0 and by_enc["vit"]["failed"] == 1 and by_enc["vit"]["runs"] == 2
    assert report.best_row(rows, "val/R@1")["encoder"] == "vit"


def test_wandb_sweep_yaml_runs_train_py_with_hydra_overrides(tmp_path: Path) -> None:
    # cold: writing the YAML loads neither torch nor Lightning, and this may be the worker's first script run,
    # which would start the warm server (seconds of imports) for a command that takes a fraction of one
    result = run_cli("sweep.py", "sweep=temperature_dim", "--wandb-sweep", cwd=tmp_path, cold=True)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((tmp_path / "wandb_sweep_temperature_dim.yaml").read_text())
    assert config["method"] == "grid" and config["metric"] == {"name": "val/R@1", "goal": "maximize"}
    assert config["parameters"]["loss.temperature"]["values"] == [0.03, 0.05, 0.07, 0.1]
    assert config["parameters"]["model.embed_dim"]["values"] == [16, 32, 64]
    assert config["program"].endswith("train.py") and config["command"][-1] == "${args_no_hyphens}"


@pytest.mark.slow
def test_optuna_sweep_runs_its_trials(tmp_path: Path) -> None:
    spec = "sweeper: optuna\nn_trials: 2\nparams:\n  loss.temperature: interval(0.05, 0.2)\n"
    name = write_spec(tmp_path, "opt", spec)
    result = run_cli("sweep.py", f"sweep={name}", *FAST, "logger=none", "--no-wandb", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs = report.collect(only_sweep_dir(tmp_path))
    assert [j.status for j in jobs] == ["ok", "ok"]
    temperatures = [float(j.overrides["loss.temperature"]) for j in jobs]
    assert all(0.05 <= t <= 0.2 for t in temperatures) and temperatures[0] != temperatures[1]


def test_the_summary_run_uses_the_jobs_wandb_settings(tmp_path: Path) -> None:
    """The sweep-summary W&B run goes to the project and mode the jobs logged with, none when they had no logger."""

    def job(num: int, logger: dict | None) -> report.Job:
        (tmp_path / str(num) / ".hydra").mkdir(parents=True)
        config = {"seed": 0, **({"logger": logger} if logger is not None else {})}
        (tmp_path / str(num) / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        return report.Job(num, tmp_path / str(num), {}, "ok", {})

    logged = job(0, {"project": "elsewhere", "mode": "${oc.env:NANOVLM_TEST_MODE,disabled}", "name": None})
    assert report.jobs_logger([logged]) == {"project": "elsewhere", "mode": "disabled", "name": None}
    assert report.jobs_logger([job(1, None)]) is None


def test_rows_averaged_over_seeds_show_mean_and_std(tmp_path: Path) -> None:
    def job(num: int, enc: str, seed: str, r1: float) -> report.Job:
        return report.Job(num, tmp_path, {"encoder": enc, "seed": seed}, "ok", {"val/R@1": r1})

    jobs = [job(0, "cnn", "0", 0.9), job(1, "cnn", "1", 0.7), job(2, "cnn", "2", 0.8), job(3, "vit", "0", 1.0)]
    spec = specs.SweepSpec(name="t", params={}, average_over=["seed"], columns=[])
    header, rows = report.summarise(jobs, spec)
    by_enc = {r["encoder"]: r for r in rows}
    assert by_enc["cnn"]["val/R@1 std"] == pytest.approx(0.1)  # sample std of 0.9, 0.7, 0.8
    assert math.isnan(by_enc["vit"]["val/R@1 std"])  # one seed: no spread to show
    report.write_table(tmp_path, header, rows)
    md = (tmp_path / "results.md").read_text()
    assert "| cnn | 0.800 ± 0.100 |" in md and "| vit | 1.000 |" in md
    with (tmp_path / "results.csv").open() as f:
        csv_rows = {r["encoder"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["cnn"]["val/R@1 std"]) == pytest.approx(0.1)
    path = report.plot_heatmap(tmp_path / "h.png", rows, "encoder", "encoder", "val/R@1", "t")
    assert path.stat().st_size > 1000


def test_a_nan_metric_shows_as_nan_and_a_failed_run_as_failed(tmp_path: Path, capsys, monkeypatch) -> None:
    """A hand-built 2x2 sweep dir: a finished run whose val/R@1 is NaN (a captioner with loss.retrieval=false
    ranks nothing) is "nan" in the table, the Markdown and the heatmap; a run whose result.json says failed is
    "failed" there."""
    results = {
        ("0.05", "8"): {"status": "ok", "metrics": {"val/R@1": 0.5}},
        ("0.05", "16"): {"status": "ok", "metrics": {"val/R@1": math.nan}},
        ("0.1", "8"): {"status": "failed", "error": "NonFiniteLossError: training loss is nan at step 0"},
        ("0.1", "16"): {"status": "ok", "metrics": {"val/R@1": 0.75}},
    }
    for num, ((temperature, dim), result) in enumerate(results.items()):
        (tmp_path / str(num) / ".hydra").mkdir(parents=True)
        overrides = [f"loss.temperature={temperature}", f"model.embed_dim={dim}"]
        (tmp_path / str(num) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (tmp_path / str(num) / "result.json").write_text(json.dumps(result))  # NaN as json.dumps writes it
    drawn: list[str] = []
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, **kwargs: drawn.append(s))
    spec = specs.SweepSpec(name="nan", params={}, columns=[], heatmap=["model.embed_dim", "loss.temperature"])
    out = report.report(tmp_path, spec, use_wandb=False)

    cells = {(r["loss.temperature"], r["model.embed_dim"]): report._cell(r, "val/R@1") for r in out["rows"]}
    assert cells == {("0.05", "8"): "0.500", ("0.05", "16"): "nan", ("0.1", "8"): "failed", ("0.1", "16"): "0.750"}
    md = (tmp_path / "results.md").read_text()
    assert "| 0.05 | 16 | nan | 1 | 0 | 1 |" in md and "| 0.1 | 8 | failed | 1 | 1 | 2 |" in md
    printed = capsys.readouterr().out
    assert "nan" in printed and "job 2 FAILED (loss.temperature=0.1 model.embed_dim=8)" in printed
    assert sorted(drawn) == ["0.500", "0.750", "failed", "nan"]
    assert out["best"]["loss.temperature"] == "0.1"  # the NaN run is not best
