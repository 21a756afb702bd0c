"""DistributedDataParallel on CPU with gloo: samplers, collectives, gradients, and torchrun runs end to end."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributed import TCPStore
from torch.utils.tensorboard import SummaryWriter

from unet_train.build import build_data, build_loss, build_model, build_scheduler
from unet_train.config import config_dir
from unet_train.data.sampling import EpochSampler, epoch_seed, set_loader_epoch
from unet_train.engine import distributed
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.distributed import Distributed, ShardSampler
from unet_train.engine.evaluate import evaluate
from unet_train.engine.runtime import make_runtime
from unet_train.errors import ConfigError
from unet_train.predict import load_model

from ..conftest import TINY, compose_config, progress
from ..data.volume_folder import make_volume_folder

BIN = Path(sys.executable).parent
# TINY with DDP on CPU processes instead of the smoke trainer.
DDP_TINY = [o for o in TINY if not o.startswith("trainer=")] + ["trainer=ddp", "trainer.device=cpu"]
DDP_TINY += ["trainer.progress=never", "trainer.num_image_panels=1", "data.val_batch_size=1"]
# Scores compared across processes are computed alike: one image per batch, one thread (torchrun's default),
# so no pixel's logit can round to the other side of the threshold.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
# Gradient comparison: BCE (a mean over pixels, so rank means average to the global mean), 3 val images.
GRAD_CASE = [*TINY, "loss=bce", "data.num_val=3", "data.val_batch_size=1", "trainer.channels_last=false"]


# -- samplers and helpers, in one process ---------------------------------------------------------
def test_train_shards_split_one_epoch_order_and_its_item_seeds_between_ranks():
    one = EpochSampler(7, seed=3)  # what a single process draws
    shards = [Distributed(r, r, 2, "cpu", "gloo").train_sampler(7, None, seed=3) for r in range(2)]
    epochs = []
    for epoch in (0, 1):
        one.set_epoch(epoch)
        for sampler in shards:
            set_loader_epoch(SimpleNamespace(sampler=sampler, batch_size=2), epoch)
        generator = torch.Generator().manual_seed(epoch_seed(3, epoch))
        order = torch.randperm(7, generator=generator).tolist()
        seeds = torch.randint(2**62, (8,), generator=generator).tolist()
        assert [index for index, _ in one] == order  # the same order as one process
        padded = list(zip(order + order[:1], seeds))  # 7 items padded to 8 by wrapping around
        epochs.append([list(s) for s in shards])
        assert epochs[-1] == [padded[0::2], padded[1::2]]
        assert padded[7][0] == padded[0][0] and padded[7][1] != padded[0][1]  # the repeat augments differently
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    # Part-way through an epoch: each rank leaves out its first batches.
    for sampler in shards:
        set_loader_epoch(SimpleNamespace(sampler=sampler, batch_size=2), 1, skip_batches=1)
    assert [list(s) for s in shards] == [epochs[1][0][2:], epochs[1][1][2:]] and len(shards[0]) == 2


def test_random_draws_are_shared_out_between_ranks_from_a_per_epoch_seed():
    ranks = [Distributed(r, r, 2, "cpu", "gloo").train_sampler(5, 7, seed=1) for r in range(2)]
    assert [len(s) for s in ranks] == [4, 4]  # ceil(7 / 2) each
    generator = torch.Generator().manual_seed(epoch_seed(1, 0))
    draws = torch.randint(5, (8,), generator=generator).tolist()
    seeds = torch.randint(2**62, (8,), generator=generator).tolist()
    assert list(ranks[0]) == list(zip(draws[0::2], seeds[0::2]))
    assert list(ranks[1]) == list(zip(draws[1::2], seeds[1::2]))


def test_shards_have_no_padding_and_interleave_back_in_order():
    shards = [list(ShardSampler(5, r, 2)) for r in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]
    assert distributed._interleave(shards) == [0, 1, 2, 3, 4]
    assert Distributed().eval_sampler(5) is None and Distributed().train_sampler(5, None, 0) is None


def test_single_process_is_a_no_op(tmp_path):
    one = Distributed()
    model = torch.nn.Conv2d(1, 1, 1)
    assert one.wrap(model) is model and one.prepare_model(model, sync_batchnorm=True) is model
    assert one.agree(True) and not one.agree(False)
    assert one.all_finite(torch.tensor(1.0)) and not one.all_finite(torch.tensor(float("nan")))
    assert one.mean(torch.tensor(3.0)).item() == 3.0
    assert one.broadcast_object("x") == "x"
    writer = one.summary_writer(tmp_path)
    assert isinstance(writer, SummaryWriter)
    writer.close()
    assert isinstance(Distributed(rank=1).summary_writer("unused"), distributed.NullWriter)


def test_setup_refuses_mismatched_launches(monkeypatch, caplog):
    for name in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="trainer.strategy='horovod' is not known; choose single or ddp"):
        distributed.setup("horovod")
    with caplog.at_level(logging.WARNING):
        ctx = distributed.setup("ddp", "cpu")
    assert not ctx.enabled and ctx.device == "cpu" and "outside torchrun" in caplog.text
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 but trainer.strategy=single.*Add trainer=ddp"):
        distributed.setup("single")
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs CUDA"):
        Distributed(0, 0, 2, "cpu", "gloo").prepare_model(torch.nn.BatchNorm2d(2), sync_batchnorm=True)


def test_only_rank_zero_gets_a_run_folder(monkeypatch):
    for name, value in {"LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RANK", "0")
    assert distributed.worker_hydra_overrides() == []
    monkeypatch.setenv("RANK", "1")
    overrides = distributed.worker_hydra_overrides()
    assert {"hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"} <= set(overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=[*TINY, *overrides], return_hydra_config=True)
    assert cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None
    assert "file" not in cfg.hydra.job_logging.handlers  # no train.log of its own
    assert cfg.hydra.job_logging.formatters.simple.format == "[rank 1] %(levelname)s %(name)s: %(message)s"


# -- two processes in this test: gradients and validation against one process ---------------------
def _as_torchrun(rank: int, world: int, port: int) -> None:
    # As torchrun sets them; the store is the test process's (as torchrun's agent hosts it), so it
    # outlives both ranks: a rank-0 store that exits first can abort rank 1 during its shutdown.
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",
    )  # fmt: skip
    torch.set_num_threads(1)


def _exit_cleanly() -> None:
    # Every check passed. Leave without the interpreter's teardown: in about one run of ten a
    # C++ thread of the c10d/gloo stack was still joinable when its destructor ran at exit ("terminate
    # called without an active exception", SIGABRT), after the process group had been destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    _as_torchrun(rank, world, port)
    ctx = distributed.setup("ddp", "cpu")
    try:
        assert (ctx.enabled, ctx.backend, ctx.device, ctx.world_size) == (True, "gloo", "cpu", 2)
        reference = torch.load(Path(folder) / "reference.pt", weights_only=True)
        cfg = compose_config(GRAD_CASE)
        model = build_model(cfg.model)
        model.load_state_dict(reference["init"])
        model.eval()  # BatchNorm on running statistics: each sample's gradient does not depend on the batch
        ddp = ctx.wrap(model)

        sampler = ctx.train_sampler(4, None, seed=0)
        sampler.set_epoch(0)
        mine = [index for index, _ in sampler]  # this rank's 2 of the global batch of 4
        loss = build_loss(cfg)(ddp(reference["images"][mine]), reference["masks"][mine])
        loss.backward()
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.grad, reference["grads"][name], atol=1e-5, rtol=0, msg=name)

        data = build_data(cfg.data)
        loader = data.dataloader("val", sampler=ctx.eval_sampler(3))
        result = evaluate(model, loader, make_runtime("cpu", channels_last=False), 2, loss_fn=build_loss(cfg))
        assert len(result.per_image) == (2 if rank == 0 else 1)
        merged = ctx.gather_eval(result)
        assert merged.keys() == reference["val"].keys()
        for key, value in reference["val"].items():
            assert merged[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key

        assert ctx.agree(rank == 0) is True  # rank 0 decides
        assert ctx.all_finite(torch.tensor(float("nan") if rank == 1 else 0.5)) is False
        assert ctx.mean(torch.tensor(float(rank))).item() == 0.5
        assert ctx.broadcast_object(f"from {rank}") == "from 0"
        ctx.barrier()
    finally:
        distributed.cleanup()
    _exit_cleanly()


@pytest.mark.slow
def test_two_process_gradients_and_validation_equal_one_process(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same arithmetic for the validation scores
    try:
        _compare_with_two_processes(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _compare_with_two_processes(tmp_path: Path) -> None:
    cfg = compose_config(GRAD_CASE)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    data = build_data(cfg.data)
    items = [data.dataset("train", augment=False)[i] for i in range(4)]
    images = torch.stack([item["image"] for item in items])
    masks = torch.stack([item["mask"] for item in items])
    build_loss(cfg)(model(images), masks).backward()
    val = evaluate(model, data.dataloader("val"), make_runtime("cpu", channels_last=False), 2, build_loss(cfg))
    assert len(val.per_image) == 3
    reference = {
        "init": model.state_dict(),
        "images": images,
        "masks": masks,
        "grads": {name: p.grad.clone() for name, p in model.named_parameters()},
        "val": val.metrics,
    }
    torch.save(reference, tmp_path / "reference.pt")
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # port 0: any free port
    mp.spawn(_worker, args=(2, store.port, str(tmp_path)), nprocs=2, join=True)


# -- a time-budgeted run on two processes: one schedule for both replicas ----------------------------
BUDGETED_DDP = [
    *DDP_TINY,
    "sched=cosine",
    "optim.lr=1e-2",
    "trainer.max_epochs=1000000",
    "trainer.max_time=5",
    "data.num_workers=0",
    "trainer.channels_last=false",
    "data.batch_size=2",
    "data.samples_per_epoch=32",
]


def _replica_worker(rank: int, world: int, port: int, folder: str, overrides: list[str]) -> None:
    """Train ``overrides`` into ``folder/run``; write this rank's final parameters, learning rate and steps to
    ``folder/rank<r>.pt``."""
    from unet_train.engine import fit as fit_module

    _as_torchrun(rank, world, port)
    finish_run = fit_module.finish_run

    def keep_replica(run: Any, *args: Any, **kwargs: Any) -> Any:
        params = {name: p.detach().clone() for name, p in run.model.named_parameters()}
        lr = run.optimizer.param_groups[0]["lr"]
        torch.save({"params": params, "lr": lr, "steps": run.state.step}, Path(folder) / f"rank{rank}.pt")
        return finish_run(run, *args, **kwargs)

    fit_module.finish_run = keep_replica
    try:
        fit_module.fit(compose_config(overrides), Path(folder) / "run")
    finally:
        distributed.cleanup()
    _exit_cleanly()


def replica_difference(folder: Path) -> tuple[float, list[float], list[int]]:
    """max |w0 - w1| over the parameters of the two ranks' final replicas, their learning rates and steps."""
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]
    diff = max((ranks[0]["params"][k] - ranks[1]["params"][k]).abs().max().item() for k in ranks[0]["params"])
    return diff, [r["lr"] for r in ranks], [r["steps"] for r in ranks]


