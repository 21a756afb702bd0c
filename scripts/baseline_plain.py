"""A page of plain PyTorch to compare unet-train against (issue 19): what the product must beat.

A seed-style UNet (width 16, depth 4, batch norm), BCE + soft Dice (cross-entropy + Dice for more
classes), Adam with a cosine over the time budget, random 256 px crops with flips and 90-degree
rotations, images read with per-image 1-99.8 percentile scaling (grey repeated to 3 channels).
Scores ``<root>/test`` as unet-eval does (Dice and IoU per image and foreground class, a class absent
from both scoring 1, averaged over the classes and then the images; also Dice pooled over the
images) and prints one JSON line.

With ``--instances DIR`` the masks are object ids (issue 26): the UNet learns the foreground (ids > 0) with
BCE + Dice, and each test image's objects come from the textbook scikit-image recipe (distance transform,
``peak_local_max`` seeds at least ``MIN_DISTANCE`` px apart, watershed of the negated distance inside the
foreground), written to ``DIR/<stem>_labels.tif`` for ``scripts/bench_objects.py`` to score.

    python scripts/baseline_plain.py --root /work/shared/data/usgra-seg --budget 180
    python scripts/baseline_plain.py --root /tmp/objects/dsb/instances --budget 600 --instances /tmp/plain-labels
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import label
from skimage.segmentation import watershed
from torch import nn

MIN_DISTANCE = 5  # px between two seeds: the scikit-image gallery's choice for touching discs


def read(path: Path, mask: bool = False) -> np.ndarray:
    array = np.asarray(tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else Image.open(path))
    if mask:
        array = array[..., 0] if array.ndim == 3 else array
        return (array == 255).astype(np.int64) if set(np.unique(array).tolist()) <= {0, 255} else array.astype(np.int64)
    array = array[..., :3] if array.ndim == 3 else np.repeat(array[..., None], 3, axis=2)  # grey to 3 channels
    low, high = np.percentile(array, (1, 99.8))
    return np.clip((array - low) / max(high - low, 1e-6), 0, 1).astype(np.float32).transpose(2, 0, 1)


def load(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    names = sorted(p for p in (folder / "images").iterdir() if not p.name.startswith("."))
    masks = {p.stem: p for p in (folder / "masks").iterdir()}
    return [read(p) for p in names], [read(masks[p.stem], mask=True) for p in names]


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))  # fmt: skip


class UNet(nn.Module):
    def __init__(self, cin: int, cout: int, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([block(cin, chans[0])] + [block(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth)])
        self.dec = nn.ModuleList([block(2 * chans[i], chans[i]) for i in range(depth)])
        self.head = nn.Conv2d(chans[0], cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** len(self.up)
        x = F.pad(x, (0, -w % m, 0, -h % m), mode="reflect")
        skips = []
        for i, down in enumerate(self.down):
            x = down(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.dec[i](torch.cat([skips[i], self.up[i](x)], 1))
        return self.head(x)[..., :h, :w]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        probs, onehot = torch.sigmoid(logits), target[:, None].float()
        ce = F.binary_cross_entropy_with_logits(logits, onehot)
    else:
        probs, onehot = logits.softmax(1), F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
        ce = F.cross_entropy(logits, target)
    dice = (2 * (probs * onehot).sum((0, 2, 3)) + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
    return ce + 1 - dice.mean()


def crops(images: list, masks: list, rng: np.random.Generator, size: int, batch: int) -> tuple:
    xs, ys = [], []
    for _ in range(batch):
        i = rng.integers(len(images))
        image, mask = images[i], masks[i]
        s = min(size, *mask.shape)
        y, x = rng.integers(0, mask.shape[0] - s + 1), rng.integers(0, mask.shape[1] - s + 1)
        im, ma = image[:, y : y + s, x : x + s], mask[y : y + s, x : x + s]
        k = int(rng.integers(4))
        im, ma = np.rot90(im, k, (1, 2)), np.rot90(ma, k)
        if rng.random() < 0.5:
            im, ma = im[:, :, ::-1], ma[:, ::-1]
        xs.append(np.ascontiguousarray(im))
        ys.append(np.ascontiguousarray(ma))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def score(preds: list[np.ndarray], truths: list[np.ndarray], classes: int) -> tuple[float, float, float]:
    """Dice and IoU as unet-eval reports them (per image and foreground class, a class absent from both
    scoring 1, mean over the classes, then over the images) and Dice pooled over all images."""
    counts = []
    for pred, truth in zip(preds, truths):
        p, t = (np.stack([a == c for c in range(1, classes)]).reshape(classes - 1, -1) for a in (pred, truth))
        counts.append([(p & t).sum(1), (p | t).sum(1), p.sum(1) + t.sum(1)])
    inter, union, total = (np.array(c, dtype=float) for c in zip(*counts))  # each (images, classes - 1)
    dice = float(np.mean(np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)))
    iou = float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
    pooled = float(np.mean(2 * inter.sum(0) / np.maximum(total.sum(0), 1)))
    return dice, iou, pooled


def distance_watershed(foreground: np.ndarray) -> np.ndarray:
    """Touching objects of a boolean mask split by the textbook watershed of its distance transform."""
    distance = ndi.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=MIN_DISTANCE, labels=label(foreground), exclude_border=False)
    markers = np.zeros(foreground.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground).astype(np.uint16)


def train(images: list, masks: list, classes: int, budget: float) -> tuple[UNet, int, float]:
    """The model trained for ``budget`` seconds, its steps and its training seconds."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = UNet(3, 1 if classes == 2 else classes)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, steps = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < budget:
        for group in optim.param_groups:  # cosine over the budget
            group["lr"] = 1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
        x, y = crops(images, masks, rng, 256, 4)
        optim.zero_grad()
        loss_fn(model(x), y).backward()
        optim.step()
        steps += 1
    return model.eval(), steps, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--instances", type=Path, help="masks are object ids: write <stem>_labels.tif here")
    args = parser.parse_args()
    images, masks = load(args.root)
    if args.instances:
        masks = [(m > 0).astype(np.int64) for m in masks]  # the foreground of the objects
    classes = max(2, max(int(m.max()) for m in masks) + 1)
    model, steps, train_s = train(images, masks, classes, args.budget)
    result = {"method": "baseline_plain", "steps": steps, "train_s": round(train_s, 1)}
    test = sorted(p for p in (args.root / "test" / "images").iterdir() if not p.name.startswith("."))
    preds, truths = [], []
    with torch.no_grad():
        for path, image, truth in zip(test, *load(args.root / "test")):
            logits = model(torch.from_numpy(image)[None])
            preds.append(((logits[0, 0] > 0).long() if classes == 2 else logits[0].argmax(0)).numpy())
            truths.append(truth)
            if args.instances:
                args.instances.mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(args.instances / f"{path.stem}_labels.tif", distance_watershed(preds[-1] > 0))
    if args.instances:
        truths = [(t > 0).astype(np.int64) for t in truths]
    dice, iou, pooled = score(preds, truths, classes)
    result.update({"test/dice": round(dice, 4), "test/iou": round(iou, 4), "test/dice_pooled": round(pooled, 4)})
    if classes > 2:  # each foreground class scored alone, as unet-eval's test/dice_<c>
        for c in range(1, classes):
            alone = score([(p == c) * 1 for p in preds], [(t == c) * 1 for t in truths], 2)[0]
            result[f"test/dice_{c}"] = round(alone, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
