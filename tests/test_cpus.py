"""usable_cpus: the affinity mask, limited by a cgroup v2 CPU quota; a malformed quota file limits nothing."""

from __future__ import annotations

import pytest

from unet_train import cpus


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000\n", 8),  # no quota
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # 1.5 CPUs of time: two CPUs run it
        ("5000 100000\n", 1),  # a sliver of one CPU: still one
        ("100000 0\n", 8),  # a zero period (malformed): no limit, not a division by zero
        ("-1 100000\n", 8),  # cgroup v1's "unlimited" written here: no limit, not one CPU
        ("0 100000\n", 8),
        ("max\n", 8),
        ("two CPUs\n", 8),
        ("", 8),
    ],
)
def test_a_cgroup_quota_limits_the_affinity_mask(tmp_path, monkeypatch, text, expected):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)
    assert cpus.usable_cpus(cpu_max) == expected


def test_no_quota_file_is_no_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert cpus.usable_cpus(tmp_path / "absent") == 3
