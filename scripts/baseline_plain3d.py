"""A page of plain PyTorch 3D UNet to compare unet-train's volume plans against (issue 25).

What one writes by hand, mirroring ``baseline_plain.py``'s recipe in 3D: the plain 3D UNet of
``scripts/bench/plain3d.py`` (width 16, depth 3, 2x2x2 pooling, batch norm), BCE + soft Dice
(cross-entropy + Dice for more classes), Adam with a cosine over the time budget, random
16 x 64 x 64 crops (cut to the volume, on the 8-voxel pooling grid) with flips along every axis and
90-degree turns of the (y, x) plane, each volume scaled by its 1-99.8 percentiles. Reads
``<root>/images/*.tif`` and ``<root>/masks/*.tif`` (the same names) for training and
``<root>/test/{images,masks}`` for scoring; predicts each test volume in (y, x) tiles of 256 px with
a 16 px margin, all planes at once, and scores it as ``baseline_plain.score`` does (Dice and IoU per
volume and foreground class, a class absent from both scoring 1). Prints one JSON line; ``--pred DIR``
also writes each predicted label volume as ``DIR/<name>.tif``.

    OMP_NUM_THREADS=1 python scripts/baseline_plain3d.py --root /tmp/vols/isbi/vol --budget 600
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_plain import score
from bench.plain3d import PlainUNet3D

GRID = 8  # 2**depth: every axis of a crop or a forward is a multiple of it


def read(path: Path, mask: bool = False) -> np.ndarray:
    """A (z, y, x) volume: class indices for a mask ({0,255} read as {0,1}), else scaled to [0, 1]."""
    array = np.asarray(tifffile.imread(path))
    if mask:
        return (array == 255).astype(np.int64) if set(np.unique(array).tolist()) <= {0, 255} else array.astype(np.int64)
    low, high = np.percentile(array, (1, 99.8))
    return np.clip((array - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)


def load(folder: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    names = sorted(p.name for p in (folder / "images").glob("*.tif"))
    return names, [read(folder / "images" / n) for n in names], [read(folder / "masks" / n, mask=True) for n in names]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        probs, onehot = torch.sigmoid(logits), target[:, None].float()
        ce = F.binary_cross_entropy_with_logits(logits, onehot)
    else:
        probs, onehot = logits.softmax(1), F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
        ce = F.cross_entropy(logits, target)
    axes = (0, 2, 3, 4)
    dice = (2 * (probs * onehot).sum(axes) + 1) / (probs.sum(axes) + onehot.sum(axes) + 1)
    return ce + 1 - dice.mean()


def pad_to_grid(volume: np.ndarray) -> np.ndarray:
    """Pad each axis at its end to a multiple of GRID (mirrored where the axis is long enough)."""
    pads = [(0, -n % GRID) for n in volume.shape]
    return np.pad(volume, pads, mode="reflect" if all(p < n for (_, p), n in zip(pads, volume.shape)) else "edge")


def crops(images: list, masks: list, rng: np.random.Generator, size: tuple[int, ...], batch: int) -> tuple:
    xs, ys = [], []
    for _ in range(batch):
        i = rng.integers(len(images))
        image, mask = images[i], masks[i]  # padded to the grid once, in main
        s = [max(GRID, min(c, n) // GRID * GRID) for c, n in zip(size, mask.shape)]
        o = [rng.integers(0, n - c + 1) for c, n in zip(s, mask.shape)]
        window = tuple(slice(a, a + c) for a, c in zip(o, s))
        im, ma = image[window], mask[window]
        for axis in range(3):
            if rng.random() < 0.5:
                im, ma = np.flip(im, axis), np.flip(ma, axis)
        if s[1] == s[2]:  # in-plane turns keep the crop's shape only on a square plane
            k = int(rng.integers(4))
            im, ma = np.rot90(im, k, (1, 2)), np.rot90(ma, k, (1, 2))
        xs.append(np.ascontiguousarray(im)[None])
        ys.append(np.ascontiguousarray(ma))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def predict(model: torch.nn.Module, volume: np.ndarray, tile: int = 256, margin: int = 16) -> np.ndarray:
    """Label volume of ``volume``: all planes at once, (y, x) tiles of ``tile`` px read with ``margin`` px around."""
    depth, height, width = volume.shape
    out = np.zeros(volume.shape, dtype=np.uint8)
    with torch.no_grad():
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                y0, x0 = max(0, y - margin), max(0, x - margin)
                y1, x1 = min(height, y + tile + margin), min(width, x + tile + margin)
                piece = pad_to_grid(volume[:, y0:y1, x0:x1])
                logits = model(torch.from_numpy(piece)[None, None])[0, :, :depth, : y1 - y0, : x1 - x0]
                labels = (logits[0] > 0).long() if logits.shape[0] == 1 else logits.argmax(0)
                inner = labels[:, y - y0 : y - y0 + tile, x - x0 : x - x0 + tile].numpy()
                out[:, y : y + inner.shape[1], x : x + inner.shape[2]] = inner
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--crop", type=int, nargs=3, default=[16, 64, 64], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--pred", type=Path, default=None, help="write each predicted test volume here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    _, images, masks = load(args.root)
    images, masks = [pad_to_grid(v) for v in images], [pad_to_grid(m) for m in masks]
    classes = max(2, max(int(m.max()) for m in masks) + 1)
    model = PlainUNet3D(1, 1 if classes == 2 else classes, base=args.width, depth=3)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, steps = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < args.budget:
        for group in optim.param_groups:  # cosine over the budget
            group["lr"] = 1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * elapsed / args.budget)))
        x, y = crops(images, masks, rng, tuple(args.crop), args.batch)
        optim.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optim.step()
        steps += 1
    train_s = time.monotonic() - start
    model.eval()
    names, test_images, truths = load(args.root / "test")
    preds = [predict(model, image) for image in test_images]
    if args.pred is not None:
        args.pred.mkdir(parents=True, exist_ok=True)
        for name, pred in zip(names, preds):
            tifffile.imwrite(args.pred / name, pred)
    dice, iou, pooled = score(preds, truths, classes)
    print(json.dumps({"method": "baseline_plain3d", "steps": steps, "train_s": round(train_s, 1),
                      "final_loss": round(float(loss.detach()), 4) if steps else None,
                      "test/dice": round(dice, 4), "test/iou": round(iou, 4),
                      "test/dice_pooled": round(pooled, 4)}))  # fmt: skip


if __name__ == "__main__":
    main()