@pytest.mark.slow
def test_a_time_budgeted_ddp_run_keeps_its_replicas_identical(tmp_path):
    # Each rank's own clock gave each its own learning rate (issue 24: max |w0 - w1| = 4.96e-05 after 91
    # steps); the schedule now follows rank 0's progress, agreed with the stop at every step.
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.spawn(_replica_worker, args=(2, store.port, str(tmp_path), BUDGETED_DDP), nprocs=2, join=True)
    diff, lrs, steps = replica_difference(tmp_path)
    assert steps[0] == steps[1] >= 4 and lrs[0] < 5e-3  # the same stop; the schedule ran down the budget
    assert lrs[0] == lrs[1] and diff == 0.0, (diff, lrs, steps)


def ddp_3d_overrides(root: Path) -> list[str]:
    """A tiny 3D run on two CPU processes: 8 crops of 8 x 16 x 16 an epoch, 2 per rank and step, 2 epochs."""
    return [
        "data=volumes",
        f"data.root={root}",
        "data.patch_size=[8,16,16]",
        "data.batch_size=2",
        "data.samples_per_epoch=8",
        "data.num_workers=0",
        "model.base_channels=4",
        "model.depth=2",
        "trainer=ddp",
        "trainer.device=cpu",
        "trainer.channels_last=false",
        "trainer.max_epochs=2",
        "trainer.progress=never",
        "trainer.num_image_panels=1",
    ]


