"""Bad input gets one clear error; nothing is lost: resume, NaN guard, atomic checkpoints, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from nanovlm.objectives.contrastive import ClipLoss
from nanovlm.run import checkpoints, cli, preflight
from nanovlm.run.config import CONFIG_DIR, ConfigError, check_fixed_keys
from nanovlm.run.guards import NonFiniteLossError, NonFiniteLossGuard
from nanovlm.run.tracking import wandb_mode
from nanovlm.run.training import train
from nanovlm.sweeps import report
from nanovlm.sweeps import spec as specs
from tests.conftest import QUIET, REPO, inspect_wandb_runs, run_cli, user_env

TINY = ["model.embed_dim=16", "encoder.channels=[8,16,16,16]", "text_encoder.width=16"]


def run_train(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli("train.py", *QUIET, *args, cwd=cwd, env=env, timeout=timeout)


# --- Bad input on the command line: one line naming the key, exit 2, no traceback, no run dir --------------------
# These cases are also the errors table of docs/errors.md (test_errors_doc_lists_the_tested_cases keeps it in step).


@dataclass(frozen=True)
class Case:
    command: str  # as a user types it
    code: int
    line: str  # how the one line on stderr starts, after "error: "
    subprocess: bool = False  # also run as a user would (one per stage where a check lives); else in-process


CLI_CASES = [
    Case("train.py encoder=resnet", 2, "unknown option encoder=resnet; allowed encoder options: cnn", True),
    Case("train.py model.foo=1", 2, "unknown key model.foo; keys in model: _target_, embed_dim"),
    Case("train.py model.embed_dim=abc", 2, "model.embed_dim must be an integer, got 'abc'", True),
    Case("train.py trainer.max_epochs=0", 2, "trainer.max_epochs must be an integer >= 1, or -1 for no epoch"),
    Case("train.py loss.temperature=0", 2, "loss.temperature must be > 0, got 0"),
    Case("train.py trainer=gpu", 2, "trainer.accelerator=gpu but this machine has no CUDA GPU; use trainer=", True),
    Case("train.py trainer.accelerator=gpu", 2, "trainer.accelerator=gpu but this machine has no CUDA GPU"),
    Case("train.py trainer=ddp_cpu trainer.devices=300", 2, "trainer.devices=300 asks for 300 CPU processes"),
    Case("train.py optimizer.lr=-1", 2, "optimizer.lr must be >= 0, got -1 (torch.optim.Adam: Invalid learning"),
    Case("train.py optimizer=adamw optimizer.betas=[0.9,1.5]", 2, "optimizer.betas must be two numbers in [0, 1)"),
    Case("train.py scheduler=cosine scheduler.warmup_fraction=2", 2, "scheduler.warmup_fraction must be in [0, 1)"),
    Case("train.py trainer.accelerator=tpu9", 2, "trainer.accelerator=tpu9 is refused by Lightning: You selected"),
    Case("train.py trainer.strategy=nosuch", 2, "trainer.strategy=nosuch is refused by Lightning: You select", True),
    Case("train.py trainer.devices=0", 2, "trainer.devices=0 is refused by Lightning"),
    Case("train.py ckpt_path=/no/such.ckpt", 2, "ckpt_path=/no/such.ckpt: no such checkpoint file"),
    Case("train.py hydra.run.dir=/dev/null/run", 2, "hydra.run.dir: cannot create or write /dev/null/run", True),
    Case("train.py -m --cfg job", 2, "Only one of --run, --multirun, --cfg, --info and --shell_completion", True),
    Case("sweep.py sweep=nosuch", 2, "unknown sweep sweep=nosuch; available: ", True),
    Case("sweep.py --collect no/such/dir", 2, "--collect no/such/dir: no such directory", True),
]


def run_case(case: Case, tmp_path: Path, run_dir: Path) -> subprocess.CompletedProcess:
    script, *args = case.command.split()
    if script == "train.py":  # the test's settings first: Hydra's flags (-m, --cfg) may not be followed by overrides
        own_dir = any(a.startswith("hydra.run.dir=") for a in args)
        args = [*QUIET, *([] if own_dir else [f"hydra.run.dir={run_dir}"]), *args]
    env = {**user_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def skip_gpu_case_on_a_gpu_machine(case: Case) -> None:
    if "gpu" in case.command and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: trainer=gpu is valid here")


def in_process_line(case: Case, tmp_path: Path) -> str:
    """The line train.py / sweep.py would print, from the same checks called in this process."""
    script, *args = case.command.split()
    try:
        if script == "sweep.py":
            sweep = dict(a.split("=", 1) for a in args if "=" in a).get("sweep")
            specs.load_spec(sweep) if sweep else report.collect(tmp_path / args[-1])
        else:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose("config", overrides=[f"run_dir={tmp_path / 'run'}", "logger=none", *QUIET, *args])
            check_fixed_keys(cfg)
            preflight.check(cfg)
            train(cfg)
    except Exception as exc:
        return cli.one_line(exc).replace(str(tmp_path) + "/", "")
    return "(no error)"


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CLI_CASES if c.subprocess], ids=lambda c: c.command)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, case: Case) -> None:
    skip_gpu_case_on_a_gpu_machine(case)
    run_dir = tmp_path / "run"
    result = run_case(case, tmp_path, run_dir)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == case.code, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {case.line}"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()  # no run dir (and so no W&B run) that could pass for a run


@pytest.mark.parametrize("case", [c for c in CLI_CASES if not c.subprocess and c.code == 2], ids=lambda c: c.command)
def test_bad_input_message_in_process(tmp_path: Path, case: Case) -> None:
    skip_gpu_case_on_a_gpu_machine(case)
    line = in_process_line(case, tmp_path)
    assert line.startswith(case.line) and "\n" not in line, line
    assert not (tmp_path / "run").exists()


# --- Bad values caught by validation or a constructor, before anything heavy --------------------------------------

BAD_VALUES = [
    ("model.embed_dim=0", "model.embed_dim must be an integer > 0, got 0"),
    ("model.embed_dim=-4", "model.embed_dim must be an integer > 0, got -4"),
    ("loss.temperature=-0.1", "loss.temperature must be > 0, got -0.1"),
    ("data.val_fraction=0", "data.val_fraction must be a number in (0, 1), got 0"),
    ("data.val_fraction=1.5", "data.val_fraction must be a number in (0, 1), got 1.5"),
    ("data.batch_size=1", "data.batch_size must be an integer >= 2 (a contrastive loss needs negatives), got 1"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be an integer >= 1, or -1 for no epoch limit, got 0"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs must be an integer, got 1.5"),
    ("logger.mode=onlin", "logger.mode must be one of offline, online, disabled, got 'onlin'"),
    ("optimizer.lr=fast", "optimizer.lr must be"),
    ("encoder.channels=[8,x]", "encoder.channels must be a list of integers, got [8, 'x']"),
    ("+encoder.depth=3", "unknown key encoder.depth for nanovlm.models.image.CNNEncoder; allowed keys: embed_dim"),
    ("+trainer.max_epoch=3", "unknown key trainer.max_epoch for lightning.Trainer; allowed keys: accelerator"),
    ("ckpt_path=/no/such.ckpt", "ckpt_path=/no/such.ckpt: no such checkpoint file"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_value_raises_config_error_before_any_run_dir(make_cfg, tmp_path: Path, override: str, message: str):
    cfg = make_cfg("logger=wandb", "logger.mode=offline", f"run_dir={tmp_path / 'run'}", override)
    with pytest.raises(ConfigError) as info:
        train(cfg)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_max_epochs_minus_one_means_no_epoch_limit(make_cfg) -> None:
    """Lightning's -1 is accepted: the run ends at max_steps (6 steps: 1.5 epochs of 4 batches)."""
    cfg = make_cfg(*TINY, "trainer.max_epochs=-1", "+trainer.max_steps=6", "plots=none")
    assert 0.0 <= train(cfg)["val/R@1"] <= 1.0
    assert torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs=-1 gives the run no end.*\+trainer.max_steps"):
        train(make_cfg(*TINY, "trainer.max_epochs=-1", "scheduler=cosine"))


