"""What ``unet-eval`` adds to the evaluation loop: challenge metrics, HD95 and error overlays.

The figures that need the probability map (the V-Rand / V-Info threshold sweep) are computed
from float32 probabilities on the CPU, image by image, as the loop hands each batch over.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from unet_train.data.sections import SectionDataset
from unet_train.data.volume_data import spacing_label
from unet_train.engine.evaluate import EvalResult, probabilities
from unet_train.engine.tensorboard import display_grey
from unet_train.labels import valid_pixels
from unet_train.metrics import RandInfoSweep, hd95, predict_labels
from unet_train.safe_io import make_folder, write_png

# Error colours of the overlay: true positive white, false positive red, false negative blue;
# unlabelled (ignored) pixels grey.
TP, FP, FN, IGNORED = (255, 255, 255), (255, 0, 0), (0, 0, 255), (96, 96, 96)


def overlay(image: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor, num_classes: int) -> np.ndarray:
    """One uint8 RGB panel ``(H, 4W, 3)``: image | ground truth | prediction | errors.

    Errors: for a binary problem false positives red and false negatives blue (true positives white);
    with more classes every wrong pixel is red. Unlabelled pixels are mid-grey in the ground truth
    and grey in the errors.
    """
    grey = (display_grey(image) * 255).to(torch.uint8).numpy()
    scale = 255 // max(num_classes - 1, 1)
    truth_np, pred_np = truth.numpy().astype(np.int64), pred.numpy().astype(np.int64)
    valid = valid_pixels(truth).numpy()
    errors = np.zeros((*truth_np.shape, 3), dtype=np.uint8)
    if num_classes <= 2:
        errors[(pred_np == 1) & (truth_np == 1)] = TP
        errors[(pred_np == 1) & (truth_np == 0)] = FP
        errors[(pred_np == 0) & (truth_np == 1)] = FN
    else:
        errors[pred_np != truth_np] = FP
    errors[~valid] = IGNORED
    truth_shown = np.where(valid, truth_np * scale, 128)
    panels = [np.repeat(a[..., None], 3, axis=2) for a in (grey, truth_shown, (pred_np * scale))]
    return np.concatenate([p.astype(np.uint8) for p in panels] + [errors], axis=1)


# The length units a volume's spacing may be in (OME-NGFF names, as the readers spell them), in metres
METRES = {"angstrom": 1e-10, "picometer": 1e-12, "nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3,
          "centimeter": 1e-2, "meter": 1.0, "kilometer": 1e3, "inch": 0.0254}  # fmt: skip


def volume_spacing(dataset: Any) -> tuple[dict[str, tuple[float, ...]], str]:
    """The voxel size of each volume a dataset serves, by name, and the unit HD95 is then in (the cases' unit,
    :func:`~unet_train.data.volume_data.spacing_label`); ``({}, "pixel")`` for a dataset of 2D images, the
    sections of volumes (2.5D) included.

    Volumes in different length units (a TIFF stack in micrometres, a NIfTI in millimetres) have their spacing
    converted to the unit most of them state, so that their HD95 figures, and the mean of them, are in one
    unit; where a volume states no unit, nothing converts and the unit is ``mixed units``
    (:func:`volume_units` then names each volume's own).
    """
    cases = getattr(dataset, "cases", None)
    if not cases or isinstance(dataset, SectionDataset):  # sections of volumes (2.5D) are scored as 2D images
        return {}, "pixel"
    spacing = {case.name: tuple(case.spacing) for case in cases}
    labels = [spacing_label(case.spacing, case.unit) for case in cases]
    if len(set(labels)) == 1:
        return spacing, labels[0]
    if not all(label in METRES for label in labels):
        return spacing, "mixed units"
    common = Counter(labels).most_common(1)[0][0]
    for case, label in zip(cases, labels, strict=True):
        spacing[case.name] = tuple(float(side) * METRES[label] / METRES[common] for side in case.spacing)
    return spacing, common


def volume_units(dataset: Any) -> dict[str, str]:
    """Each volume's own unit by name (:func:`~unet_train.data.volume_data.spacing_label`), for the rows of
    volumes whose units :func:`volume_spacing` could not bring to one."""
    return {case.name: spacing_label(case.spacing, case.unit) for case in getattr(dataset, "cases", None) or []}


class EvalReport:
    """Per-image extras for ``unet-eval``: V-Rand/V-Info sweep and HD95 (binary problems), overlays.

    A volume ``(D, H, W)`` gets V-Rand/V-Info per z section averaged (``vrand``, ``vinfo``, as the ISBI
    challenge scored its stack) and as one 3D segmentation (``vrand_3d``, ``vinfo_3d``), and its HD95 in the
    units of its voxel spacing.

    Args:
        num_classes: classes of the problem (2 = binary, one logit channel).
        boundary_positive: whether the positive class is the border class of the V-Rand/V-Info
            segmentation (ISBI with ``foreground: membrane``); otherwise the negative class is.
        overlay_dir: folder for overlay PNGs (None: none written).
        writer: TensorBoard writer for the same overlays (None: none logged).
        spacing: each volume's voxel size ``(z, y, x)`` by name (:func:`volume_spacing`); a volume not in it,
            and every 2D image, is measured in pixels (voxels).
    """

    def __init__(
        self,
        num_classes: int,
        boundary_positive: bool = True,
        overlay_dir: Path | None = None,
        writer: SummaryWriter | None = None,
        spacing: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.binary = num_classes <= 2
        self.num_classes = num_classes
        self.boundary_positive = boundary_positive
        self.overlay_dir = overlay_dir
        self.writer = writer
        self.spacing = dict(spacing or {})
        self.sweep = RandInfoSweep()
        self.sweep_3d = RandInfoSweep(suffix="_3d")  # volumes only
        self.hd95: list[float] = []
        if overlay_dir is not None:
            make_folder(overlay_dir, overlay_dir.parent)

    def on_batch(self, batch: dict[str, Any], logits: torch.Tensor) -> None:
        """Score and draw each labelled image of a batch (``logits`` float32 on the CPU)."""
        if "mask" not in batch:
            return
        prob = probabilities(logits)
        labels = predict_labels(logits)
        for i, name in enumerate(batch["name"]):
            truth = batch["mask"][i].cpu()
            if self.binary:
                positive = prob[i, 0].numpy()
                valid = valid_pixels(truth).numpy()  # unlabelled pixels count in neither figure
                truth_np = (truth == 1).numpy()
                boundary = positive if self.boundary_positive else 1.0 - positive
                cells = ~truth_np if self.boundary_positive else truth_np
                spacing = self.spacing.get(name) if truth.dim() == 3 else None
                if truth.dim() == 3:  # a volume: per section as the challenge, and in 3D
                    self.sweep.add_sections(boundary, cells, valid)
                    self.sweep_3d.add(boundary, cells, valid, spacing)
                else:
                    self.sweep.add(boundary, cells, valid)
                self.hd95.append(hd95(labels[i].numpy().astype(bool), truth_np, valid, spacing))
            if self.overlay_dir is not None or self.writer is not None:
                image, shown, pred = batch["image"][i], truth, labels[i]
                if truth.dim() == 3:  # a volume: its middle plane
                    middle = truth.shape[0] // 2
                    image, shown, pred = image[:, middle], truth[middle], pred[middle]
                panel = overlay(image, shown, pred, max(self.num_classes, 2))
                if self.overlay_dir is not None:
                    write_png(self.overlay_dir / f"{name}.png", panel, root=self.overlay_dir.parent)
                if self.writer is not None:
                    self.writer.add_image(f"eval/{name}", panel, dataformats="HWC")

    def finish(self, result: EvalResult) -> dict[str, float]:
        """Add the extras to ``result`` (per-image columns and means); returns the added means."""
        if not self.binary or not result.per_image:
            return {}
        added = {**self.sweep.best(), **self.sweep_3d.best(), "hd95": float(np.mean(self.hd95))}
        volumes = self.sweep_3d.per_slice() or [{}] * len(self.hd95)
        for row, scores, scores_3d, distance in zip(
            result.per_image, self.sweep.per_slice(), volumes, self.hd95, strict=True
        ):
            row.update(scores)
            row.update(scores_3d)
            row["hd95"] = distance
        result.metrics.update(added)
        return added
