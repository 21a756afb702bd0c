"""bfloat16 against float32 on ISBI 2012 at equal optimizer steps, several seeds each.

Each run is ``experiment=isbi_cpu`` shortened to a fixed number of steps (so machine load does not
change what is compared) at a small base width, validated once at the end. The check that decides
``trainer.precision=auto`` on CPUs: bf16's mean validation Dice must lie within the float32 seeds'
range (min..max) or above it. Example (about 10-20 min on 2 busy cores)::

    python scripts/compare_precision.py --seeds 0 1 2 --epochs 8 --width 8 --json /tmp/precision.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_ISBI, compose

from unet_train.engine.fit import fit

KEYS = ("val/dice", "val/iou", "val/pixel_error", "val/loss")


def run_one(precision: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    overrides = [
        "experiment=isbi_cpu",
        f"data.root={args.isbi_root}",
        f"trainer.precision={precision}",
        f"seed={seed}",
        f"model.base_channels={args.width}",
        "trainer.max_time=null",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.val_every={args.epochs}",  # one validation, after the last step
        "trainer.progress=never",
        "trainer.deterministic=false",
    ]
    cfg = compose(overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.monotonic()
        metrics = fit(cfg, run_dir)
        seconds = time.monotonic() - start
    row = {"precision": precision, "seed": seed, "steps": metrics["steps"], "time_s": seconds}
    row.update({k: metrics[k] for k in KEYS if k in metrics})
    print(json.dumps(row), flush=True)
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for precision in sorted({r["precision"] for r in rows}):
        group = [r for r in rows if r["precision"] == precision]
        out[precision] = {}
        for key in (*KEYS, "time_s"):
            values = [r[key] for r in group if key in r]
            if values:
                out[precision][key] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values),
                    "max": max(values),
                }
    if "32" in out and "bf16" in out:
        ref, bf = out["32"]["val/dice"], out["bf16"]["val/dice"]
        out["bf16_holds"] = bf["mean"] >= ref["min"]
    return out


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"\n{'precision':>9} {'seed':>4} {'steps':>5} {'time s':>7} " + " ".join(f"{k:>10}" for k in KEYS))
    for r in rows:
        cells = " ".join(f"{r.get(k, float('nan')):10.4f}" for k in KEYS)
        print(f"{r['precision']:>9} {r['seed']:>4} {r['steps']:>5} {r['time_s']:7.1f} {cells}")
    for precision in ("32", "bf16"):
        if precision in summary:
            s = summary[precision]
            cells = " ".join(f"{s[k]['mean']:.4f}±{s[k]['std']:.4f}" if k in s else f"{'':>10}" for k in KEYS)
            print(f"{precision:>9} mean±sd {s['time_s']['mean']:7.1f} s  {cells}")
    if "bf16_holds" in summary:
        print(f"bf16 mean val/dice within or above the float32 seeds' range: {summary['bf16_holds']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8, help="epochs of 10 steps (isbi_cpu: 40 crops, batch 4)")
    p.add_argument("--width", type=int, default=8, help="model.base_channels")
    p.add_argument("--precisions", nargs="+", default=["32", "bf16"])
    p.add_argument("--isbi-root", default=str(DEFAULT_ISBI))
    p.add_argument("--json", default="precision.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rows = [run_one(precision, seed, args) for seed in args.seeds for precision in args.precisions]  # interleaved
    summary = summarize(rows)
    print_table(rows, summary)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