def _options_with_key(group: str, *keys: str) -> list[str]:
    """Config options (after other helpers' encoders are merged) that have one of `keys`."""
    found = []
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        node = yaml.safe_load(path.read_text()) or {}
        found += [f"{group}={path.stem}:{key}" for key in keys if key in node]
    return found


@pytest.mark.parametrize("option", _options_with_key("encoder", "patch_size"))
def test_patch_size_must_divide_32(make_cfg, option: str) -> None:
    choice, key = option.split(":")
    with pytest.raises(ConfigError, match=rf"encoder\.{key} must divide data\.image_size \(32\), got 5"):
        train(make_cfg(choice, f"encoder.{key}=5"))


HEAD_OPTIONS = [o for g in ("encoder", "text_encoder") for o in _options_with_key(g, "heads", "num_heads")]


@pytest.mark.parametrize("option", HEAD_OPTIONS)
def test_heads_must_divide_the_width(make_cfg, option: str) -> None:
    choice, key = option.split(":")
    group = choice.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{group}\.{key}"):
        train(make_cfg(choice, f"{group}.{key}=7"))


# --- Checkpoints: missing, corrupt, mismatched; atomic writes --------------------------------------------------


@pytest.fixture
def trained_run(make_cfg, tmp_path: Path) -> Path:
    """A run dir trained for one epoch with the tiny model."""
    train(make_cfg(*TINY, "trainer.max_epochs=1", f"run_dir={tmp_path / 'trained'}"))
    return tmp_path / "trained"


