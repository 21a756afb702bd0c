"""The planned run against a page of plain PyTorch, over datasets x budgets x machine load (issue 28's matrix).

Each cell trains the user's one command (``unet-train data=folder data.root=D plan=auto
trainer.max_time=B``, then ``unet-eval split=test`` on the best checkpoint) and
``scripts/baseline_plain.py`` at the same budget *at the same time*, one thread each, so both meet the
same machine. A ``busy`` cell adds one CPU-bound process beside them (three busy threads on two cores);
the table gives the load average seen, so a matrix run beside other work says so.
Datasets are the folders written by ``scripts/make_bench_datasets.py`` plus ``usgra`` (the shared
ultrasound set, used in place). Results go to ``<out>/results.jsonl`` (one line per cell, appended, so an
interrupted matrix continues where it stopped) and a Markdown table is printed.

    python scripts/make_bench_datasets.py --out /tmp/bench-data
    python scripts/bench_matrix.py --data /tmp/bench-data --out /tmp/matrix                # the whole matrix
    python scripts/bench_matrix.py --data /tmp/bench-data --out /tmp/matrix --cells isbi:120 usgra:300:busy
    python scripts/bench_matrix.py --data /tmp/bench-data --out /tmp/wide --cells vnc:120 --set model.base_channels=16

``--set`` adds overrides to the planned run's command (a variant of the plan to try; a separate ``--out``).
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
USGRA = HERE.parents[1] / "shared" / "data" / "usgra-seg"
DATASETS = ("isbi", "fluo16", "vessels", "dsb", "vnc", "usgra")
# 120 and 300 s everywhere, 600 s on three, a competing process beside three: about 1.5 h at two runs at a time.
MATRIX = (
    *(f"{name}:{budget}" for budget in (120, 300) for name in DATASETS),
    *(f"{name}:600" for name in ("isbi", "dsb", "usgra")),
    *(f"{name}:{budget}:busy" for name, budget in (("usgra", 300), ("dsb", 120), ("vnc", 120))),
)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def root_of(name: str, data: Path) -> Path:
    return USGRA if name == "usgra" else data / name


def start(args: list[str], log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD})


def finish(proc: subprocess.Popen, log: Path) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"{proc.args!r} failed (exit {proc.returncode}); see {log}")


def planned_result(folder: Path) -> dict:
    (metrics_file,) = folder.glob("outputs/*/*/metrics.json")
    trained = json.loads(metrics_file.read_text())
    best = metrics_file.parent / "checkpoints" / "best.pt"
    log = folder / "eval.log"
    finish(start([str(BIN / "unet-eval"), f"ckpt={best}", "split=test", "save_predictions=false",
                  f"paths.output_dir={folder / 'eval'}"], log), log)  # fmt: skip
    (scored,) = (folder / "eval").glob("outputs/eval/*/*/metrics.json")
    test = json.loads(scored.read_text())
    validation = trained.get("validation_s")
    return {
        "steps": trained["steps"],
        "time_s": round(trained["time_s"], 1),
        "val_share": None if validation is None else round(validation / trained["time_s"], 3),
        "dice": round(test["test/dice"], 4),
        "per_class": {k: round(v, 3) for k, v in test.items() if k.startswith("test/dice_")},
    }


def run_cell(cell: str, data: Path, out: Path, sets: tuple[str, ...] | list[str] = ()) -> dict:
    name, budget, *load = cell.split(":")
    root, folder = root_of(name, data), out / cell.replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == ["busy"] else None
    load_before = os.getloadavg()[0]
    begun = time.monotonic()
    try:
        planned = start([str(BIN / "unet-train"), "data=folder", f"data.root={root}", "plan=auto",
                         f"trainer.max_time={budget}", "trainer.progress=never",
                         f"paths.output_dir={folder / 'planned'}", *sets], folder / "planned.log")  # fmt: skip
        plain = start([sys.executable, str(HERE / "baseline_plain.py"), f"--root={root}", f"--budget={budget}"],
                      folder / "plain.log")  # fmt: skip
        finish(planned, folder / "planned.log")
        finish(plain, folder / "plain.log")
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    baseline = json.loads((folder / "plain.log").read_text().strip().splitlines()[-1])
    return {
        "cell": cell, "dataset": name, "budget": int(budget), "load": "+1 busy process" if load else "alone",
        "load_avg": round(max(load_before, os.getloadavg()[0]), 1), "wall_s": round(time.monotonic() - begun),
        "planned": planned_result(folder / "planned"),
        "plain": {"steps": baseline["steps"], "dice": baseline["test/dice"],
                  "per_class": {k: v for k, v in baseline.items() if k.startswith("test/dice_") and k[-1].isdigit()}},
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | budget | load | planned: steps | val share | test Dice | plain: steps | test Dice | won |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p, b = row["planned"], row["plain"]
        share = "?" if p["val_share"] is None else f"{p['val_share']:.0%}"
        won = "yes" if p["dice"] > b["dice"] else "**no**"
        cells = [row["dataset"], f"{row['budget']} s", f"{row['load']} (load {row['load_avg']})", p["steps"], share,
                 f"{p['dice']:.3f}", b["steps"], f"{b['dice']:.3f}", won]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="where make_bench_datasets.py wrote its folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cells", nargs="+", default=list(MATRIX), help="dataset:budget[:busy] (default: all)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for the planned run (a variant to try)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = {json.loads(line)["cell"]: json.loads(line) for line in results.read_text().splitlines()} if (
        results.exists()) else {}  # fmt: skip
    for cell in args.cells:
        if cell not in done:
            done[cell] = run_cell(cell, args.data, args.out, args.set) | {"set": args.set}
            with results.open("a") as handle:
                handle.write(json.dumps(done[cell]) + "\n")
            print(table([done[cell]]).splitlines()[-1], flush=True)
    print(table([done[cell] for cell in args.cells]))


if __name__ == "__main__":
    main()
