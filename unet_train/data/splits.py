"""How datasets are split: index ranges (``"0-24,30"``), k-fold blocks, and the checks that splits are disjoint."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unet_train.errors import ConfigError

log = logging.getLogger(__name__)

# Splits that must not share images: validating or testing on training images scores too well.
DISJOINT = ("train", "val", "test")


def val_count(n: int, val_fraction: float) -> int:
    """How many of ``n`` items validate: ``val_fraction`` of them, at least one when it is > 0, never all."""
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n_val >= n:
        fix = "add another" if n < 2 else "lower data.val_fraction"
        raise ConfigError(
            f"data.val_fraction={val_fraction} leaves no training item out of {n}: "
            f"validation takes at least one; {fix}."
        )
    return n_val


def random_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and val indices of ``n`` items: a ``val_fraction`` (at least one when > 0) shuffled with ``seed``."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = val_count(n, val_fraction)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def typical_split(shares: Sequence[Mapping[int, float]], val_fraction: float) -> tuple[list[int], list[int]]:
    """Train and val indices of items described by their label shares (value -> share of the labelled voxels): the
    ``val_fraction`` (at least one) whose shares lie nearest (L1) the items' median share of every value validate,
    ties to the earlier item. An item without shares (nothing labelled: all ``ignore_index``) has no voxel to
    score: it is left out of the median and validates last.

    A random pick of one or two of a handful of volumes can hold out one unlike the rest (a block of nearly only
    background), whose validation score swings from epoch to epoch and picks ``best.pt`` by chance; the most
    typical volumes score what the rest hold.
    """
    n = len(shares)
    n_val = val_count(n, val_fraction)
    values = sorted({v for share in shares for v in share})
    table = np.array([[share.get(v, 0.0) for v in values] for share in shares], dtype=np.float64).reshape(n, -1)
    labelled = [i for i in range(n) if shares[i]] or list(range(n))
    distance = np.abs(table - np.median(table[labelled], axis=0)).sum(axis=1)
    order = sorted(range(n), key=lambda i: (not shares[i], distance[i], i))
    return sorted(order[n_val:]), sorted(order[:n_val])


def kfold_indices(total: int, fold: int, num_folds: int) -> tuple[list[int], list[int]]:
    """Train and val indices of fold ``fold`` of ``num_folds`` over ``0..total-1``.

    The items are cut, in their order, into ``num_folds`` contiguous blocks whose sizes differ by
    at most one (``numpy.array_split``); fold ``k`` validates on block ``k`` and trains on the rest.
    Contiguous blocks keep neighbours together (adjacent slices of a stack, files named alike),
    so that near-duplicates fall on one side. The val parts of the folds are disjoint and cover
    every item once.
    """
    if not 0 <= fold < num_folds:
        raise ConfigError(f"data.fold={fold} must be in 0..{num_folds - 1} (data.num_folds={num_folds}).")
    if num_folds > total:
        raise ConfigError(f"data.num_folds={num_folds} is more than the {total} items; choose data.num_folds<={total}.")
    blocks = np.array_split(np.arange(total), num_folds)
    val = [int(i) for i in blocks[fold]]
    taken = set(val)
    return [i for i in range(total) if i not in taken], val


def parse_indices(spec: Sequence[int] | str, total: int, what: str) -> list[int]:
    """Slice indices from a list (``[25, 26]``) or a range string (``"0-24"``, ``"0-4,10"``)."""
    if isinstance(spec, str):
        indices: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                start, stop = (int(p) for p in part.split("-", 1))
                indices.extend(range(start, stop + 1))
            elif part:
                indices.append(int(part))
    else:
        indices = [int(i) for i in spec]
    bad = [i for i in indices if not 0 <= i < total]
    if bad:
        raise ConfigError(f"{what} has indices {bad} outside 0..{total - 1}.")
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        raise ConfigError(f"{what}={spec} lists slice(s) {format_indices(repeated)} more than once; list each once.")
    return indices


def format_indices(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (sorted, runs as ranges): the form ``parse_indices`` reads."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            run = ordered[start:i]
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
            start = i
    return ",".join(parts)


def check_disjoint(train: Sequence[int], val: Sequence[int], where: str) -> None:
    """Refuse training and validation indices that share an element; ``where`` names the settings."""
    shared = sorted(set(train) & set(val))
    if shared:
        raise ConfigError(
            f"{where} share slice(s) {format_indices(shared)}: a model validated on its training slices scores "
            "too well; make the two disjoint."
        )


def _digest(image: np.ndarray) -> bytes:
    """A hash of an image's pixels, shape and dtype: equal images, equal digests."""
    h = hashlib.blake2b(f"{image.shape}{image.dtype}".encode(), digest_size=16)
    h.update(np.ascontiguousarray(image).tobytes())
    return h.digest()


def check_shared_images(owner: str, name: str, split: Any, loaded: Mapping[str, Any]) -> None:
    """Refuse train and val splits that share image names; warn about identical images across splits.

    ``split`` (a :class:`~unet_train.data.base.Split` of ``owner``, the dataset's class name) is checked
    against the splits already ``loaded``. Datasets split by configuration (slices, folds, fractions)
    check their own settings with a message naming them; this is the backstop for every dataset.
    """
    if name not in DISJOINT:
        return
    for other_name in DISJOINT:
        other = loaded.get(other_name)
        if other is None or other_name == name:
            continue
        if {name, other_name} == {"train", "val"}:
            shared = sorted(set(split.names) & set(other.names))
            if shared:
                raise ConfigError(
                    f"The train and val splits of {owner} share {len(shared)} image(s) "
                    f"({', '.join(shared[:10])}); change the split settings so that no image is in both."
                )
        digests = {_digest(image): n for image, n in zip(split.images, split.names)}
        same = [(digests[d], n) for image, n in zip(other.images, other.names) if (d := _digest(image)) in digests]
        if same:
            pairs = ", ".join(f"{a} = {b}" for a, b in same[:5]) + (", ..." if len(same) > 5 else "")
            log.warning(
                "The %s and %s splits hold %d identical image(s) (%s): their scores are not independent.",
                name, other_name, len(same), pairs,
            )  # fmt: skip
