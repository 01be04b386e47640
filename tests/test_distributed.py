"""Data parallelism on CPU: 2 processes over gloo must mean the same as 1 process."""

from __future__ import annotations

import math
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nanovlm.evaluate.metrics import RetrievalRecall
from nanovlm.objectives.contrastive import ClipLoss, SigLipLoss
from nanovlm.run.config import CONFIG_DIR
from tests.conftest import inspect_wandb_run, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_in_two_processes(fn, *args) -> list:
    """Run fn(rank, world_size, *args) in 2 gloo processes; return what each rank returned.

    On Linux the processes are forked, not spawned: they inherit this process's imports instead of importing
    torch and Lightning again, and what these tests check (collectives, gradients, metric sync) does not depend on
    how a process started. macOS spawns them (its system libraries are not safe to use after a fork). Training
    under Lightning's own spawn is tested in test_checkpoints.py."""
    port = _free_port()
    start_method = "fork" if sys.platform == "linux" else "spawn"
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(2, port, fn, args, results), nprocs=2, join=True, start_method=start_method)
        return [results[r] for r in range(2)]


def _worker(rank: int, world: int, port: int, fn, args, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def _recall_on_shards(rank: int, world: int, scores: torch.Tensor, targets: torch.Tensor) -> dict:
    # Like a DistributedSampler over 5 queries for 2 ranks: rank 0 gets 0, 2, 4 and rank 1 gets 1, 3 and a
    # padding repeat of query 0.
    shard = torch.tensor([[0, 2, 4], [1, 3, 0]][rank])
    metric = RetrievalRecall(ks=(1, 2))
    metric.update(scores[shard], targets[shard], shard)
    return {k: v.item() for k, v in metric.compute().items()}


def test_recall_under_two_processes_counts_each_query_once() -> None:
    torch.manual_seed(0)
    scores, targets = torch.randn(5, 7), torch.tensor([0, 3, 6, 2, 5])
    single = RetrievalRecall(ks=(1, 2))
    single.update(scores, targets, torch.arange(5))
    expected = {k: v.item() for k, v in single.compute().items()}
    for got in _run_in_two_processes(_recall_on_shards, scores, targets):
        assert got == pytest.approx(expected)


def test_slurm_launcher_takes_its_shape_from_the_trainer() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["tasks_per_node"], launcher["gpus_per_node"], launcher["nodes"]) == (4, 4, 2)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.precision == "bf16-mixed"


def _loss_and_grads(
    loss_name: str,
    images: torch.Tensor,
    texts: torch.Tensor,
    rank: int | None,
    world: int,
    negatives: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    caption_id: torch.Tensor | None = None,
    negative_id: torch.Tensor | None = None,
) -> dict:
    """One step of a tiny dual encoder (two linear maps + the loss) on this rank's share of the batch;
    parameter gradients averaged over ranks, as DDP does. `negatives` [B, K, 5] and `valid` [B, K]: each image's
    hard-negative texts (loss.hard_negatives), sharded with their images; `caption_id` [B] and `negative_id` [B, K]:
    the caption of each pair and each negative (several true pairs per batch), sharded the same way."""
    torch.manual_seed(0)
    image_proj, text_proj = torch.nn.Linear(6, 4).double(), torch.nn.Linear(5, 4).double()
    hard = negatives is not None
    loss_fn = (
        ClipLoss(0.1, learnable_temperature=True, hard_negatives=hard)
        if loss_name == "clip"
        else SigLipLoss(bias=-2.0, hard_negatives=hard)
    ).double()
    if rank is not None:  # contiguous shards, like a DistributedSampler without shuffling
        share = len(images) // world
        images, texts = images[rank * share : (rank + 1) * share], texts[rank * share : (rank + 1) * share]
        if hard:
            negatives, valid = negatives[rank * share : (rank + 1) * share], valid[rank * share : (rank + 1) * share]
        if caption_id is not None:
            caption_id = caption_id[rank * share : (rank + 1) * share]
        if negative_id is not None:
            negative_id = negative_id[rank * share : (rank + 1) * share]
    img = torch.nn.functional.normalize(image_proj(images), dim=-1)
    txt = torch.nn.functional.normalize(text_proj(texts), dim=-1)
    if hard:
        neg = torch.nn.functional.normalize(text_proj(negatives.flatten(0, 1)), dim=-1)  # [B*K, 4]
        ids = None if negative_id is None else negative_id.flatten()
        loss = loss_fn(img, txt, neg, valid.flatten(), caption_id=caption_id, negative_id=ids)
    else:
        loss = loss_fn(img, txt, caption_id=caption_id)
    loss.backward()
    params = {"image": image_proj.weight, "text": text_proj.weight, "scale": loss_fn.logit_scale}
    if loss_name == "siglip":
        params["bias"] = loss_fn.logit_bias
    grads = {k: p.grad.clone() for k, p in params.items()}
    if rank is not None:
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= world  # each rank's loss is a mean over its own queries: the global loss is their mean
    return {"loss": loss.detach(), **grads}


def _two_rank_step(rank: int, world: int, loss_name: str, images: torch.Tensor, texts: torch.Tensor, *hn) -> dict:
    return _loss_and_grads(loss_name, images, texts, rank, world, *hn)


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_two_processes_match_one_process_with_the_doubled_batch(loss_name: str) -> None:
    torch.manual_seed(1)
    images, texts = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    single = _loss_and_grads(loss_name, images, texts, rank=None, world=1)
    for got in _run_in_two_processes(_two_rank_step, loss_name, images, texts):
        for key, value in single.items():
            torch.testing.assert_close(got[key], value, msg=lambda m, k=key: f"{loss_name} {k}: {m}")


