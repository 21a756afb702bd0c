"""Volumes side by side (issue 25): the tool's volume plan, its 2D plan slice by slice, and a plain 3D UNet.

Per dataset and budget three runs start together, one thread each, so all meet the same machine:

- **3D plan**: ``unet-train data=volumes data.root=<d>/vol plan=auto trainer.max_time=B``, then
  ``unet-eval split=test`` on the best checkpoint (it writes each test volume's labels);
- **2D plan**: the same volumes exported plane by plane as a ``data=folder`` set
  (``<d>/planes``, ``<volume>_z<plane>.tif``), ``plan=auto`` at the same budget, ``unet-eval split=test``,
  the predicted planes stacked back into volumes;
- **plain 3D**: ``scripts/baseline_plain3d.py`` at the same budget.

Every arm is scored here the same way, on the test volumes: Dice per volume and foreground class (a
class absent from both scoring 1), mean over the classes, then over the volumes (``baseline_plain.score``).
The tool's own ``unet-eval`` figure for the 3D plan is kept beside it as a check.

Datasets (written under ``--out``, never in the repository):

- ``vnc``: ``shared/data/drosophila-vnc`` (ssTEM, 50 x 4.6 x 4.6 nm, 5 classes, CC BY-NC-SA 3.0):
  sections 0-14 cut into four 15 x 512 x 512 quarters in (y, x) for training (the tool holds one out
  for validation), sections 15-19 (5 x 1024 x 1024, its README's test split) as the test volume.
- ``isbi``: ``shared/data/isbi2012`` training stack (50 x 4 x 4 nm, binary, 255 = cell interior):
  planes 0-24 as four 25 x 256 x 256 quarters for training, planes 25-29 (5 x 512 x 512) as the test
  volume. The challenge's own test stack has no labels.
- ``ct``: synthetic CT-like volumes made here (seeded): 40 x 96 x 96 voxels at 3 x 1 x 1 mm; a soft-
  tissue body (40 HU) in air, one to three ellipsoidal organs (class 1, 60-90 HU) holding small spherical
  lesions (class 2, 20-40 HU darker than their organ), sized in millimetres so they span fewer planes
  than pixels; smoothed along each axis in proportion to the spacing, Gaussian noise of 25 HU, windowed
  to [-160, 240] HU and stored as uint8. Eight training volumes, two test volumes.

- ``mni``: real MR, from a package: the ICBM 2009a nonlinear symmetric T1 template (an average of 152
  adults' scans, 1 x 1 x 1 mm) and its grey- and white-matter probability maps, as the ``nilearn`` wheel
  ships them (``pip install nilearn``; only its files are read). Labels: 0 where neither probability
  reaches 0.5, else 1 (grey) or 2 (white), whichever is likelier. The template is symmetric, so only the
  left hemisphere is used (a right-hemisphere block would mirror a training one): its brain's bounding box
  cut into 3 x 3 blocks along z and y; the two middle-height blocks at the front and the back are the test
  volumes, the other seven train.

- ``abct``: real abdominal CT, from a package: ``tests/reference_files/example_ct.nii.gz`` of the
  ``totalsegmentator`` 2.18.0 source archive (Apache-2.0; 122 x 101 x 112 voxels of 3 mm, abdomen and pelvis,
  stored as int16 HU) with ``example_seg_fast_force_split.nii.gz`` beside it. Those labels are
  TotalSegmentator's own predictions (its 3 mm model), kept by the package as test references, not drawn by
  hand. Its 61 classes are grouped here into 9, left and right merged: liver, spleen, kidneys, stomach and
  duodenum, bowel, bladder and prostate, bones, muscles, large vessels; the rest is background. The body's
  bounding box is cut into 4 slabs of 28 planes along z (pelvis to lower chest) and 2 halves along x (left,
  right); the test volumes are slab 1's left half and slab 2's right half, the other six train. Liver and
  spleen lie only in the top slabs, so the test volumes hold 7 of the 9 classes. ``--totalseg FILE`` names the archive
  (``totalsegmentator-2.18.0.tar.gz`` from PyPI's files; only those two members and its class names in
  ``totalsegmentator/map_to_binary.py``, parsed as literals, are read).

``--side S`` cuts every volume to at most S x S in (y, x) (and the CT set to 20 planes) for a quick
check. Results go to ``<out>/results.jsonl`` (one line per cell, appended: an interrupted run continues
where it stopped; a cell whose three runs finished, ``<cell>/trained.json``, is only scored again) and a
Markdown table is printed.

    python scripts/bench_volumes.py --out /tmp/vols --totalseg ~/totalsegmentator-2.18.0.tar.gz  # all at 600 s
    python scripts/bench_volumes.py --out /tmp/vols-tiny --side 128 --cells isbi:40 ct:40 vnc:40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from baseline_plain import score  # noqa: E402  (scripts/ is not a package)
from baseline_plain3d import read  # noqa: E402
from bench_matrix import BIN, finish, start  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data"
DATASETS = ("vnc", "isbi", "ct", "mni", "abct")
Volume = tuple[str, np.ndarray, np.ndarray]  # name, image (z, y, x) uint8 (int16 HU for abct), mask (z, y, x) uint8


def write_volume(folder: Path, name: str, image: np.ndarray, mask: np.ndarray, spacing: tuple, unit: str) -> None:
    """An ImageJ TIFF stack pair with the voxel size in its tags (the unit as ImageJ names it)."""
    for sub, array in (("images", image), ("masks", mask)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / sub / f"{name}.tif", array, imagej=True,
                         resolution=(1 / spacing[2], 1 / spacing[1]),
                         metadata={"spacing": spacing[0], "unit": unit, "axes": "ZYX"})  # fmt: skip


def quarters(name: str, image: np.ndarray, mask: np.ndarray) -> list[Volume]:
    """The four (y, x) quarters of a volume, as separate volumes (the tool's validation holds one out)."""
    h, w = image.shape[1] // 2, image.shape[2] // 2
    return [(f"{name}_q{i}", image[:, y : y + h, x : x + w], mask[:, y : y + h, x : x + w])
            for i, (y, x) in enumerate(((0, 0), (0, w), (h, 0), (h, w)))]  # fmt: skip


def vnc() -> tuple[list[Volume], list[Volume], tuple, str]:
    folder = SHARED / "drosophila-vnc"
    train, test = ((folder / f"{s}.txt").read_text().split()[0] for s in ("train", "test"))
    pairs = {n: (tifffile.imread(folder / "images" / f"{n}.tif"), tifffile.imread(folder / "masks" / f"{n}.tif"))
             for n in (train, test)}  # fmt: skip
    return quarters("vnc", *pairs[train]), [("vnc_test", *pairs[test])], (0.05, 0.0046, 0.0046), "um"


def isbi() -> tuple[list[Volume], list[Volume], tuple, str]:
    image, mask = (tifffile.imread(SHARED / "isbi2012" / f) for f in ("train-volume.tif", "train-labels.tif"))
    return quarters("isbi", image[:25], mask[:25]), [("isbi_test", image[25:], mask[25:])], (0.05, 0.004, 0.004), "um"


def ct_volume(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic CT-like volume and its labels (0 background, 1 organ, 2 lesion): see the module docstring."""
    mm = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij"))
    extent = np.array(shape) * np.array(spacing)
    body = (((mm - extent[:, None, None, None] / 2) / (extent[:, None, None, None] * 0.45)) ** 2).sum(0) < 1
    hu, mask = np.where(body, 40.0, -1000.0), np.zeros(shape, np.uint8)
    for _ in range(rng.integers(1, 4)):
        centre, radii = extent * rng.uniform(0.3, 0.7, 3), rng.uniform(12, 26, 3)
        organ = body & ((((mm.T - centre) / radii) ** 2).sum(-1).T < 1)
        level = rng.uniform(60, 90)
        hu[organ], mask[organ] = level, 1
        for _ in range(rng.integers(0, 4)):
            points = np.argwhere(organ)
            if len(points) == 0:
                break
            spot = points[rng.integers(len(points))] * np.array(spacing)
            lesion = organ & ((((mm.T - spot) / rng.uniform(3, 7)) ** 2).sum(-1).T < 1)
            hu[lesion], mask[lesion] = level - rng.uniform(20, 40), 2
    hu = ndimage.gaussian_filter(hu, sigma=[1.0 / s for s in spacing]) + rng.normal(0, 25, shape)
    return np.clip((hu + 160) / 400 * 255, 0, 255).astype(np.uint8), mask


def ct(planes: int = 40) -> tuple[list[Volume], list[Volume], tuple, str]:
    rng, spacing = np.random.default_rng(25), (3.0, 1.0, 1.0)
    volumes = [(f"ct{i}", *ct_volume(rng, (planes, 96, 96), spacing)) for i in range(10)]
    return volumes[:8], [(f"ct_test{i}", image, mask) for i, (_, image, mask) in enumerate(volumes[8:])], spacing, "mm"


def mni_files() -> dict[str, Path]:
    """The template's T1 and tissue maps inside the installed ``nilearn`` (found, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the mni set reads the MNI template that nilearn ships: pip install nilearn")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return {k: data / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}


def mni() -> tuple[list[Volume], list[Volume], tuple, str]:
    import nibabel

    files = mni_files()
    images: dict[str, Any] = {k: nibabel.load(files[k]) for k in ("t1", "gm", "wm")}
    t1, gm, wm = (np.asarray(images[k].dataobj).transpose(2, 1, 0) for k in ("t1", "gm", "wm"))
    affine = images["t1"].affine
    mid = round(float(-affine[0, 3] / affine[0, 0]))  # the x index of the midline (world x = 0)
    mask = np.where(np.maximum(gm, wm) < 128, 0, np.where(gm >= wm, 1, 2)).astype(np.uint8)
    zs, ys, xs = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    image, mask = (a[zs[0] : zs[-1] + 1, ys[0] : ys[-1] + 1, xs[0] : min(mid, xs[-1] + 1)] for a in (t1, mask))
    z_cuts, y_cuts = (np.linspace(0, n, 4).astype(int) for n in image.shape[:2])
    blocks = {(i, j): (image[z_cuts[i] : z_cuts[i + 1], y_cuts[j] : y_cuts[j + 1]],
                       mask[z_cuts[i] : z_cuts[i + 1], y_cuts[j] : y_cuts[j + 1]])
              for i in range(3) for j in range(3)}  # fmt: skip
    test = [(1, 0), (1, 2)]
    train = [(f"mni_z{i}y{j}", *pair) for (i, j), pair in blocks.items() if (i, j) not in test]
    return train, [(f"mni_test_z{i}y{j}", *blocks[i, j]) for i, j in test], (1.0, 1.0, 1.0), "mm"


TOTALSEG = Path("totalsegmentator-2.18.0.tar.gz")  # --totalseg
# TotalSegmentator's "total" class names, grouped (left and right merged); every other id is background.
ABCT_GROUPS = {
    "liver": ("liver", "gallbladder"),
    "spleen": ("spleen",),
    "kidneys": ("kidney_left", "kidney_right"),
    "stomach": ("stomach", "duodenum"),
    "bowel": ("small_bowel", "colon"),
    "bladder": ("urinary_bladder", "prostate"),
    "bones": ("sacrum", "vertebrae_", "femur_", "hip_", "rib_", "costal_cartilages", "sternum"),
    "muscles": ("gluteus_", "autochthon_", "iliopsoas_"),
    "vessels": ("aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_", "iliac_vena_"),
}


def abct() -> tuple[list[Volume], list[Volume], tuple, str]:
    import gzip
    import tarfile

    import nibabel

    if not TOTALSEG.is_file():
        raise SystemExit(f"the abct set reads {TOTALSEG} (--totalseg): the totalsegmentator 2.18.0 source archive "
                         "from PyPI's files")  # fmt: skip
    base = "totalsegmentator-2.18.0/"
    with tarfile.open(TOTALSEG) as archive:

        def member(name: str) -> bytes:
            stream = archive.extractfile(base + name)
            assert stream is not None, name
            return gzip.decompress(stream.read())

        ct_image, seg = (nibabel.Nifti1Image.from_bytes(member(f"tests/reference_files/{f}.nii.gz"))
                         for f in ("example_ct", "example_seg_fast_force_split"))  # fmt: skip
        source = archive.extractfile(base + "totalsegmentator/map_to_binary.py")
        assert source is not None
        text = source.read().decode()
    classes = class_names(text)
    lookup = np.zeros(256, np.uint8)
    for index, (_, prefixes) in enumerate(ABCT_GROUPS.items(), start=1):
        for label, name in classes.items():
            if any(name == p or (p.endswith("_") and name.startswith(p)) for p in prefixes):
                lookup[label] = index
    hu = np.asarray(ct_image.dataobj).transpose(2, 1, 0)  # RAS (x, y, z) -> (z, y, x)
    mask = lookup[np.asarray(seg.dataobj).transpose(2, 1, 0)]
    image = np.clip(hu, -1024, 3071).astype(np.int16)
    ys, xs = (np.flatnonzero((image > -500).any(axis=a)) for a in ((0, 2), (0, 1)))
    image, mask = (a[:, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] for a in (image, mask))
    z_cuts, half = np.linspace(0, image.shape[0], 5).astype(int), image.shape[2] // 2
    sides = {"l": slice(0, half), "r": slice(half, None)}  # RAS: x grows towards the patient's right
    blocks = {(i, side): (image[z_cuts[i] : z_cuts[i + 1], :, cut], mask[z_cuts[i] : z_cuts[i + 1], :, cut])
              for i in range(4) for side, cut in sides.items()}  # fmt: skip
    test = [(1, "l"), (2, "r")]
    train = [(f"abct_z{i}{s}", *pair) for (i, s), pair in blocks.items() if (i, s) not in test]
    return train, [(f"abct_test_z{i}{s}", *blocks[i, s]) for i, s in test], (3.0, 3.0, 3.0), "mm"


def class_names(source: str) -> dict[int, str]:
    """``class_map["total"]`` of TotalSegmentator's ``map_to_binary.py``, read as literals (nothing executed)."""
    import ast

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "class_map":
            maps = ast.literal_eval(node.value)
            return {int(k): str(v) for k, v in maps["total"].items()}
    raise SystemExit("map_to_binary.py has no class_map")


def prepare(name: str, out: Path, side: int | None) -> Path:
    """Write ``out/name/vol`` (volumes) and ``out/name/planes`` (the same planes as 2D images) once."""
    folder = out / name
    if (folder / "done").exists():
        return folder
    sets = {"vnc": vnc, "isbi": isbi, "mni": mni, "abct": abct, "ct": lambda: ct(20 if side else 40)}
    train, test, spacing, unit = sets[name]()
    for split, volumes in (("", train), ("test", test)):
        for vol_name, image, mask in volumes:
            image, mask = (a[:, :side, :side] if side else a for a in (image, mask))
            write_volume(folder / "vol" / split, vol_name, image, mask, spacing, unit)
            for z in range(image.shape[0]):
                for sub, array in (("images", image[z]), ("masks", mask[z])):
                    (folder / "planes" / split / sub).mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(folder / "planes" / split / sub / f"{vol_name}_z{z:03d}.tif", array)
    (folder / "done").write_text("")
    return folder


def evaluate(run: Path, log: Path) -> tuple[Path, dict]:
    """``unet-eval split=test`` on the run's best checkpoint: its predictions folder and training metrics."""
    (metrics_file,) = run.glob("outputs/*/*/metrics.json")
    if not list((run / "eval").glob("outputs/eval/*/*/metrics.json")):  # scored already when a cell is re-scored
        finish(start([str(BIN / "unet-eval"), f"ckpt={metrics_file.parent / 'checkpoints' / 'best.pt'}", "split=test",
                      f"paths.output_dir={run / 'eval'}"], log), log)  # fmt: skip
    (scored,) = (run / "eval").glob("outputs/eval/*/*/metrics.json")
    return scored.parent / "predictions", {**json.loads(metrics_file.read_text()), **json.loads(scored.read_text())}


def plan_of(run: Path) -> str:
    """The planned net in a few words, from the run's saved config."""
    import yaml

    (config_file,) = run.glob("outputs/*/*/resolved_config.yaml")  # after the plan
    cfg = yaml.safe_load(config_file.read_text())
    model, data = cfg["model"], cfg["data"]
    context = data.get("context_slices")  # 2.5D: neighbouring planes as channels
    kind = f"2.5D (+-{context} planes)" if context else f"{model.get('spatial_dims') or 2}D"
    return f"{kind} w{model.get('base_channels')} d{model.get('depth')} patch {data.get('patch_size')} " + (
        f"batch {data.get('batch_size')}")  # fmt: skip


def stack_planes(folder: Path, name: str, sep: str = "_") -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob(f"{name}{sep}z*.png"))])


