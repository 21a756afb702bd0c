"""How many CPUs this process may use, and the loader workers that leaves where nothing is measured."""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, and a cgroup CPU quota where one is set (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" when unlimited
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_workers(cpus: int | None = None) -> int:
    """``auto`` where nothing is measured (evaluation, prediction's folders): two, one CPU left to the model."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(0, min(2, cpus - 1))