@pytest.mark.slow
def test_ddp_in_a_multirun_is_refused_with_the_alternatives(tmp_path) -> None:
    result = run_cli(
        "train.py", "-m", "trainer=ddp_cpu", "trainer.strategy=ddp", "trainer.max_epochs=1", "logger=none",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert "trainer.strategy=ddp re-launches train.py per device" in result.stderr
    assert "use trainer.strategy=ddp_spawn or hydra/launcher=slurm" in result.stderr


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_sweep_with_two_wandb_runs(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "train.py", "-m", "hydra/launcher=submitit_local", "loss.temperature=0.05,0.1", "trainer.max_epochs=2",
        "plots=none", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [inspect_wandb_run(sweep_dir / str(job)) for job in (0, 1)]
    assert [r["state"] for r in runs] == ["finished", "finished"]
    assert sorted(r["config"]["loss"]["temperature"] for r in runs) == [0.05, 0.1]
    assert len({r["run_id"] for r in runs}) == 2


def _hard_negative_steps(rank: int, world: int, *inputs) -> dict:
    return {name: _loss_and_grads(name, inputs[0], inputs[1], rank, world, *inputs[2:]) for name in ("clip", "siglip")}


def test_hard_negatives_under_two_processes_match_one_process() -> None:
    """Each rank's extra texts are gathered with gradients like its captions: 2 x 4 images with their 3 negatives
    each train exactly like 8 images with all 24 negatives in one process (CLIP and SigLIP, one spawn)."""
    torch.manual_seed(2)
    images, texts = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    negatives = torch.randn(8, 3, 5, dtype=torch.float64)
    valid = torch.rand(8, 3) > 0.25
    single = _hard_negative_steps(None, 1, images, texts, negatives, valid)
    for name in single:
        plain = _loss_and_grads(name, images, texts, None, 1)
        assert not torch.allclose(single[name]["loss"], plain["loss"])  # the negatives do take part
    for got in _run_in_two_processes(_hard_negative_steps, images, texts, negatives, valid):
        for name, expected in single.items():
            for key, value in expected.items():
                torch.testing.assert_close(got[name][key], value, msg=lambda m, k=key, n=name: f"{n} {k}: {m}")


def _duplicated_caption_steps(rank: int, world: int, *inputs) -> dict:
    return {name: _loss_and_grads(name, *inputs[:2], rank, world, *inputs[2:]) for name in ("clip", "siglip")}


def test_several_true_pairs_under_two_processes_match_one_process() -> None:
    """Caption ids are gathered like the embeddings: a caption whose images sit on both ranks is a positive across
    them, and a hard negative on one rank that spells a caption of the other rank's rows is dropped for those rows.
    2 x 4 pairs train exactly like 8 in one process, and differently from the diagonal-only loss."""
    torch.manual_seed(3)
    images, texts = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    caption_id = torch.tensor([0, 1, 2, 0, 2, 0, 3, 4])  # caption 0 on both ranks, caption 2 on both
    texts = texts[caption_id]  # one caption, one text: duplicates are the same input
    negatives = torch.randn(8, 2, 5, dtype=torch.float64)
    negative_id = torch.tensor([[5, 2], [6, 7], [0, 8], [9, 10], [11, 4], [12, 13], [14, 1], [15, 16]])
    negatives[0, 1], negatives[2, 0], negatives[4, 1], negatives[6, 0] = texts[2], texts[0], texts[7], texts[1]
    valid = torch.ones(8, 2, dtype=torch.bool)
    single = _duplicated_caption_steps(None, 1, images, texts, negatives, valid, caption_id, negative_id)
    for name in single:
        diagonal = _loss_and_grads(name, images, texts, None, 1, negatives, valid)
        assert not torch.allclose(single[name]["loss"], diagonal["loss"])
    inputs = (images, texts, negatives, valid, caption_id, negative_id)
    for got in _run_in_two_processes(_duplicated_caption_steps, *inputs):
        for name, expected in single.items():
            for key, value in expected.items():
                torch.testing.assert_close(got[name][key], value, msg=lambda m, k=key, n=name: f"{n} {k}: {m}")


def _siglip_at_its_default_bias(rank: int, world: int, img: torch.Tensor, txt: torch.Tensor) -> dict:
    loss_fn = SigLipLoss(batch_size=len(img) // world).double()  # data.batch_size is per process
    loss_fn.set_world_size(world)  # what DualEncoder.setup does with trainer.world_size
    share = len(img) // world
    local = loss_fn(img[rank * share : (rank + 1) * share], txt[rank * share : (rank + 1) * share]).detach().clone()
    dist.all_reduce(local)
    return {"bias": loss_fn.logit_bias.item(), "loss": (local / world).item()}


def test_siglip_default_bias_counts_every_process_texts() -> None:
    """With bias=null, 2 processes of batch 4 start at -ln 8, each image scored against all 8 gathered texts, and
    so start at the loss of one process with batch 8 (the old -ln(per-process batch) was off by ln 2)."""
    torch.manual_seed(4)
    img = torch.nn.functional.normalize(torch.randn(8, 4, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(8, 4, dtype=torch.float64), dim=-1)
    single = SigLipLoss(batch_size=8).double()
    single.set_world_size(1)
    expected = single(img, txt).item()
    for got in _run_in_two_processes(_siglip_at_its_default_bias, img, txt):
        assert got["bias"] == pytest.approx(-math.log(8))
        assert got["loss"] == pytest.approx(expected, rel=1e-12)
