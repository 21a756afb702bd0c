"""``data.num_workers: auto``: loader processes chosen from what a batch costs to make against what a step costs.

A loader worker is a process that makes batches while the model trains. It pays off when making a batch
takes a noticeable share of a step, and when a CPU is free for it. On a small CPU machine the training step
already uses every core (one torch thread per core), so a worker takes its time from the step: making the
batch in the main process costs the same CPU, without the processes, and keeps the step's threads alone on
their cores. A GPU step is short and leaves the CPUs to the loader. So:

- on a GPU (or MPS): every CPU but one, at most :data:`MAX_WORKERS`;
- on a CPU, from two measurements (a batch made in the main process, a training step): the loading's share
  of a step; none where it is at most :data:`INLINE_SHARE`, even with CPUs that look spare (a CPU idle when
  the run starts may not stay so: on a machine shared with other work the workers' processes took CPU from
  the step, issue 28's busy matrix cells), else enough workers to keep up (``ceil(share * MARGIN)``, at
  least one), on the spare CPUs where there are some.

The data order and the augmentations do not depend on the number of workers (each item draws from its own
seed, data/sampling.py), so the choice changes the speed of a run, never its result.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from unet_train.cpus import usable_cpus

log = logging.getLogger(__name__)

INLINE_SHARE = 0.05  # loading at most 5 % of a step: made in the main process
MARGIN = 1.25  # workers for 125 % of the loading's measured pace: a slower batch now and then does not stall
MAX_WORKERS = 8
MEASURE_S = 2.0  # at most this long making items to time a batch


@dataclass(frozen=True)
class WorkerChoice:
    workers: int
    reason: str


def choose_workers(load_s: float, step_s: float, cpus: int, threads: int) -> WorkerChoice:
    """Loader workers for batches that take ``load_s`` seconds of one CPU to make, steps of ``step_s`` seconds on
    ``threads`` torch threads, ``cpus`` CPUs; the reason in words for the log."""
    share = load_s / step_s if step_s > 0 else math.inf
    spare = cpus - threads
    facts = (
        f"a batch takes {load_s:.3g} s to make, {share:.0%} of a {step_s:.3g} s step; "
        f"{cpus} CPU{'s' * (cpus != 1)}, {threads} torch thread{'s' * (threads != 1)}"
    )
    if share <= INLINE_SHARE:
        return WorkerChoice(0, f"{facts}: made in the main process, which costs less than a worker's process")
    needed = max(1, math.ceil(share * MARGIN))
    workers = min(needed, spare if spare >= 1 else cpus, MAX_WORKERS)
    return WorkerChoice(workers, f"{facts}: {workers} worker{'s' * (workers != 1)} to keep up")


def seconds_per_batch(make_item: Callable[[int], object], batch_size: int, budget_s: float = MEASURE_S) -> float:
    """Seconds one process takes to make a batch of ``batch_size`` items: ``make_item(i)`` for items 1, 2, ... after
    an untimed item 0 (it opens files), up to two batches' worth or ``budget_s`` seconds."""
    make_item(0)
    made, start = 0, time.perf_counter()
    while made < 2 * batch_size and (made == 0 or time.perf_counter() - start < budget_s):
        made += 1
        make_item(made)
    return (time.perf_counter() - start) / made * batch_size


def auto_workers(device: torch.device, world_size: int, measure: Callable[[], tuple[float, float]]) -> WorkerChoice:
    """``data.num_workers=auto`` for a training run on ``device``; ``measure()`` gives (seconds to make a batch,
    seconds per step) and is called only on a single-process CPU run."""
    cpus = usable_cpus()
    if device.type != "cpu":
        workers = max(0, min(MAX_WORKERS, cpus // world_size - 1))
        choice = WorkerChoice(workers, f"a {device.type} step: {workers} of the {cpus} CPUs make batches")
    elif world_size > 1:  # DDP on CPU: the ranks share the CPUs and each rank's threads take its share
        choice = WorkerChoice(0, f"{world_size} CPU processes share {cpus} CPUs: batches made in each process")
    else:
        load_s, step_s = measure()
        choice = choose_workers(load_s, step_s, cpus, torch.get_num_threads())
    log.info("data.num_workers=auto: %d (%s)", choice.workers, choice.reason)
    return choice


def measure_loading(
    cfg: DictConfig,
    data: Any,
    model: nn.Module,
    criterion: nn.Module,
    runtime: Any,
    step_s: float | None,
    sample_weight: Callable[[Any], Any] | None = None,
) -> tuple[float, float]:
    """(seconds to make a training batch in this process, seconds per training step): the batch from the run's
    own training split with its augmentation and the loss's per-pixel weight maps (``sample_weight``, which the
    loader makes with each item: loss=weighted_bce), the step as the run takes it (``step_s`` where the layout and
    precision measurement already timed it, else one step of a copy of the model timed after a warm-up one)."""
    from torch.utils.data import default_collate

    from unet_train.engine import autotune
    from unet_train.engine.trial import trial_steps

    dataset, batch_size = data.dataset("train", sample_weight=sample_weight), int(cfg.data.batch_size)
    if len(dataset) == 0:  # nothing to load (the run refuses an empty split in its own words)
        return 0.0, 1.0
    with autotune.preserved_rng():  # making items must not move the run's random streams
        load_s = seconds_per_batch(lambda i: dataset[i % len(dataset)], batch_size)
        if step_s is None:
            make_step, _ = trial_steps(cfg, model, criterion, default_collate([dataset[0]] * batch_size))
            step = make_step(runtime)
            step()
            start = time.perf_counter()
            step()
            step_s = time.perf_counter() - start
    return load_s, step_s
