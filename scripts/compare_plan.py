"""Side by side at one budget on one folder dataset: unet-train's defaults, a planned run, and the plain baseline.

Each is trained for ``--budget`` seconds on ``<root>`` and scored on ``<root>/test`` (unet-eval
``split=test`` for the two unet-train runs; the baseline scores itself). Prints a Markdown table
with steps made and wall time, and the load average (the machine may be shared).

    python scripts/compare_plan.py --root /work/shared/data/usgra-seg --budget 180 --out /tmp/compare
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


def run(args: list[str]) -> tuple[str, float]:
    start = time.monotonic()
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout, time.monotonic() - start


def train_and_score(name: str, out: Path, overrides: list[str]) -> dict:
    folder = out / name
    _, wall = run([str(BIN / "unet-train"), *overrides, "trainer.progress=never", f"paths.output_dir={folder}"])
    (metrics_file,) = folder.glob("outputs/*/*/metrics.json")
    trained = json.loads(metrics_file.read_text())
    best = metrics_file.parent / "checkpoints" / "best.pt"
    run([str(BIN / "unet-eval"), f"ckpt={best}", "split=test", "save_predictions=false", f"paths.output_dir={folder}"])
    (scored,) = folder.glob("outputs/eval/*/*/metrics.json")
    test = json.loads(scored.read_text())
    return {"method": name, "steps": trained["steps"], "wall_s": round(wall, 1),
            "test/dice": round(test["test/dice"], 4), "test/iou": round(test["test/iou"], 4)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=180.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--in-channels", type=int, default=1, help="for the defaults run")
    parser.add_argument("--num-classes", type=int, default=2, help="for the defaults run")
    args = parser.parse_args()
    data = ["data=folder", f"data.root={args.root}", "trainer=cpu"]
    plan = args.out / "plan" / "experiment" / "plan.yaml"
    run([str(BIN / "unet-plan"), f"data.root={args.root}", f"budget={args.budget:g}", f"output={plan}",
         f"paths.output_dir={args.out}"])  # fmt: skip
    defaults = [*data, f"data.in_channels={args.in_channels}", f"data.num_classes={args.num_classes}"]
    rows = [
        train_and_score("defaults", args.out, [*defaults, f"trainer.max_time={args.budget:g}"]),
        train_and_score("planned", args.out, [*data, f"+plan={plan}"]),
    ]
    start = time.monotonic()
    stdout, _ = run(
        [sys.executable, str(HERE / "baseline_plain.py"), f"--root={args.root}", f"--budget={args.budget:g}"]
    )
    baseline = json.loads(stdout.strip().splitlines()[-1])
    rows.append({**baseline, "wall_s": round(time.monotonic() - start, 1)})
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"{args.root.name}, budget {args.budget:g} s, load average {os.getloadavg()[0]:.1f}, "
          f"{os.environ.get('OMP_NUM_THREADS', 'all')} threads\n")  # fmt: skip
    print("| method | steps | wall s | test Dice | test IoU |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['steps']} | {row['wall_s']} | {row['test/dice']} | {row['test/iou']} |")


if __name__ == "__main__":
    main()
