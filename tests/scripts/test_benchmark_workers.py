"""scripts/benchmark_workers.py times the real training loop per data.num_workers setting and reports auto's choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.data.test_datasets import write_folder

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_workers.py"


def test_each_setting_is_timed_and_auto_is_resolved(tmp_path):
    write_folder(tmp_path / "data", n=6, size=(48, 48))
    out = tmp_path / "workers.json"
    tiny = ["model.base_channels=4", "model.depth=2", "data.patch_size=32", "trainer.channels_last=true",
            "trainer.precision=32", "data.val_fraction=0.34"]  # fmt: skip
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path / "data"), "--threads", "1", "--settings", "0", "auto",
         "--steps", "2", "--warmup", "1", "--rounds", "2", "--json", str(out), "--set", *tiny],
        capture_output=True, text=True, timeout=300, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [len(v) for v in result["samples"].values()] == [2, 2] and min(map(min, result["samples"].values())) > 0
    assert result["used"]["0"] == 0 and result["used"]["auto"] >= 0
    assert "| data.num_workers | workers used | s per step, median (min-max) | vs fastest |" in run.stdout
    assert f"| auto | {result['used']['auto']} | " in run.stdout
    assert "data.num_workers=auto: " in run.stderr  # the run's own log line, with its figures
