"""Timing the cases: warm-up, then every case once per repeat in a rotating order."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bench.common import Case, sync


def time_case(case: Case, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        case.run()
    sync(device)
    elapsed = time.perf_counter() - start
    if case.group == "conv":
        return case.info["gflop_per_run"] * steps / elapsed
    return case.images_per_run * steps / elapsed


def warm_up(cases: list[Case], device: torch.device, steps: int) -> None:
    for case in cases:
        start = time.perf_counter()
        for _ in range(steps):
            case.run()
        sync(device)
        case.info["warmup_s"] = round(time.perf_counter() - start, 3)  # includes compile time when compiled


def run_interleaved(cases: list[Case], args: argparse.Namespace, device: torch.device) -> None:
    """Every repeat runs every case once, in a rotating order, so slow phases of a shared machine hit all cases."""
    for repeat in range(args.repeats):
        shift = repeat % len(cases)
        order = cases[shift:] + cases[:shift]
        for case in order:
            steps = args.steps if case.group == "model" else 1
            case.samples.append(time_case(case, steps, device))
        print(f"  repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Data pipeline
