"""Objects benchmark (issue 26): a planned instance run against the semantic model + fixed post-processing and a
page of plain code, side by side at the same CPU budget, on real instance data.

Datasets, prepared as folders under ``<out>/data/<name>/`` (never in the repository):

- ``dsb``: the 2018 Data Science Bowl nuclei (``../shared/data/dsb2018-nuclei``), its ``train.txt`` as
  ``images/``/``masks/`` (unet-train takes its validation split from them, ``data.val_fraction``) and its
  ``test.txt`` as ``test/``; masks are the uint16 instance ids as shipped.
- ``isbi``: ISBI 2012 (``../shared/data/isbi2012``); each slice's cells are the 4-connected components of its
  membrane-free pixels (the ISBI metric's rule, :func:`unet_train.metrics.isbi.ground_truth_segments`), membranes
  0; slices 0-24 train, 25-29 test.

Each has ``instances/`` (uint16 id masks, TIFF) and a ``binary/`` twin (the same images, masks 255 on every
object, PNG). Three arms start at the same time, one thread each (``OMP_NUM_THREADS=1``, as
``scripts/bench_matrix.py`` runs its cells), with ``trainer.max_time=B``:

- ``instance``: ``unet-train data=folder data.root=<instances> plan=auto``, then ``unet-eval split=test`` on
  ``best.pt`` (the post-processing tuned on validation after training, ``objects.tune_time``);
- ``semantic``: ``unet-train`` the same way on ``binary/``, then ``unet-predict instances=true`` on the test
  images (today's fixed post-processing, ``instance_method=auto``);
- ``plain``: ``scripts/baseline_plain.py --instances`` (a UNet on the foreground, then a textbook scikit-image
  distance-transform watershed).

Every arm's ``<stem>_labels.tif`` is scored against the test ids by one function
(:func:`unet_train.metrics.objects.object_scores`, the mean over the test images). Results append to
``<out>/results.jsonl`` one line per dataset x budget cell, so a stopped run continues where it stopped; a
Markdown table per cell is printed.

    python scripts/bench_objects.py --out /tmp/objects                              # dsb and isbi at 600 s
    python scripts/bench_objects.py --out /tmp/objects-tiny --cells dsb:45 --limit 24  # a quick end-to-end check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from bench_matrix import BIN, HERE, finish, start
from PIL import Image

from unet_train.metrics.isbi import ground_truth_segments
from unet_train.metrics.objects import object_scores

SHARED = HERE.parents[1] / "shared" / "data"
ISBI_TEST = range(25, 30)  # the held-out slices (the tool's own ISBI validation slices)
REPORTED = ("f1_50", "map", "aji", "pq")
ARMS = ("instance", "semantic", "plain")


def cells_of(labels: np.ndarray) -> np.ndarray:
    """uint16 cell ids of an ISBI label slice (255 cell, 0 membrane): its membrane-free components, membranes 0."""
    return ground_truth_segments(labels != 0).astype(np.uint16)


def write_pair(root: Path, part: str, stem: str, image: Path | np.ndarray, ids: np.ndarray) -> None:
    """One image into ``root/instances/<part>`` (uint16 ids) and ``root/binary/<part>`` (0/255 foreground)."""
    for kind in ("instances", "binary"):
        (root / kind / part / "images").mkdir(parents=True, exist_ok=True)
        (root / kind / part / "masks").mkdir(parents=True, exist_ok=True)
        if isinstance(image, Path):
            shutil.copyfile(image, root / kind / part / "images" / image.name)  # byte for byte
        else:
            Image.fromarray(image).save(root / kind / part / "images" / f"{stem}.png")
    tifffile.imwrite(root / "instances" / part / "masks" / f"{stem}.tif", ids.astype(np.uint16), compression="zlib")
    Image.fromarray(np.where(ids > 0, 255, 0).astype(np.uint8)).save(root / "binary" / part / "masks" / f"{stem}.png")


def prepare_dsb(root: Path, limit: int | None) -> None:
    source = SHARED / "dsb2018-nuclei"
    for listing, part in (("train.txt", "."), ("test.txt", "test")):
        stems = (source / listing).read_text().split()
        if limit is not None:
            stems = stems[: max(2, limit // 4) if part == "test" else limit]
        for stem in stems:
            ids = tifffile.imread(source / "labels" / f"{stem}.tif")
            write_pair(root, part, stem, source / "images" / f"{stem}.png", ids)


def prepare_isbi(root: Path, limit: int | None) -> None:
    source = SHARED / "isbi2012"
    volume, labels = tifffile.imread(source / "train-volume.tif"), tifffile.imread(source / "train-labels.tif")
    train = [i for i in range(len(volume)) if i not in ISBI_TEST][:limit]
    for i in [*train, *ISBI_TEST]:
        write_pair(root, "test" if i in ISBI_TEST else ".", f"slice{i:02d}", volume[i], cells_of(labels[i]))


def prepare(name: str, out: Path, limit: int | None) -> Path:
    """``out/data/<name>[-limitN]`` with ``instances/`` and ``binary/``, written once (a marker file says done)."""
    root = out / "data" / (name if limit is None else f"{name}-limit{limit}")
    if not (root / "done").exists():
        shutil.rmtree(root, ignore_errors=True)  # a half-written folder from a stopped run
        {"dsb": prepare_dsb, "isbi": prepare_isbi}[name](root, limit)
        (root / "done").touch()
    return root


def score(labels: Path, truth: Path) -> dict[str, float]:
    """Mean object scores over the test images in ``truth`` (``<stem>.tif``) of ``labels/<stem>_labels.tif``."""
    rows = []
    for path in sorted(truth.glob("*.tif")):
        predicted = labels / f"{path.stem}_labels.tif"
        if not predicted.exists():
            raise SystemExit(f"no prediction {predicted} for the test image {path.stem}")
        rows.append(object_scores(tifffile.imread(path), tifffile.imread(predicted)))
    return {key: round(float(np.mean([row[key] for row in rows])), 4) for key in (*REPORTED, "splits", "merges")}


def run_all(jobs: dict[str, tuple[list[str], Path]]) -> dict[str, float]:
    """Start every job at once, wait for them all; each one's wall seconds."""
    begun = time.monotonic()
    procs = {arm: start(args, log) for arm, (args, log) in jobs.items()}
    walls: dict[str, float] = {}
    while len(walls) < len(procs):
        for arm, proc in procs.items():
            if arm not in walls and proc.poll() is not None:
                finish(proc, jobs[arm][1])
                walls[arm] = time.monotonic() - begun
        time.sleep(1)
    return walls


