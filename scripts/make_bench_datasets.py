"""Write the folder datasets that ``scripts/compare_plan.py`` is run on (issue 19's per-dataset table).

Each dataset is a ``data=folder`` tree (``images/``, ``masks/``, ``test/images/``, ``test/masks/``)
under ``--out``; nothing is downloaded and nothing is written into the project:

- ``isbi``: the real ISBI 2012 training stack (``../shared/data/isbi2012``), slices 0-19 for
  training and 20-29 as the test split (the challenge's own test labels are not public); masks
  mark the membranes as class 1, as ``data=isbi`` does (add ``data.foreground=membrane`` so that
  V-Rand/V-Info segment the cells they enclose).
- ``fluo16``: generated 16-bit fluorescence-like nuclei (``unet_train.data.synthetic``): objects
  12-40 counts above a background of 800-1,500 counts that changes from image to image, noise of
  10 counts, an illumination gradient and hot pixels at 65535. 80 training and 20 test images of
  256 x 320.
- ``vessels``: generated RGB fundus-like images: an orange-red disc with a dark vignette and thin
  branching dark vessels (1-4 px, about a tenth of the pixels), colour noise. 24 training and 10
  test images of 384 x 384.

- ``dsb``: the 574 real nucleus images of ``../shared/data/dsb2018-nuclei`` (varied sizes, grey and
  RGB(A)), their instance labels turned into semantic masks (nucleus = 1); its own ``train.txt`` /
  ``test.txt`` split (462 / 112): many small images.
- ``vnc``: the real serial-section EM volume ``../shared/data/drosophila-vnc`` cut into its 1024 x 1024
  sections, 5 classes (membrane, mitochondria, synapses, ...; some rare); 15 training and 5 test
  sections: few large images, multi-class.

The ultrasound set ``../shared/data/usgra-seg`` is used in place (it has this layout already).

    python scripts/make_bench_datasets.py --out /tmp/bench-data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from unet_train.data.synthetic import make_fluorescence_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_pair(root: Path, split: str, name: str, image: np.ndarray, mask: np.ndarray, suffix: str) -> None:
    base = root / split if split != "train" else root
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    if suffix == ".tif":
        tifffile.imwrite(base / "images" / f"{name}.tif", image)
    else:
        Image.fromarray(image).save(base / "images" / f"{name}{suffix}")
    Image.fromarray(mask.astype(np.uint8)).save(base / "masks" / f"{name}.png")


def make_isbi(root: Path, isbi: Path) -> None:
    volume = tifffile.imread(isbi / "train-volume.tif")
    labels = tifffile.imread(isbi / "train-labels.tif")
    for i, (image, label) in enumerate(zip(volume, labels)):
        write_pair(root, "train" if i < 20 else "test", f"slice{i:02d}", image, (label == 0), ".png")


def make_fluo16(root: Path, rng: np.random.Generator) -> None:
    for i in range(100):
        image, mask = make_fluorescence_image(
            rng, 256, 320, num_objects=int(rng.integers(6, 16)), background=float(rng.uniform(800, 1500)),
            contrast=(12.0, 40.0), radius=(6.0, 14.0), noise=10.0, saturated=5,
        )  # fmt: skip
        write_pair(root, "train" if i < 80 else "test", f"nuclei{i:03d}", image, mask, ".tif")


def vessel_tree(rng: np.random.Generator, size: int) -> np.ndarray:
    """Branching random walks from near the disc's centre, drawn 1-4 px wide."""
    mask = np.zeros((size, size), dtype=bool)
    stack = [(size / 2 + rng.normal(0, 10), size / 2 + rng.normal(0, 10), rng.uniform(0, 2 * np.pi), 4.0)]
    for _ in range(int(rng.integers(3, 6))):
        stack.append((stack[0][0], stack[0][1], rng.uniform(0, 2 * np.pi), 4.0))
    while stack:
        y, x, angle, width = stack.pop()
        for _ in range(int(rng.integers(80, 240))):
            angle += rng.normal(0, 0.08)
            y, x = y + np.sin(angle), x + np.cos(angle)
            if not (0 <= y < size and 0 <= x < size):
                break
            r = max(round(width / 2), 0)
            mask[max(int(y) - r, 0) : int(y) + r + 1, max(int(x) - r, 0) : int(x) + r + 1] = True
            if width > 1.2 and rng.random() < 0.012 and len(stack) < 30:
                stack.append((y, x, angle + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0), width * 0.7))
        width *= 0.9
    return mask


def make_vessels(root: Path, rng: np.random.Generator, size: int = 384) -> None:
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = np.hypot(rows - size / 2, cols - size / 2) / (size / 2)
    disc = radius < 0.95
    for i in range(34):
        mask = vessel_tree(rng, size) & disc
        base = np.array([rng.uniform(170, 220), rng.uniform(70, 110), rng.uniform(20, 45)], dtype=np.float32)
        shade = (1.0 - 0.45 * radius**2)[..., None] * base
        texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 6)[..., None] * 12
        darker = ndimage.gaussian_filter(mask.astype(np.float32), 0.7)[..., None] * np.array([0.35, 0.55, 0.4])
        image = shade * (1 - darker) + texture + rng.normal(0, 6, (size, size, 3))
        image = np.where(disc[..., None], image, rng.normal(4, 2, (size, size, 3)))
        image = np.clip(image, 0, 255).astype(np.uint8)
        write_pair(root, "train" if i < 24 else "test", f"eye{i:02d}", image, mask, ".png")


def make_dsb(root: Path, dsb: Path) -> None:
    for split in ("train", "test"):
        for stem in (dsb / f"{split}.txt").read_text().split():
            image = np.asarray(Image.open(dsb / "images" / f"{stem}.png"))
            image = image[..., :3] if image.ndim == 3 else image  # the alpha channel of these PNGs is opaque
            labels = tifffile.imread(dsb / "labels" / f"{stem}.tif")
            write_pair(root, split, stem[:16], np.ascontiguousarray(image), labels > 0, ".png")


def make_vnc(root: Path, vnc: Path) -> None:
    for split in ("train", "test"):
        for stem in (vnc / f"{split}.txt").read_text().split():
            volume = tifffile.imread(vnc / "images" / f"{stem}.tif")
            labels = tifffile.imread(vnc / "masks" / f"{stem}.tif")
            for z, (image, mask) in enumerate(zip(volume, labels)):
                write_pair(root, split, f"{stem}_{z:02d}", image, mask, ".png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--isbi", type=Path, default=SHARED / "isbi2012")
    args = parser.parse_args()
    make_isbi(args.out / "isbi", args.isbi)
    make_fluo16(args.out / "fluo16", np.random.default_rng(0))
    make_vessels(args.out / "vessels", np.random.default_rng(1))
    make_dsb(args.out / "dsb", SHARED / "dsb2018-nuclei")
    make_vnc(args.out / "vnc", SHARED / "drosophila-vnc")
    for name in ("isbi", "fluo16", "vessels", "dsb", "vnc"):
        masks = [np.asarray(Image.open(p)) for p in sorted((args.out / name / "masks").glob("*.png"))]
        share = float(np.mean([np.mean(m > 0) for m in masks]))
        print(f"{args.out / name}: {len(masks)} training pairs, foreground share {share:.3f}")


if __name__ == "__main__":
    main()
