"""The training loop's own cost per step: ``fit()`` with a near-zero-cost model and in-memory batches.

The real ``fit()`` runs (guard, step, schedule, stopping rules, loss window, TensorBoard, checkpoints,
validation) with its model replaced by a 1x1 convolution of 2 weights and its training loader by
batches held in memory; each part of the loop is timed (exclusive of the parts nested in it):

- ``sampler``: drawing the next batch (here: an in-memory list in a seeded random order)
- ``transfers``: ``Run.inputs`` (to the device, channels-last)
- ``model+optimizer``: forward, loss, backward, clipping, optimizer of the 2-weight model
- ``schedule``: the LR scheduler's step and the ``max_time`` check
- ``guards``: the non-finite guard (admit, arm, kept, log-point read)
- ``logging``: the loss window, its reads, ``train/loss``/``train/lr``/images/s to TensorBoard
- ``checkpoints``: the per-epoch ``last.pt`` (main-thread part; the write itself may be in a thread)
- ``other``: the rest of the epoch loop (bookkeeping, tqdm, epoch setup)

The loop's cost per step is everything but ``model+optimizer``; the target on a CPU is at most 1 ms.
Validation is timed apart and not counted. Example::

    python scripts/benchmark_loop.py --steps 300 --epochs 3 --json /tmp/loop.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from bench.common import compose
from torch import nn

from unet_train.engine import checkpointer, epoch, fit, guard, run, step, stopping

PARTS = ("sampler", "transfers", "model+optimizer", "schedule", "guards", "logging", "checkpoints", "other")


class TwoWeights(nn.Module):
    """A near-zero-cost segmentation model: one 1x1 convolution (a weight and a bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class InMemoryLoader:
    """``steps`` batches of ``batch_size`` held in memory, served in a seeded random order each epoch."""

    def __init__(self, steps: int, batch_size: int, size: int, dataset: Any) -> None:
        gen = torch.Generator().manual_seed(0)
        self.batches = [
            {
                "image": torch.rand(batch_size, 1, size, size, generator=gen),
                "mask": (torch.rand(batch_size, size, size, generator=gen) > 0.5).float(),
            }
            for _ in range(steps)
        ]
        self.batch_size, self.dataset, self.sampler = batch_size, dataset, None

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        for i in torch.randperm(len(self.batches)).tolist():
            yield self.batches[i]


class PartTimer:
    """Exclusive time per part (time in a nested part is not counted in its parent): wall time, and the
    training thread's CPU time (``time.thread_time``), which a shared machine's load does not inflate."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self.stack: list[list[Any]] = []  # [part, wall start, cpu start, wall in children, cpu in children]

    def enter(self, part: str) -> None:
        self.stack.append([part, time.perf_counter(), time.thread_time(), 0.0, 0.0])

    def leave(self) -> None:
        part, start, cpu_start, children, cpu_children = self.stack.pop()
        spent, cpu_spent = time.perf_counter() - start, time.thread_time() - cpu_start
        self.seconds[part] += spent - children
        self.cpu_seconds[part] += cpu_spent - cpu_children
        if self.stack:
            self.stack[-1][3] += spent
            self.stack[-1][4] += cpu_spent

    def wrap(self, owner: Any, attribute: str, part: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter(part)
            try:
                return original(*args, **kwargs)
            finally:
                self.leave()

        setattr(owner, attribute, timed)

    def wrap_iterator(self, loader: InMemoryLoader, part: str) -> None:
        original = loader.__class__.__iter__

        def timed_iter(self_: InMemoryLoader) -> Any:
            iterator = original(self_)
            while True:
                self.enter(part)
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.leave()
                yield batch

        loader.__class__.__iter__ = timed_iter  # type: ignore[method-assign]


def instrument(timer: PartTimer, args: argparse.Namespace) -> None:
    """Replace the model and the loader, and time the loop's parts (in this process only)."""
    build_run = run.build_run

    def tiny_run(cfg: Any) -> run.Run:
        built = build_run(cfg)
        model = TwoWeights().to(built.runtime.device)
        built.model = built.train_model = model
        built.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        built.scheduler = torch.optim.lr_scheduler.LambdaLR(built.optimizer, lambda s: 1.0)
        loader = InMemoryLoader(args.steps, args.batch, args.size, built.train_loader.dataset)
        timer.wrap_iterator(loader, "sampler")
        built.train_loader = loader
        return built

    fit.build_run = tiny_run
    timer.wrap(fit, "train_epoch", "other")
    timer.wrap(fit, "validate_epoch", "validation")
    timer.wrap(run.Run, "inputs", "transfers")
    timer.wrap(step.TrainStep, "__call__", "model+optimizer")
    timer.wrap(stopping.StopRules, "out_of_time", "schedule")
    timer.wrap(torch.optim.lr_scheduler.LambdaLR, "step", "schedule")
    for name in ("admit", "arm", "kept", "at_log_point"):
        timer.wrap(guard.NonFiniteGuard, name, "guards")
    for name in ("add", "read"):
        timer.wrap(epoch.LossWindow, name, "logging")
    timer.wrap(epoch, "log_train", "logging")
    timer.wrap(checkpointer.Checkpointer, "save_last", "checkpoints")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=16, help="image side")
    p.add_argument("--log-every", type=int, default=25, help="trainer.log_every")
    p.add_argument("--device", default="cpu")
    p.add_argument("--background-save", default="true")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: no spinning thread pool)")
    p.add_argument("--json", default="benchmark_loop.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    timer = PartTimer()
    instrument(timer, args)
    overrides = [
        "experiment=quickstart",
        f"trainer.device={args.device}",
        "trainer.precision=32",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.log_every={args.log_every}",
        f"trainer.val_every={args.epochs}",
        f"trainer.background_save={args.background_save}",
        "trainer.progress=never",
        "model.base_channels=2",
        "model.depth=1",
        "data.num_train=4",
        "data.num_val=1",
        "data.image_size=32",
        "data.patch_size=16",
        "loss=bce",
    ]
    cfg = compose(overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        metrics = fit.fit(cfg, run_dir)
    steps = int(metrics["steps"])
    per_step_ms = {part: 1e3 * timer.seconds.get(part, 0.0) / steps for part in PARTS}
    cpu_ms = {part: 1e3 * timer.cpu_seconds.get(part, 0.0) / steps for part in PARTS}
    loop_ms = sum(v for k, v in per_step_ms.items() if k != "model+optimizer")
    loop_cpu_ms = sum(v for k, v in cpu_ms.items() if k != "model+optimizer")
    result = {
        "device": args.device,
        "steps": steps,
        "per_step_ms": per_step_ms,
        "per_step_cpu_ms": cpu_ms,
        "loop_overhead_ms_per_step": loop_ms,
        "loop_overhead_cpu_ms_per_step": loop_cpu_ms,
        "validation_s": timer.seconds.get("validation", 0.0),
        "torch_threads": torch.get_num_threads(),
    }
    print(f"{'part':>16} {'wall ms/step':>12} {'cpu ms/step':>12}")
    for part, ms in per_step_ms.items():
        print(f"{part:>16} {ms:12.3f} {cpu_ms[part]:12.3f}")
    print(f"{'loop overhead':>16} {loop_ms:12.3f} {loop_cpu_ms:12.3f}  (all but model+optimizer; target <= 1 ms)")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {args.json}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
