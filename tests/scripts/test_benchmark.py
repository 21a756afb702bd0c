"""scripts/benchmark.py --quick runs end to end and writes the JSON the README table comes from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unet_train.cpus import default_workers
from unet_train.engine.runtime import cpu_has_fast_bf16

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path, isbi_root):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--isbi-root", str(isbi_root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| target | value | goal | met |" in run.stdout
    result = json.loads(out.read_text())
    assert set(result) == {"machine", "settings", "conv_peak_gflop_per_s", "cases", "data", "targets"}
    repeats = result["settings"]["repeats"]

    cases = {row["case"]: row for row in result["cases"]}
    names = ("plain", "project", "project-cl", "project-bf16")
    expected = {f"{name}/4/{mode}" for name in names for mode in ("train", "infer")}
    assert expected <= set(cases)
    assert ("monai/4/train" in cases) == (result["machine"]["monai"] is not None)
    for row in cases.values():
        speed = row["images_per_s"]
        assert len(speed["samples"]) == repeats
        assert 0 < speed["min"] <= speed["median"] <= speed["max"]
        assert row["gflop_per_s"] == pytest.approx(speed["median"] * row["gflop_per_image"])
        assert row["fraction_of_conv_peak"] > 0
        assert row["peak_memory_mib"] is None or row["peak_memory_mib"] >= 0
    # The plain baseline is the same network: the same convolutions, so the same FLOPs.
    for mode in ("train", "infer"):
        assert cases[f"plain/4/{mode}"]["gflop_per_image"] == pytest.approx(
            cases[f"project/4/{mode}"]["gflop_per_image"]
        )
    assert cases["plain/4/train"]["gflop_per_image"] == pytest.approx(
        3 * cases["plain/4/infer"]["gflop_per_image"], rel=0.1
    )
    assert cases["plain/4/train"]["vs_plain"] == 1.0
    # trainer=cpu's channels_last=auto and precision=auto: each phase's setting chosen by measuring the candidates
    # (bf16 among them only on a CPU with native bf16), the timings reported (issue 29).
    precisions = ("32", "bf16") if cpu_has_fast_bf16() else ("32",)
    for mode, phase in (("train", "training"), ("infer", "inference")):
        row = cases[f"project/4/{mode}"]
        choice = row["auto"][phase]
        assert row["precision"] == choice["precision"] and row["channels_last"] is choice["channels_last"]
        assert set(choice["seconds"]) == {f"{layout}/{p}" for layout in ("channels_last", "nchw") for p in precisions}
        chosen = f"{'channels_last' if choice['channels_last'] else 'nchw'}/{choice['precision']}"
        assert choice["seconds"][chosen] == min(choice["seconds"].values())
        said = f"channels_last={str(choice['channels_last']).lower()}, precision={choice['precision']}"
        assert f"project/4 {phase}: {said}" in run.stdout
    assert cases["project-cl/4/train"]["channels_last"] is True  # the trainer=cpu default before

    assert set(result["conv_peak_gflop_per_s"]) == {
        f"conv/{d}/{m}" for d in ("fp32", "bf16") for m in ("forward", "fwd+bwd")
    }
    data = result["data"]
    # data=isbi's num_workers: auto; without a training run to measure it is default_workers() (1 on 2 CPUs)
    assert data["num_workers"] == default_workers() and data["loader_images_per_s"]["median"] > 0
    assert data["augment_in_process"]["device_augment_images_per_s"]["median"] > 0
    names = [t["target"] for t in result["targets"]]
    assert len(names) == 6 and all(t["met"] in (True, False, None) for t in result["targets"])
