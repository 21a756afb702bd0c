"""Loader workers against torch threads on this machine: seconds per training step of the real run with
``data.num_workers`` = each setting given, ``auto`` among them (issue 29).

Each setting builds the run as ``unet-train`` does (``build_run``: the layout and precision measured or taken
from the cache, the workers chosen where ``auto``) and times ``--steps`` steps of the training loop, loader
included, after ``--warmup`` steps that start the workers; the settings are interleaved over ``--rounds`` rounds,
so a slow phase of a shared machine meets all of them. Prints one line per round and a table of medians
(min-max) with each setting's ratio to the fastest, and what ``auto`` chose. Example::

    python scripts/benchmark_workers.py --root /tmp/bench-data/isbi --threads 2 --settings 0 1 2 auto
    python scripts/benchmark_workers.py --root /tmp/bench-data/isbi --set data=isbi ...   # other data
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import torch


def seconds_per_step(root: Path, workers: str, steps: int, warmup: int, sets: list[str]) -> tuple[float, int]:
    """Mean seconds per step over ``steps`` steps after ``warmup`` ones; and the workers the run used."""
    from hydra import compose, initialize_config_dir

    from unet_train.config import config_dir
    from unet_train.engine.guard import NonFiniteGuard
    from unet_train.engine.run import build_run
    from unet_train.engine.step import TrainStep

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=[
            "data=folder", f"data.root={root}", "trainer=cpu", f"data.num_workers={workers}",
            "trainer.max_epochs=1", "trainer.max_time=null", "trainer.progress=never",
            f"data.samples_per_epoch={(steps + warmup) * 4}", "data.batch_size=4", *sets])  # fmt: skip
    run = build_run(cfg)
    run.start_epoch(0)
    train = TrainStep.for_run(run, NonFiniteGuard.for_run(run, Path("/nonexistent/last.pt")))
    batches = iter(run.train_loader)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        images, masks, extra = run.inputs(next(batches))
        train(images, masks, **extra)
    seconds = (time.perf_counter() - start) / steps
    del batches  # stops the workers
    return seconds, run.train_loader.num_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a data=folder root")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--settings", nargs="+", default=["0", "1", "2", "auto"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("unet_train.engine.autotune", "unet_train.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    samples: dict[str, list[float]] = {s: [] for s in args.settings}
    used: dict[str, int] = {}
    for r in range(args.rounds):
        order = args.settings[r % len(args.settings) :] + args.settings[: r % len(args.settings)]
        for setting in order:
            seconds, used[setting] = seconds_per_step(args.root, setting, args.steps, args.warmup, args.set)
            samples[setting].append(seconds)
        print(f"round {r + 1}: " + ", ".join(f"{s}: {samples[s][-1]:.3f} s/step" for s in args.settings), flush=True)
    medians = {s: statistics.median(v) for s, v in samples.items()}
    fastest = min(medians.values())
    load = os.getloadavg()[0]
    print(f"\n{args.root}, {args.threads} torch thread(s), {os.cpu_count()} CPUs, load average {load:.1f}\n")
    print("| data.num_workers | workers used | s per step, median (min-max) | vs fastest |")
    print("|---|---|---|---|")
    for s in args.settings:
        print(f"| {s} | {used[s]} | {medians[s]:.3f} ({min(samples[s]):.3f}-{max(samples[s]):.3f}) | "
              f"{medians[s] / fastest:.2f}x |")  # fmt: skip
    if args.json:
        result = {"root": str(args.root), "threads": args.threads, "load": load, "samples": samples, "used": used}
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