def read_prediction(folder: Path, name: str) -> np.ndarray:
    """A volume's predicted labels from ``unet-eval``: one TIFF for a 3D model, one PNG per plane for a 2.5D one."""
    path = folder / f"{name}.tif"
    return tifffile.imread(path) if path.exists() else stack_planes(folder, name, sep="-")


def count_classes(folder: Path) -> int:
    """The classes the nets learn from ``folder``'s training and test masks: one absent from the test
    volumes still counts (scoring 1 where it is not predicted either), as in ``unet-eval``."""
    masks = [read(path, mask=True) for path in sorted(folder.glob("**/masks/*.tif"))]
    return max(2, max(int(m.max()) for m in masks) + 1)


def score_volumes(volumes: list[np.ndarray], truths: list[np.ndarray], classes: int) -> list[float]:
    """Dice of each predicted label volume (binary ones written 0/255): mean over the foreground classes."""
    labels = [(v > 0).astype(np.int64) if classes == 2 else v.astype(np.int64) for v in volumes]
    return [round(score([p], [t], classes)[0], 4) for p, t in zip(labels, truths)]


def run_cell(cell: str, out: Path, side: int | None) -> dict:
    name, budget = cell.split(":")
    data, folder = prepare(name, out, side), out / "runs" / cell.replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    load_before, begun = os.getloadavg()[0], time.monotonic()
    common = ["plan=auto", f"trainer.max_time={budget}", "trainer.progress=never"]
    procs = {
        "vol": start([str(BIN / "unet-train"), "data=volumes", f"data.root={data / 'vol'}", *common,
                      f"paths.output_dir={folder / 'vol'}"], folder / "vol.log"),
        "planes": start([str(BIN / "unet-train"), "data=folder", f"data.root={data / 'planes'}", *common,
                         f"paths.output_dir={folder / 'planes'}"], folder / "planes.log"),
        "plain": start([sys.executable, str(HERE / "baseline_plain3d.py"), f"--root={data / 'vol'}",
                        f"--budget={budget}", f"--pred={folder / 'plain'}"], folder / "plain.log"),
    }  # fmt: skip
    for arm, proc in procs.items():
        finish(proc, folder / f"{arm}.log")
    trained = {"load_avg": round(max(load_before, os.getloadavg()[0]), 1), "wall_s": round(time.monotonic() - begun)}
    (folder / "trained.json").write_text(json.dumps(trained))
    return score_cell(cell, out, side)