@pytest.mark.slow
def test_a_3d_ddp_run_keeps_its_replicas_identical_and_writes_a_3d_checkpoint(tmp_path):
    # 4 volumes: 3 train, 1 validates, so rank 1's validation shard is empty.
    root = make_volume_folder(tmp_path / "volumes", count=4)
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.spawn(_replica_worker, args=(2, store.port, str(tmp_path), ddp_3d_overrides(root)), nprocs=2, join=True)
    diff, lrs, steps = replica_difference(tmp_path)
    assert steps == [4, 4] and lrs[0] == lrs[1] and diff == 0.0, (diff, lrs, steps)  # 8 crops / (2 x 2) x 2
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["steps"] == 4 and 0 <= metrics["val/dice"] <= 1
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["config"]["model"]["spatial_dims"] == 3 and ckpt["plan"]["world_size"] == 2
    replica = torch.load(tmp_path / "rank1.pt", weights_only=True)["params"]
    for name, value in replica.items():  # the checkpoint holds the replicas' weights, without DDP's "module."
        assert torch.equal(ckpt["model"][name], value), name
    model, stored = load_model(run / "checkpoints" / "last.pt")  # as unet-predict loads it
    assert isinstance(model.head, torch.nn.Conv3d) and stored.data.patch_size == [8, 16, 16]
    with torch.no_grad():
        assert model(torch.rand(1, 1, 8, 16, 16)).shape[2:] == (8, 16, 16)