@pytest.mark.integration
def test_corrupt_and_mismatched_checkpoints_are_refused(make_cfg, trained_run: Path, tmp_path: Path) -> None:
    last = trained_run / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*truncated.ckpt: not a readable checkpoint, it may be trunc"):
        train(make_cfg(*TINY, f"ckpt_path={truncated}"))
    with pytest.raises(ConfigError, match=r"different model: .*model.embed_dim: 16 in the checkpoint, 8 now"):
        train(make_cfg(*TINY, "model.embed_dim=8", f"ckpt_path={trained_run}"))
    not_lightning = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, not_lightning)
    with pytest.raises(ConfigError, match="not a Lightning checkpoint"):
        train(make_cfg(*TINY, f"ckpt_path={not_lightning}"))


def test_checkpoint_write_killed_midway_leaves_the_previous_one_whole(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    io = checkpoints.AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)

    class Crash:
        def __reduce__(self):
            raise KeyboardInterrupt  # stands in for a kill after part of the file is written

    big = torch.zeros(1_000_000)  # written to disk before the crash
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": big}, "epoch": 2, "z": Crash()}, path)
    assert (tmp_path / "last.ckpt.tmp").stat().st_size > 0  # a partial write happened, beside the real file
    assert torch.load(path, weights_only=False)["epoch"] == 1


# --- W&B online without a key or a network: offline with a warning, never a hang ------------------------------


def test_wandb_online_with_unreachable_server_falls_back_to_offline(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="unreachable: logging offline instead"):
        assert wandb_mode("online") == "offline"
    assert time.perf_counter() - start < 60  # a hang guard (wandb.init can wait minutes), not a timing assertion
    assert wandb_mode("disabled") == "disabled"


NAN_LINE = (
    "error: training loss is nan at step 0 (epoch 0, batch 0); stopped before the update. "
    "Lower optimizer.lr or check loss.temperature"
)