def score_cell(cell: str, out: Path, side: int | None) -> dict:
    """Evaluate and score a cell whose three runs have finished (``--score-only`` redoes just this)."""
    name, budget = cell.split(":")
    data, folder = prepare(name, out, side), out / "runs" / cell.replace(":", "_")
    trained = json.loads((folder / "trained.json").read_text())
    vol_pred, vol_metrics = evaluate(folder / "vol", folder / "vol_eval.log")
    planes_pred, planes_metrics = evaluate(folder / "planes", folder / "planes_eval.log")
    names = sorted(p.stem for p in (data / "vol" / "test" / "masks").glob("*.tif"))
    truths = [read(data / "vol" / "test" / "masks" / f"{n}.tif", mask=True) for n in names]
    classes = count_classes(data / "vol")
    preds = {
        "vol": [read_prediction(vol_pred, n) for n in names],
        "planes": [stack_planes(planes_pred, n) for n in names],
        "plain": [tifffile.imread(folder / "plain" / f"{n}.tif") for n in names],
    }
    plain = json.loads((folder / "plain.log").read_text().strip().splitlines()[-1])
    steps = {"vol": vol_metrics["steps"], "planes": planes_metrics["steps"], "plain": plain["steps"]}
    arms = {}
    for arm, volumes in preds.items():
        per_volume = score_volumes(volumes, truths, classes)
        arms[arm] = {"steps": steps[arm], "dice": round(float(np.mean(per_volume)), 4), "per_volume": per_volume}
    arms["vol"].update(plan=plan_of(folder / "vol"), eval_dice=round(vol_metrics["test/dice"], 4))
    arms["planes"]["plan"] = plan_of(folder / "planes")
    return {"cell": cell, "dataset": name, "budget": int(budget), "side": side, "volumes": names,
            **trained, **arms}  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | budget | load | 3D plan | steps | Dice | 2D plan | steps | Dice | plain 3D: steps | Dice "
        "| 3D won |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        v, p, b = row["vol"], row["planes"], row["plain"]
        won = "yes" if v["dice"] > max(p["dice"], b["dice"]) else "**no**"
        cells = [row["dataset"] + (f" (side {row['side']})" if row["side"] else ""), f"{row['budget']} s",
                 row["load_avg"], v["plan"], v["steps"], f"{v['dice']:.3f}", p["plan"], p["steps"],
                 f"{p['dice']:.3f}", b["steps"], f"{b['dice']:.3f}", won]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="datasets, runs and results.jsonl go here")
    parser.add_argument("--cells", nargs="+", default=[f"{n}:600" for n in DATASETS], help="dataset:budget")
    parser.add_argument("--side", type=int, default=None, help="cut volumes to S x S in (y, x): a quick check")
    parser.add_argument("--totalseg", type=Path, default=TOTALSEG, help="totalsegmentator-2.18.0.tar.gz (abct)")
    args = parser.parse_args()
    globals()["TOTALSEG"] = args.totalseg
    if args.out.resolve().is_relative_to(HERE.parent):
        raise SystemExit(f"--out {args.out} is inside the repository; choose a folder outside it (e.g. /tmp/vols).")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = {json.loads(line)["cell"]: json.loads(line) for line in results.read_text().splitlines()} if (
        results.exists()) else {}  # fmt: skip
    for cell in args.cells:
        if cell.split(":")[0] not in DATASETS:
            raise SystemExit(f"cell {cell!r}: the dataset is one of {', '.join(DATASETS)}.")
        if cell not in done:
            trained = (args.out / "runs" / cell.replace(":", "_") / "trained.json").exists()
            done[cell] = (score_cell if trained else run_cell)(cell, args.out, args.side)
            with results.open("a") as handle:
                handle.write(json.dumps(done[cell]) + "\n")
            print(table([done[cell]]).splitlines()[-1], flush=True)
    print(table([done[cell] for cell in args.cells]))


if __name__ == "__main__":
    main()