# -- torchrun, as a user runs it --------------------------------------------------------------------
def torchrun(nproc: int, args: list[str], cwd: Path, background: bool = False, env: dict | None = None) -> Any:
    """Run ``torchrun`` to completion (checked), or start it and return its Popen."""
    command = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", *args]
    if background:  # output to a file: a full pipe would block the workers
        with (cwd / "torchrun.log").open("w") as log:
            return subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def only_run_dir(cwd: Path) -> Path:
    assert {p.name for p in cwd.iterdir()} == {"outputs"}  # nothing a rank wrote beside the run folder
    runs = [p for p in (cwd / "outputs").glob("*/*")]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run_folder_that_evaluates_in_one_process(tmp_path):
    work = tmp_path / "train"
    work.mkdir()
    torchrun(2, ["-m", "unet_train.train", *DDP_TINY, "data.num_val=3"], cwd=work)
    run = only_run_dir(work)

    assert {p.name for p in run.iterdir()} == {
        ".hydra", "train.log", "resolved_config.yaml", "checkpoints", "tensorboard", "metrics.json", ".lock"
    }  # fmt: skip
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    log = (run / "train.log").read_text()
    assert "DDP: 2 processes, backend gloo" in log and log.count("epoch 2  train/loss") == 1  # rank 0 only
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len({path.name.split(".")[4] for path in events}) == 1  # written by one process (pid in the name)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 2 and len(acc.Scalars("val/dice")) == 2

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["steps"] == 2  # 8 images / (2 ranks x batch 4): one step per epoch
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert not any(key.startswith("module.") for key in ckpt["model"])
    assert ckpt["config"]["trainer"]["strategy"] == "ddp"

    # Validation was split 2 + 1 over the ranks; one process scoring best.pt finds the same Dice.
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    subprocess.run(
        # in the training's layout: unet-eval's channels_last=auto measures one, and the layout changes the sums
        [str(BIN / "unet-eval"), f"ckpt={run / 'checkpoints' / 'best.pt'}", "save_predictions=false",
         "trainer.channels_last=true"],
        cwd=evaluation, check=True, capture_output=True, timeout=300, env=ONE_THREAD,
    )  # fmt: skip
    scored = json.loads(next((evaluation / "outputs" / "eval").glob("*/*/metrics.json")).read_text())
    assert scored["details"]["images"] == 3
    assert scored["val/dice"] == pytest.approx(metrics["best/val/dice"], abs=1e-6)


