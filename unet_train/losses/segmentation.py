"""Losses on logits for binary (one channel) and multi-class (K channels) segmentation.

Pixels whose target is :data:`~unet_train.labels.IGNORE_INDEX` (unlabelled) count in no term:
each loss averages over the labelled pixels only, and a batch with none gives 0. Without
ignored pixels every loss computes exactly the same numbers as a plain mean.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from unet_train.labels import IGNORE_INDEX, labelled_target, valid_pixels


def _valid_share_inverse(valid: torch.Tensor) -> torch.Tensor:
    """``pixels / labelled pixels``: turns a mean over all pixels into a mean over the labelled ones.

    It is exactly 1.0 when nothing is ignored, so ``(x * valid).mean() * this`` is then bit for bit
    ``x.mean()``: data without ignored pixels trains exactly as before ignore regions existed.
    """
    return valid.numel() / valid.sum().clamp_min(1)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of per-pixel ``values`` over the pixels where ``valid`` (0 when there is none)."""
    return (values * valid).mean() * _valid_share_inverse(valid)


def _probabilities_and_onehot(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and a one-hot target, both (N, C, H, W) and zero at ignored pixels.

    Binary problems use the foreground channel. Zeroing both at unlabelled pixels leaves them out
    of every sum a region loss (Dice, Tversky) takes.
    """
    valid = valid_pixels(target)
    target = labelled_target(target, valid)
    keep = valid.unsqueeze(1).to(logits.dtype)
    if logits.shape[1] == 1:
        return torch.sigmoid(logits) * keep, target.unsqueeze(1).to(logits.dtype) * keep
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    return probs * keep, onehot * keep


class BCELoss(nn.Module):
    """Binary cross-entropy on logits (``C == 1``), cross-entropy for ``C > 1``.

    Args:
        pos_weight: weight of the positive class in the binary case (ignored for ``C > 1``).
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = valid_pixels(target)
        if logits.shape[1] == 1:
            pos_weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
            # Ignored pixels get weight 0; the mean is then rescaled to the labelled pixels.
            loss = F.binary_cross_entropy_with_logits(
                logits.squeeze(1),
                labelled_target(target, valid).to(logits.dtype),
                weight=valid.to(logits.dtype),
                pos_weight=pos_weight,
            )
            return loss * _valid_share_inverse(valid)
        # A sum over the labelled pixels divided by their number: what the mean reduction computes,
        # but 0 rather than NaN for a crop without any labelled pixel.
        loss = F.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX, reduction="sum")
        return loss / valid.sum().clamp_min(1)


class DiceLoss(nn.Module):
    """Soft Dice loss, ``1 - (2 |P∩T| + s) / (|P| + |T| + s)`` per class over the whole batch.

    Args:
        smooth: ``s`` above; keeps the loss defined when a class is absent.
        include_background: for ``C > 1``, whether class 0 counts (binary always scores the foreground).
    """

    def __init__(self, smooth: float = 1.0, include_background: bool = False) -> None:
        super().__init__()
        self.smooth = smooth
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, onehot = _probabilities_and_onehot(logits.float(), target)
        if logits.shape[1] > 1 and not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        denominator = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth)
        return 1 - dice.mean()