def trained(folder: Path) -> tuple[dict, Path]:
    """A unet-train run's metrics.json and best.pt under ``folder``."""
    (metrics,) = folder.glob("outputs/*/*/metrics.json")
    return json.loads(metrics.read_text()), metrics.parent / "checkpoints" / "best.pt"


def run_cell(name: str, budget: int, out: Path, limit: int | None, instance_set: list[str]) -> dict:
    root = prepare(name, out, limit)
    folder = out / f"{name}_{budget}" / ("all" if limit is None else f"limit{limit}")
    shutil.rmtree(folder, ignore_errors=True)  # a stopped cell starts again
    folder.mkdir(parents=True)
    inst, binary = root / "instances", root / "binary"
    train = [str(BIN / "unet-train"), "data=folder", "plan=auto", f"trainer.max_time={budget}"]
    train.append("trainer.progress=never")
    load_before = os.getloadavg()[0]
    walls = run_all({
        "instance": ([*train, f"data.root={inst}", f"paths.output_dir={folder / 'instance'}", *instance_set],
                     folder / "instance.log"),
        "semantic": ([*train, f"data.root={binary}", f"paths.output_dir={folder / 'semantic'}"],
                     folder / "semantic.log"),
        "plain": ([sys.executable, str(HERE / "baseline_plain.py"), f"--root={inst}", f"--budget={budget}",
                   f"--instances={folder / 'plain' / 'labels'}"], folder / "plain.log"),
    })  # fmt: skip
    load_avg = max(load_before, os.getloadavg()[0])
    (inst_metrics, inst_best), (sem_metrics, sem_best) = trained(folder / "instance"), trained(folder / "semantic")
    after = run_all({
        "instance": ([str(BIN / "unet-eval"), f"ckpt={inst_best}", "split=test",
                      f"paths.output_dir={folder / 'instance' / 'eval'}"], folder / "instance-eval.log"),
        "semantic": ([str(BIN / "unet-predict"), f"ckpt={sem_best}", f"input={binary / 'test' / 'images'}",
                      "instances=true", "progress=never", f"output={folder / 'semantic' / 'labels'}",
                      f"paths.output_dir={folder / 'semantic' / 'predict'}"], folder / "semantic-predict.log"),
    })  # fmt: skip
    (eval_metrics,) = (folder / "instance" / "eval").glob("outputs/eval/*/*/metrics.json")
    (predictions,) = (folder / "instance" / "eval").glob("outputs/eval/*/*/predictions")
    plain = json.loads((folder / "plain.log").read_text().strip().splitlines()[-1])
    truth = inst / "test" / "masks"
    arms = {
        "instance": {**score(predictions, truth), "steps": inst_metrics["steps"],
                     "eval_f1_50": round(json.loads(eval_metrics.read_text())["test/f1_50"], 4),
                     "tuning": {k: v for k, v in inst_metrics.items() if k.startswith(("tuned/", "untuned/"))}},
        "semantic": {**score(folder / "semantic" / "labels", truth), "steps": sem_metrics["steps"]},
        "plain": {**score(folder / "plain" / "labels", truth), "steps": plain["steps"]},
    }  # fmt: skip
    for arm, wall in walls.items():
        arms[arm]["wall_s"] = round(wall + after.get(arm, 0.0))
    return {"cell": cell_key(name, budget, limit), "dataset": name, "budget": budget, "limit": limit,
            "instance_set": instance_set,
            "test_images": len(list(truth.glob("*.tif"))), "load_avg": round(load_avg, 1), "arms": arms}  # fmt: skip


