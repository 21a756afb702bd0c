"""DistributedDataParallel under ``torchrun``: process group, devices, samplers and collectives.

``torchrun`` starts one process per device and tells each its place through environment
variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). The
training loop calls the methods of :class:`Distributed` unconditionally: in a single process
they do nothing and communicate nothing.

Conventions: ``data.batch_size`` is the batch of one process (the global batch is
``batch_size * world_size``); rank 0 alone writes the run folder; every collective below is
called by all ranks at the same point of the loop, or the ranks would wait on each other forever.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler
from torch.utils.tensorboard import SummaryWriter

from unet_train.data.sampling import EpochSampler
from unet_train.engine.evaluate import EvalResult
from unet_train.errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("single", "ddp")
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` (or any launcher that sets its variables)."""
    return all(name in os.environ for name in TORCHRUN_VARS)


def export_submitit_tasks() -> bool:
    """In a submitit job of several tasks, set torchrun's variables from it; True if it did.

    ``hydra/launcher=slurm hydra.launcher.tasks_per_node=N`` (or ``nodes=M``) starts the same job
    in every task of one SLURM allocation; submitit knows each task's global and local rank and
    the first node's host name, so they become ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/
    ``MASTER_ADDR``/``MASTER_PORT`` and the job proceeds as under torchrun (a ``MASTER_ADDR`` or
    ``MASTER_PORT`` already set, e.g. by the job script, is kept; rank variables short of torchrun's
    full set are replaced, with a warning). ``CUDA_VISIBLE_DEVICES``
    is left alone (a rank uses ``cuda:LOCAL_RANK``). Outside such a job, or with one task, nothing
    changes.
    """
    if launched_by_torchrun():
        return False
    try:
        import submitit
        from submitit.helpers import TorchDistributedEnvironment

        if submitit.JobEnvironment().num_tasks <= 1:
            return False
    except (ImportError, RuntimeError):  # no submitit, or not in a submitit job
        return False
    env = TorchDistributedEnvironment()  # reads a MASTER_PORT of one's own (job script), else one from the job id
    env.master_addr = os.environ.get("MASTER_ADDR", env.master_addr)
    stale = {name: os.environ[name] for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
             if name in os.environ}  # fmt: skip
    if stale:  # not torchrun's full set (checked above): submitit's ranks are this task's
        log.warning("submitit task %d: replacing %s", env.rank, ", ".join(f"{k}={v}" for k, v in stale.items()))
    env.export(set_cuda_visible_devices=False, overwrite=True)
    log.info("submitit task %d of %d: distributed over %s:%d", env.rank, env.world_size, env.master_addr,
             env.master_port)  # fmt: skip
    return True


def worker_hydra_overrides() -> list[str]:
    """Hydra overrides that keep ranks other than 0 from creating a run folder.

    Hydra names the run folder from the clock (``${now:...}``) in each process, so two ranks
    started a second apart would pick two folders. Rank 0's folder is the run's: the other
    ranks create nothing (no folder, no ``.hydra/``, no log file; they log warnings to the
    console) and learn rank 0's folder by broadcast (:meth:`Distributed.broadcast_object`).
    """
    if not launched_by_torchrun() or int(os.environ["RANK"]) == 0:
        return []
    rank = os.environ["RANK"]
    return [
        "hydra.run.dir=.",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
        "~hydra.job_logging.handlers.file",  # the run's file handler (configs/hydra/default.yaml): rank 0 only
        f"hydra.job_logging.formatters.simple.format='[rank {rank}] %(levelname)s %(name)s: %(message)s'",
    ]