@pytest.mark.slow
def test_killed_ddp_run_resumes_with_another_number_of_processes(tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    # samples_per_epoch=8: the distributed sampler that draws with replacement (4 items per rank).
    args = ["-m", "unet_train.train", *DDP_TINY, "trainer.max_epochs=500", "data.samples_per_epoch=8"]
    proc = torchrun(2, args, cwd=first, background=True)
    try:
        deadline = time.monotonic() + 240
        while not list(first.glob("outputs/*/*/checkpoints/last.pt")):
            assert proc.poll() is None, (first / "torchrun.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
    finally:
        # As scancel or Ctrl-C do: torchrun passes SIGTERM on to its workers (in sessions of their own),
        # which die on the spot, mid-epoch, and waits for them.
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    (first / "torchrun.log").unlink()
    run = only_run_dir(first)
    assert not (run / "metrics.json").exists()
    done = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert 1 <= done["epoch"] < 500 and done["step"] == done["epoch"]  # one step per epoch on 2 ranks

    second = tmp_path / "second"
    second.mkdir()
    target = done["epoch"] + 2
    resume = [str(BIN / "unet-train"), f"ckpt={run / 'checkpoints' / 'last.pt'}", f"trainer.max_epochs={target}"]
    torchrun(1, ["--no-python", *resume], cwd=second)
    assert not list(second.iterdir())  # the resumed run continues in its own folder
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == target
    assert metrics["steps"] == done["step"] + 2 * 2  # one process: 8 images / batch 4 = 2 steps per epoch
    log = (run / "train.log").read_text()
    assert f"Resumed from {run / 'checkpoints' / 'last.pt'} after epoch {done['epoch']}" in log
    # The schedule keeps the 2-process plan (1 step per epoch x target epochs), not 2 steps per epoch.
    assert (
        "Resumed with 1 process(es) instead of 2: an epoch now takes 2 optimizer steps instead of 1 (the global "
        f"batch changed with the number of processes); the learning-rate schedule keeps its plan of {target} steps "
        f"(1 per epoch x {target} epochs)." in log
    )
    assert f"This run ends at step {done['step'] + 4}, after the schedule's {target}" in log
    final = load_checkpoint(run / "checkpoints" / "last.pt")
    cfg = compose_config(DDP_TINY)
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    kept = build_scheduler(cfg, probe, total_steps=target)
    for _ in range(done["step"] + 4):
        probe.step()
        kept.step()
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(kept.get_last_lr()[0], rel=1e-9)
    assert final["scheduler"]["last_epoch"] == done["step"] + 4
    assert final["plan"] == {"world_size": 1, "steps_per_epoch": 2, "schedule_steps_per_epoch": 1}


# Deterministic CPU runs with dropout (so each rank's RNG matters) and the test-only loss that sends
# SIGTERM to rank 0 alone: 16 images / (2 ranks x batch 4) = 2 steps per epoch, 3 epochs.
EXACT_DDP = [
    *DDP_TINY,
    "trainer.deterministic=true",
    "trainer.max_epochs=3",
    "data.num_train=16",
    "model.dropout=0.2",
    "loss=bce",
    "loss._target_=tests.engine.faulty_loss.FaultyLoss",
]
TRUST_FAULTY = "trust_config=[tests.engine.faulty_loss]"
WITH_REPO = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # the test-only loss


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow
def test_ddp_run_stopped_by_sigterm_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    for folder in (reference, stopped):
        folder.mkdir()
    runs = [
        torchrun(2, ["-m", "unet_train.train", *EXACT_DDP], cwd=reference, background=True, env=WITH_REPO),
        torchrun(2, ["-m", "unet_train.train", *EXACT_DDP, "+loss.signal_calls=[3]"], stopped, True, WITH_REPO),
    ]
    codes = [proc.wait(timeout=300) for proc in runs]
    assert codes[0] == 0, (reference / "torchrun.log").read_text()
    assert codes[1] != 0, (stopped / "torchrun.log").read_text()
    (stopped / "torchrun.log").unlink()  # torchrun reports the stopped workers as failed (exit 143)
    run = only_run_dir(stopped)
    last = run / "checkpoints" / "last.pt"
    # SIGTERM reached rank 0 during step 3 (epoch 2, batch 1); both ranks stopped after that step.
    saved = load_checkpoint(last, trust=["tests.engine.faulty_loss"])
    assert (saved["state"]["epoch"], saved["state"]["step"], saved["state"]["batch"]) == (1, 3, 1)
    assert len(saved["rng_per_rank"]) == 2 and saved["plan"]["world_size"] == 2
    assert f"Stopped by SIGTERM after step 3; saved {last}" in (run / "train.log").read_text()

    resume = [str(BIN / "unet-train"), f"ckpt={last}", "+loss.signal_calls=[]", TRUST_FAULTY]
    torchrun(2, ["--no-python", *resume], cwd=stopped, env=WITH_REPO)
    assert "after epoch 1 (step 3, batch 1 of the next epoch)" in (run / "train.log").read_text()
    ref_run = next((reference / "outputs").glob("*/*"))
    resumed = load_checkpoint(last, trust=True)
    uninterrupted = load_checkpoint(ref_run / "checkpoints" / "last.pt", trust=True)
    assert progress(resumed["state"]) == progress(uninterrupted["state"])
    difference = max_abs_diff(resumed["model"], uninterrupted["model"])
    print(f"DDP resume: max abs weight difference {difference:.3g}")
    assert difference <= 1e-6


def _submitit_task(monkeypatch, rank: int, tasks: int = 2) -> None:
    """The environment submitit's local executor gives task ``rank`` of a job of ``tasks`` tasks."""
    pytest.importorskip("submitit")
    for name in (*distributed.TORCHRUN_VARS, "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(name, "x")  # recorded, so what the export sets is undone after the test
        monkeypatch.delenv(name)
    for name, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242", "SUBMITIT_LOCAL_NTASKS": tasks,
                        "SUBMITIT_LOCAL_GLOBALID": rank, "SUBMITIT_LOCAL_LOCALID": rank}.items():  # fmt: skip
        monkeypatch.setenv(name, str(value))


def test_submitit_tasks_keep_a_master_port_and_address_of_ones_own(monkeypatch):
    # MASTER_PORT exported in the job script (to keep two jobs on one node apart) is the port of every task;
    # submitit's export refused it ("Cannot export environment variables as MASTER_PORT is already set").
    _submitit_task(monkeypatch, rank=1)
    monkeypatch.setenv("MASTER_PORT", "29877")
    monkeypatch.setenv("MASTER_ADDR", "node7")
    assert distributed.export_submitit_tasks()
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("node7", "29877")
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("1", "1", "2")
    assert distributed.launched_by_torchrun()


def test_submitit_tasks_replace_a_partial_set_of_rank_variables(monkeypatch):
    # A stray RANK (from a parent job's environment) is not torchrun's full set: submitit's ranks win.
    _submitit_task(monkeypatch, rank=0)
    monkeypatch.setenv("RANK", "3")
    assert distributed.export_submitit_tasks()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("0", "2")


def test_a_one_task_submitit_job_is_left_alone(monkeypatch):
    _submitit_task(monkeypatch, rank=0, tasks=1)
    monkeypatch.setenv("RANK", "3")
    assert not distributed.export_submitit_tasks()
    assert os.environ["RANK"] == "3" and "WORLD_SIZE" not in os.environ


def test_the_submitit_tests_leave_no_rank_variables_behind():
    assert not distributed.launched_by_torchrun()