@pytest.mark.slow
def test_online_without_key_falls_back_and_nan_loss_fails_the_run(tmp_path: Path) -> None:
    """One subprocess for two CLI behaviours: `logger.mode=online` with no API key and an empty HOME logs offline
    with a warning; a NaN loss (temperature so small that 1/tau overflows) stops at step 0, one line, exit 1,
    and the W&B run is marked failed."""
    run_dir = tmp_path / "run"
    env = {"HOME": str(tmp_path), "WANDB_MODE": "online", "WANDB_API_KEY": "", "NETRC": str(tmp_path / "none")}
    result = run_train(
        *TINY, "loss.temperature=1e-40", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "no W&B API key (WANDB_API_KEY or ~/.netrc): logging offline instead" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == NAN_LINE
    assert "Traceback" not in result.stderr
    (run,) = inspect_wandb_runs(run_dir)
    assert run["state"] == "failed"
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


def nan_loss_on_sixth_batch(monkeypatch) -> dict[str, int]:
    """Make the 6th training loss NaN: 194 train pairs / 64 = 4 batches an epoch, so that is step 5, epoch 1,
    batch 1. Returns the count of training losses computed so far."""
    calls = {"n": 0}
    forward = ClipLoss.forward

    def nan_on_sixth_batch(self, image_emb, text_emb, **kwargs):
        loss = forward(self, image_emb, text_emb, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(ClipLoss, "forward", nan_on_sixth_batch)
    return calls


def assert_checkpoints_of_epoch_0(cfg, names: tuple[str, ...]) -> None:
    for name in names:
        state = torch.load(Path(cfg.run_dir) / "checkpoints" / name, weights_only=False)
        assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["state_dict"].values()), name


@pytest.mark.integration
def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(make_cfg, monkeypatch) -> None:
    nan_loss_on_sixth_batch(monkeypatch)
    cfg = make_cfg(*TINY, "trainer.max_epochs=3")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5 \(epoch 1, batch 1\); stopped before"):
        train(cfg)
    assert_checkpoints_of_epoch_0(cfg, ("last.ckpt",))


@pytest.mark.integration
def test_deferred_nan_guard_stops_at_the_epoch_end_before_its_checkpoints(make_cfg, monkeypatch) -> None:
    """The accelerator mode, forced on the CPU: the bad step itself does not stop the run (no host sync there),
    the end of its epoch does, naming that step, before that epoch's last.ckpt or best.ckpt is written."""
    calls = nan_loss_on_sixth_batch(monkeypatch)
    monkeypatch.setattr(NonFiniteLossGuard, "defers", lambda self, loss: True)
    cfg = make_cfg(*TINY, "trainer.max_epochs=3", "checkpoint_every_s=0")  # without the guard: both, every epoch
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5 \(epoch 1, batch 1\); on an accelerator"):
        train(cfg)
    assert calls["n"] == 8  # epoch 1 was trained to its end, and epoch 2 never started
    assert_checkpoints_of_epoch_0(cfg, ("last.ckpt", "best.ckpt"))


def test_deferred_nan_guard_keeps_the_first_bad_step_and_never_reads_the_device(capsys) -> None:
    """Hand-driven hooks: on the meta device (no data, so any host read such as `.item()` or `if tensor` raises)
    the per-step record runs; on the CPU, forced deferred, the epoch's check names the first bad step, not a
    later one, and a clean epoch passes; another error meanwhile gets a note."""
    trainer = SimpleNamespace(global_step=0, current_epoch=0, strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))

    def steps(guard: NonFiniteLossGuard, losses: list[torch.Tensor]) -> None:
        for batch, loss in enumerate(losses):
            guard.on_train_batch_start(trainer, None, None, batch)
            guard.on_before_backward(trainer, None, loss)
            trainer.global_step += 1

    meta = NonFiniteLossGuard()  # decides by device: meta is not the CPU
    steps(meta, [torch.empty((), device="meta")] * 2)
    assert meta._first is not None and meta._first.device.type == "meta"

    trainer.global_step = 0
    guard = NonFiniteLossGuard(deferred=True)
    steps(guard, [torch.tensor(1.0), torch.tensor(2.0)])
    guard.on_train_epoch_end(trainer, None)  # epoch 0 was clean
    trainer.current_epoch = 1
    steps(guard, [torch.tensor(1.0), torch.tensor(float("inf")), torch.tensor(float("nan"))])  # no raise here
    with pytest.raises(
        NonFiniteLossError, match=r"loss is inf at step 3 \(epoch 1, batch 1\); on an accelerator"
    ) as error:
        guard.on_train_epoch_end(trainer, None)

    # Another error before the check (validation failing on NaN weights, say): a note beside it, no raise.
    guard.on_exception(trainer, None, error.value)
    assert capsys.readouterr().err == ""  # the guard's own error says it all
    guard.on_exception(trainer, None, ValueError("boom"))
    assert capsys.readouterr().err.startswith("note: the training loss was already non-finite at step 3 (epoch 1,")