@dataclass
class Distributed:
    """This process's place in the run: rank, world size, device and backend (None: single process)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "auto"  # what make_runtime() gets: trainer.device, or cuda:LOCAL_RANK / cpu under DDP
    backend: str | None = None  # gloo | nccl when a process group is up

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, TensorBoard, checkpoints and metrics."""
        return self.rank == 0

    # -- model and data -----------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, sync_batchnorm: bool) -> nn.Module:
        """Convert BatchNorm layers to SyncBatchNorm when asked (statistics over the global batch).

        Call before building the optimizer; the converted model keeps the same state-dict keys,
        so its checkpoints load into a plain model.
        """
        if not (sync_batchnorm and self.enabled):
            return model
        if self.backend != "nccl":
            raise ConfigError(
                "trainer.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm has no CPU kernel); "
                "set trainer.sync_batchnorm=false for DDP on CPUs."
            )
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)``: copies rank 0's weights to all ranks, averages gradients."""
        if not self.enabled:
            return model
        device_ids = [self.local_rank] if self.backend == "nccl" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def train_sampler(self, dataset_size: int, samples_per_epoch: int | None, seed: int) -> Sampler | None:
        """This rank's share of each epoch (None in a single process: the loader makes its own).

        An :class:`~unet_train.data.sampling.EpochSampler` over this rank's positions of the
        epoch's order: a new permutation each epoch (or ``samples_per_epoch`` draws with
        replacement), and one augmentation seed per item, all from ``(seed, epoch)``, so a resumed
        run repeats the epoch exactly, part-way too. Call ``set_loader_epoch`` each epoch.
        """
        if not self.enabled:
            return None
        return EpochSampler(dataset_size, seed, True, samples_per_epoch, rank=self.rank, world_size=self.world_size)

    def eval_sampler(self, dataset_size: int) -> Sampler | None:
        """Every ``world_size``-th item from ``rank``, without padding: each image is scored once."""
        return ShardSampler(dataset_size, self.rank, self.world_size) if self.enabled else None

    def summary_writer(self, log_dir: str | Path, purge_step: int | None = None) -> Any:
        """A TensorBoard writer on rank 0; on other ranks an object whose every method does nothing."""
        return SummaryWriter(str(log_dir), purge_step=purge_step) if self.is_main else NullWriter()

    # -- collectives (each is called by every rank at the same point) ------------------------
    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank: all ranks must skip a bad step together.

        Reads one value from the device (a sync point on GPU), as the single-process check does.
        """
        finite = torch.isfinite(loss.detach()).float()
        if self.enabled:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (a copy; gloo has no AVG, so SUM then divide)."""
        tensor = tensor.detach().clone()
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def agree(self, decision: bool) -> bool:
        """Rank 0's decision, on every rank (for stopping: clocks and floats may differ between ranks)."""
        if not self.enabled:
            return decision
        flag = torch.tensor([int(decision)], device=self._collective_device())
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def agree_values(self, values: Sequence[float]) -> tuple[float, ...]:
        """Rank 0's ``values`` on every rank, exactly (float64): one broadcast for several numbers."""
        if not self.enabled:
            return tuple(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self._collective_device())
        dist.broadcast(tensor, src=0)
        return tuple(tensor.tolist())

    def max(self, value: int) -> int:
        """The largest ``value`` over ranks (a stop signal's number: one that reached any rank stops them all)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (any picklable value), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (any picklable value), on every rank."""
        if not self.enabled:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0, device=self._collective_device())
        return holder[0]

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        DDP broadcasts them at the start of each training forward, but each rank then updates
        them with its own batch; before validation, all ranks take rank 0's, which the checkpoint holds.
        """
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def gather_eval(self, result: EvalResult) -> dict[str, float]:
        """Metrics over the whole split from each rank's :func:`~unet_train.engine.evaluate.evaluate` of its shard.

        Per-image rows are gathered and put back in the split's order (rank ``r`` scored items
        ``r, r + world_size, ...``), so each mean is computed exactly as one process computes it.
        ``loss`` is a mean over batches, which differ between ranks: its ranks' values are
        averaged weighted by their images (equal to one process's value when every batch is full).
        """
        if not self.enabled:
            return result.metrics
        shards: list[Any] = [None] * self.world_size
        dist.all_gather_object(shards, (result.per_image, result.metrics))
        rows = _interleave([rows for rows, _ in shards])
        metrics: dict[str, float] = {}
        if rows:
            keys = [key for key in rows[0] if key != "name"]
            metrics = {key: sum(row[key] for row in rows) / len(rows) for key in keys}
        # Anything else evaluate() reports (the loss): weighted by each rank's number of images.
        weighted = [(len(rows_r), m) for rows_r, m in shards if m]
        total = sum(n for n, _ in weighted) or 1
        for key in {k for _, m in weighted for k in m} - set(metrics):
            metrics[key] = sum(n * m[key] for n, m in weighted if key in m) / total
        return metrics

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(device_ids=[self.local_rank] if self.backend == "nccl" else None)

    def _collective_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo moves CPU tensors.
        return torch.device(f"cuda:{self.local_rank}") if self.backend == "nccl" else torch.device("cpu")


def setup(strategy: str, device: str = "auto", timeout_s: float = 1800.0) -> Distributed:
    """This process's :class:`Distributed`; under ``trainer.strategy=ddp`` and ``torchrun``, join the process group.

    The backend follows the device: NCCL and ``cuda:LOCAL_RANK`` when CUDA is used
    (``trainer.device=auto`` with a GPU, or ``cuda``), gloo and the CPU otherwise. Calling it
    again returns the same answer without a second initialisation.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"trainer.strategy={strategy!r} is not known; choose single or ddp.")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy == "single":
        if world_size > 1:
            raise ConfigError(
                f"Started by torchrun with WORLD_SIZE={world_size} but trainer.strategy=single: every process would "
                "train alone. Add trainer=ddp (or trainer.strategy=ddp)."
            )
        return Distributed(device=device)
    if not launched_by_torchrun():
        _warn_outside_torchrun()
        return Distributed(device=device)

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        visible = torch.cuda.device_count()
        if visible == 0:
            raise ConfigError(f"trainer.device={device} but CUDA is not available here; use trainer.device=cpu.")
        if local_rank >= visible:
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but only {visible} CUDA device(s) are visible on this node; "
                f"start at most --nproc_per_node={visible} processes per node."
            )
        if ":" in device and device != f"cuda:{local_rank}":
            log.warning("trainer.device=%s ignored under DDP: rank %d uses cuda:%d", device, rank, local_rank)
        torch.cuda.set_device(local_rank)
        ctx = Distributed(rank, local_rank, world_size, f"cuda:{local_rank}", "nccl")
    elif device in ("auto", "cpu"):
        ctx = Distributed(rank, local_rank, world_size, "cpu", "gloo")
    else:
        raise ConfigError(f"trainer.device={device!r} is not supported with trainer=ddp; use auto, cpu or cuda.")

    if not dist.is_initialized():
        dist.init_process_group(
            backend=ctx.backend,
            timeout=timedelta(seconds=timeout_s),
            device_id=torch.device(ctx.device) if use_cuda else None,
        )
        if rank != 0:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports progress; others only problems
        log.info("DDP: %d processes, backend %s, rank 0 on %s", world_size, ctx.backend, ctx.device)
    return ctx


@functools.cache
def _warn_outside_torchrun() -> None:  # once per process, though setup() is called more than once
    log.warning(
        "trainer.strategy=ddp outside torchrun: training in one process. Launch with "
        "torchrun --nproc_per_node=N -m unet_train.train trainer=ddp ..."
    )


def cleanup() -> None:
    """Leave the process group (if one is up)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Items ``rank, rank + world_size, ...`` in order, without padding (shards may differ by one item)."""

    def __init__(self, dataset_size: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, dataset_size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class NullWriter:
    """Stands in for ``SummaryWriter`` on ranks other than 0: every method call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _interleave(shards: list[list[Any]]) -> list[Any]:
    """Undo :class:`ShardSampler`: item ``i`` of the split is item ``i // w`` of shard ``i % w``."""
    total, world = sum(len(s) for s in shards), len(shards)
    if any(len(s) != len(range(r, total, world)) for r, s in enumerate(shards)):
        return [item for shard in shards for item in shard]  # not a ShardSampler split: order is moot
    return [shards[i % world][i // world] for i in range(total)]