class TverskyLoss(nn.Module):
    """Tversky loss (Salehi et al. 2017): Dice with ``alpha`` weighting false positives and ``beta`` false negatives."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.smooth = alpha, beta, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, onehot = _probabilities_and_onehot(logits.float(), target)
        if logits.shape[1] > 1:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dims = (0, 2, 3)
        tp = (probs * onehot).sum(dims)
        fp = (probs * (1 - onehot)).sum(dims)
        fn = ((1 - probs) * onehot).sum(dims)
        index = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return 1 - index.mean()


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by ``(1 - p_t) ** gamma``.

    Args:
        gamma: focusing exponent; 0 gives plain cross-entropy.
        alpha: weight of the positive class in the binary case (``None``: no weighting).
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        valid = valid_pixels(target)
        target = labelled_target(target, valid)
        if logits.shape[1] == 1:
            t = target.to(logits.dtype)
            z = logits.squeeze(1)
            ce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
            p_t = torch.exp(-ce)
            loss = (1 - p_t) ** self.gamma * ce
            if self.alpha is not None:
                loss = loss * (self.alpha * t + (1 - self.alpha) * (1 - t))
            return _masked_mean(loss, valid)
        ce = F.cross_entropy(logits, target.long(), reduction="none")
        p_t = torch.exp(-ce)
        return _masked_mean((1 - p_t) ** self.gamma * ce, valid)


class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * Dice``: pixel-wise calibration plus overlap."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.bce, self.dice = BCELoss(), DiceLoss(smooth=smooth)
        self.bce_weight, self.dice_weight = bce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(logits, target)


def border_weight_map(
    mask: np.ndarray, w0: float = 10.0, sigma: float = 5.0, tol: float = 1e-4, valid: np.ndarray | None = None
) -> np.ndarray:
    """The UNet paper's weight map (Ronneberger et al. 2015, eq. 2) for one binary mask.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 sigma**2))`` on background pixels, where
    ``d1``/``d2`` are the distances to the nearest and second-nearest object (connected component
    of the foreground) and ``w_c`` balances class frequencies. Foreground pixels get ``w_c``.

    Each object's distance transform is computed only in its bounding box grown by the reach
    beyond which the border term is below ``tol`` (``w0 * exp(-reach**2 / (2 sigma**2)) <= tol``):
    inside that window the distances are exact, outside it the term is at most ``tol``. On ISBI
    crops (about a hundred cells each) that is an order of magnitude less work than whole-image
    transforms.
    """
    mask = np.asarray(mask) > 0
    labelled = np.ones_like(mask) if valid is None else np.asarray(valid, dtype=bool)
    mask = mask & labelled
    labels, n = ndimage.label(mask)
    frequency = mask.sum() / max(int(labelled.sum()), 1)
    class_weight = np.where(mask, 0.5 / max(frequency, 1e-6), 0.5 / max(1 - frequency, 1e-6))
    class_weight = class_weight / (class_weight[labelled].mean() if labelled.any() else 1.0)
    if n < 2 or w0 <= 0:
        return class_weight.astype(np.float32)
    reach = int(np.ceil(sigma * np.sqrt(2 * np.log(max(w0 / tol, 1.0)))))
    height, width = mask.shape
    d1 = np.full(mask.shape, np.inf)
    d2 = np.full(mask.shape, np.inf)
    for label, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        y0, y1 = max(rows.start - reach, 0), min(rows.stop + reach, height)
        x0, x1 = max(cols.start - reach, 0), min(cols.stop + reach, width)
        dist = ndimage.distance_transform_edt(labels[y0:y1, x0:x1] != label)
        near, second = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]  # views: updated in place
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)) * (~mask)
    return (class_weight + border).astype(np.float32)


class WeightedBCELoss(nn.Module):
    """BCE weighted per pixel by :func:`border_weight_map`, which pushes the model to separate touching objects.

    The objects are the connected components of class ``object_class`` (for ISBI membranes the
    cell interiors, class 0 of the membrane target). The maps come with the batch when the loader
    computed them (``weight``: ``fit`` has the training loader's workers call :meth:`sample_weight`
    on each augmented mask); otherwise they are computed here, on the CPU.
    """

    def __init__(self, w0: float = 10.0, sigma: float = 5.0, object_class: int = 0) -> None:
        super().__init__()
        self.w0, self.sigma, self.object_class = w0, sigma, object_class

    def sample_weight(self, mask: np.ndarray) -> np.ndarray:
        """The weight map of one ``(H, W)`` label mask, as the loss uses it (from its labelled pixels alone)."""
        mask = np.asarray(mask)
        return border_weight_map(mask == self.object_class, self.w0, self.sigma, valid=mask != IGNORE_INDEX)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            weight = torch.from_numpy(np.stack([self.sample_weight(m) for m in target.cpu().numpy()]))
            weight = weight.to(logits.device)
        valid = valid_pixels(target)
        target = labelled_target(target, valid)
        if logits.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(logits.squeeze(1).float(), target.float(), reduction="none")
        else:
            loss = F.cross_entropy(logits.float(), target.long(), reduction="none")
        return _masked_mean(loss * weight, valid)