# --- Determinism and resume -------------------------------------------------------------------------------------


def _val_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(("val/", "train/"))}


@pytest.mark.integration
def test_same_seed_same_metrics_other_seed_other_metrics(make_cfg, tmp_path: Path) -> None:
    runs = [train(make_cfg(*TINY, "trainer.max_epochs=2", f"seed={s}", f"run_dir={tmp_path / str(i)}"))
            for i, s in enumerate((0, 0, 1))]  # fmt: skip
    assert _val_metrics(runs[0]) == _val_metrics(runs[1])
    assert _val_metrics(runs[0]) != _val_metrics(runs[2])


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(make_cfg, tmp_path: Path) -> None:
    epochs = 8
    args = [*TINY, f"trainer.max_epochs={epochs}", "checkpoint_every_s=0", "plots=none"]  # last.ckpt every epoch
    # The run to interrupt: SIGKILL as soon as the second epoch's checkpoint is on disk.
    killed_dir = tmp_path / "killed"
    env = {**user_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *QUIET, *args, f"hydra.run.dir={killed_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
    while proc.poll() is None and time.monotonic() < deadline:
        if last.exists() and torch.load(last, weights_only=False)["epoch"] >= 1:
            # The whole job dies, as under a scheduler or the OOM killer: its W&B service process too,
            # which would otherwise hold the run id for a while after its parent is gone.
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(last, weights_only=False)["epoch"]
    assert 1 <= killed_at < epochs - 1

    resumed_dir = tmp_path / "resumed"
    result = run_train(*args, f"ckpt_path={killed_dir}", f"hydra.run.dir={resumed_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    cfg = make_cfg(*args, f"run_dir={tmp_path / 'uninterrupted'}")
    uninterrupted = train(cfg)

    # Same weights, bit for bit, and so the same final metrics (CPU: the kernels are deterministic).
    ours = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=False)
    ref = torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert ours["epoch"] == ref["epoch"] == epochs - 1
    for name, value in ref["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], value), name
    # W&B continues the same run: offline run dirs are named offline-run-<time>-<run id>.
    (before,) = (p.name.rsplit("-", 1)[1] for p in (killed_dir / "wandb").glob("offline-run-*"))
    (after,) = inspect_wandb_runs(resumed_dir)
    assert after["run_id"] == before
    assert after["state"] == "finished" and after["summary"]["epoch"] == epochs - 1
    for key in ("val/i2t_R@1", "val/t2i_R@1", "val/loss", "val/i2t_mean_rank"):
        assert after["summary"][key] == pytest.approx(uninterrupted[key], rel=1e-6, abs=1e-7), key


@pytest.mark.integration
@pytest.mark.parametrize(("every_s", "expected_epochs"), [(1e6, [0, 3]), (0, [0, 1, 2, 3])])
def test_checkpoints_are_written_at_most_every_n_seconds_and_at_the_end(
    make_cfg, monkeypatch, every_s: float, expected_epochs: list[int]
) -> None:
    """last.ckpt: the first epoch, then when due, and the last epoch. best.ckpt: an improvement waits in
    memory until due or the end of training, so the file on disk still ends up holding the best epoch."""
    written: dict[str, list[int]] = {"last.ckpt": [], "best.ckpt": []}
    save = checkpoints.AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint: dict, path, storage_options=None) -> None:
        written[Path(path).name].append(checkpoint["epoch"])
        save(self, checkpoint, path, storage_options)

    recalls: list[float] = []

    class Recorder(pl.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            recalls.append(float(trainer.callback_metrics["val/R@1"]))

    monkeypatch.setattr(checkpoints.AtomicCheckpointIO, "save_checkpoint", spy)
    cfg = make_cfg(*TINY, "trainer.max_epochs=4", f"checkpoint_every_s={every_s}", "optimizer.lr=3e-3")
    train(cfg, extra_callbacks=[Recorder()])
    assert written["last.ckpt"] == expected_epochs
    improving = [e for e, r in enumerate(recalls) if r > max(recalls[:e], default=-1.0)]
    best_epoch = improving[-1]
    if every_s == 0:
        assert written["best.ckpt"] == improving
    else:  # the first improvement at once, the last one at the end, none in between
        assert written["best.ckpt"] == sorted({improving[0], best_epoch})
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["epoch"] == 3
    assert torch.load(ckpt_dir / "best.ckpt", weights_only=False)["epoch"] == best_epoch


# --- Signals: SIGINT/SIGTERM fail the run with 130/143; a scheduler's pre-timeout signal checkpoints and stops ----

# A shell starts background jobs with SIGINT ignored, and a child inherits that: this launcher gives train.py the
# default disposition back, as an interactive terminal would, so that the test sends the Ctrl-C a user sends.
DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def start_train(run_dir: Path, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**user_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    command = [sys.executable, "-c", DEFAULT_SIGINT, str(REPO / "train.py"), *QUIET, *args, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_after_epoch(proc: subprocess.Popen, run_dir: Path, signum: int, epoch: int = 0) -> None:
    """Send `signum` once last.ckpt holds `epoch` (the run is in the middle of training)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
    while proc.poll() is None and time.monotonic() < deadline:
        if last.exists() and torch.load(last, weights_only=False)["epoch"] >= epoch:
            proc.send_signal(signum)
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"the run ended (or hung) before epoch {epoch}: {proc.communicate()[1][-3000:]}")


SIGNAL_CASES = [(signal.SIGTERM, 143), (signal.SIGINT, 130)]


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), SIGNAL_CASES, ids=["SIGTERM", "SIGINT"])
def test_a_signal_fails_the_run_with_its_exit_code(tmp_path: Path, signum: int, code: int) -> None:
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *TINY, "trainer.max_epochs=500", "checkpoint_every_s=0", "plots=none", cwd=tmp_path)
    signal_after_epoch(proc, run_dir, signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr[-3000:]
    name = signal.Signals(signum).name
    assert stderr.strip().splitlines()[-1] == (
        f"stopped: {name} ended the run (marked failed); to continue from its last checkpoint: ckpt_path={run_dir}"
    )
    assert "Traceback" not in stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result == {"status": "failed", "error": f"Interrupted: stopped by {name}"}
    (run,) = inspect_wandb_runs(run_dir)
    assert run["state"] == "failed"
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "0").symlink_to(run_dir)  # as job 0 of a sweep, it is collected as failed
    (job,) = report.collect(tmp_path / "sweep")
    assert job.status == "failed" and job.error == f"Interrupted: stopped by {name}"


@pytest.mark.slow
def test_preempted_run_checkpoints_stops_and_resumes_to_the_uninterrupted_result(make_cfg, tmp_path: Path) -> None:
    """SIGUSR1 (SLURM's pre-timeout signal; submitit sends SIGUSR2, handled alike): the run finishes its epoch,
    saves last.ckpt, marks itself preempted and stops. The same command again (what a requeued job runs) resumes
    it into the same W&B run and ends where an uninterrupted run ends."""
    epochs = 6
    args = [*TINY, f"trainer.max_epochs={epochs}", "checkpoint_every_s=1000", "plots=none"]  # last.ckpt: 1st epoch
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *args, cwd=tmp_path)
    signal_after_epoch(proc, run_dir, signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGUSR1, stderr[-3000:]
    assert "Traceback" not in stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "preempted" and result["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"]
    assert stderr.strip().splitlines()[-1].startswith("stopped: SIGUSR1 (the scheduler's time limit is ne")
    assert f"after epoch {stopped_at}:" in stderr and stopped_at < epochs - 1
    (first,) = (p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*"))

    again = start_train(run_dir, *args, cwd=tmp_path)  # the requeued job: same command, same run dir
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"
    uninterrupted = train(make_cfg(*args, f"run_dir={tmp_path / 'uninterrupted'}"))
    ours = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    ref = torch.load(tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ours["epoch"] == ref["epoch"] == epochs - 1
    for name, value in ref["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], value), name
    runs = inspect_wandb_runs(run_dir)  # offline, a resumed run is a second offline-run-* dir with the same run id
    assert [r["run_id"] for r in runs] == [first, first]
    assert runs[-1]["state"] == "finished" and runs[-1]["summary"]["epoch"] == epochs - 1
    for key in ("val/i2t_R@1", "val/t2i_R@1", "val/loss"):
        assert runs[-1]["summary"][key] == pytest.approx(uninterrupted[key], rel=1e-6, abs=1e-7), key


# --- docs/errors.md: the table of what each mistake prints is generated from the cases above --------------------

ERRORS_DOC = REPO / "docs" / "errors.md"
MARKERS = ("<!-- errors-table:start -->", "<!-- errors-table:end -->")
RUN_STOPPED_ROWS = [  # from the NaN, signal and preemption tests above
    ("`python train.py loss.temperature=1e-40` (the loss turns NaN)", 1, NAN_LINE.split(" (")[0]),
    *(
        (f"{signal.Signals(s).name} during training ({'Ctrl-C' if s == signal.SIGINT else 'kill, a scheduler'})", c,
         f"stopped: {signal.Signals(s).name} ended the run (marked failed); to continue from its last checkpoint: ")
        for s, c in SIGNAL_CASES
    ),
    ("SIGUSR1 / SIGUSR2 during training (SLURM's / submitit's time-limit warning)", "138 / 140",
     "stopped: SIGUSR1 (the scheduler's time limit is near) after epoch "),
]  # fmt: skip


def errors_table() -> str:
    """The Markdown table between the markers in docs/errors.md."""
    rows = ["| you type | exit code | the one line on stderr starts with |", "|---|---|---|"]
    rows += [f"| `python {c.command}` | {c.code} | `error: {c.line}` |" for c in CLI_CASES]
    rows += [f"| {what} | {code} | `{line}` |" for what, code, line in RUN_STOPPED_ROWS]
    return "\n".join(rows)


def test_errors_doc_lists_the_tested_cases() -> None:
    text = ERRORS_DOC.read_text()
    start, end = (text.index(m) for m in MARKERS)
    assert text[start + len(MARKERS[0]) : end].strip() == errors_table(), (
        "docs/errors.md is out of date: regenerate it with `python -m tests.test_reliability`"
    )


if __name__ == "__main__":  # regenerate the table in docs/errors.md
    text = ERRORS_DOC.read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    ERRORS_DOC.write_text(f"{text[:start]}\n{errors_table()}\n{text[end:]}")
    print(f"wrote {ERRORS_DOC}")


def test_preempted_hands_the_job_back_to_the_launcher_or_to_slurm(monkeypatch, tmp_path: Path) -> None:
    """After the checkpoint: submitit's own handler when the launcher installed one (it requeues with the same
    config), else `scontrol requeue <job>` inside a SLURM job, else nothing (a local run just stops)."""
    from nanovlm.run import guards

    called: list = []
    guards.Preempted(signal.SIGUSR2, tmp_path, 3, lambda signum, frame: called.append(signum)).requeue()
    assert called == [signal.SIGUSR2]

    monkeypatch.setattr(guards.subprocess, "run", lambda command, check: called.append(command))
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    guards.Preempted(signal.SIGUSR1, tmp_path, 3, signal.SIG_DFL).requeue()
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    guards.Preempted(signal.SIGUSR1, tmp_path, 3, None).requeue()
    monkeypatch.delenv("SLURM_JOB_ID")
    guards.Preempted(signal.SIGUSR1, tmp_path, 3, None).requeue()
    assert called[1:] == [["scontrol", "requeue", "123"], ["scontrol", "requeue", "77_4"]]
