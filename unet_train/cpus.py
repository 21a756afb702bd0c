"""How many CPUs this process may use, and the loader workers that leaves where nothing is measured."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" in microseconds, "max 100000" unlimited


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask, and a cgroup CPU quota where one is set (containers).

    ``cpu_max`` is cgroup v2's quota file; one that is absent, unreadable or not two positive integers (or ``max``
    and one) sets no limit."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(quota) > 0 and int(period) > 0:
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_workers(cpus: int | None = None) -> int:
    """``auto`` where nothing is measured (evaluation, prediction's folders): two, one CPU left to the model."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(0, min(2, cpus - 1))