def cell_key(name: str, budget: int, limit: int | None) -> str:
    return f"{name}:{budget}" + ("" if limit is None else f":limit{limit}")


def table(row: dict) -> str:
    """One cell as a Markdown table, a line per arm; ``won``: the instance arm beats both on F1@0.5 and mAP."""
    arms = row["arms"]
    won = all(arms["instance"][k] > arms[other][k] for other in ("semantic", "plain") for k in ("f1_50", "map"))
    lines = [
        f"**{row['dataset']}**, {row['budget']} s, {row['test_images']} test images"
        + ("" if row["limit"] is None else f" (--limit {row['limit']})")
        + f", load average {row['load_avg']}; instance arm beats both on F1@0.5 and mAP: {'yes' if won else '**no**'}",
        "",
        "| arm | F1@0.5 | mAP (DSB) | AJI | PQ | splits | merges | steps | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        a = arms[arm]
        counts = [f"{a['splits']:.1f}", f"{a['merges']:.1f}", a["steps"], a["wall_s"]]
        figures = [f"{a[k]:.3f}" for k in REPORTED] + counts
        lines.append(f"| {arm} | " + " | ".join(map(str, figures)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="prepared data, runs and results.jsonl go here")
    parser.add_argument("--cells", nargs="+", default=["dsb:600", "isbi:600"], help="dataset:budget (dsb, isbi)")
    parser.add_argument("--limit", type=int, help="only the first N training images (N // 4, at least 2, test)")
    parser.add_argument(
        "--instance-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the instance arm's unet-train (e.g. data.target=affinities)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = {json.loads(line)["cell"]: json.loads(line) for line in results.read_text().splitlines()} if (
        results.exists()) else {}  # fmt: skip
    for cell in args.cells:
        name, budget = cell.split(":")
        if name not in ("dsb", "isbi"):
            raise SystemExit(f"--cells {cell}: the dataset is dsb or isbi")
        key = cell_key(name, int(budget), args.limit)
        if key not in done:
            done[key] = run_cell(name, int(budget), args.out, args.limit, args.instance_set)
            with results.open("a") as handle:
                handle.write(json.dumps(done[key]) + "\n")
        print(table(done[key]) + "\n", flush=True)


if __name__ == "__main__":
    main()
