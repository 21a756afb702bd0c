"""Post-processing tuned on validation: a small grid searched for the best mean object metric, in bounded time.

The model's predicted targets of the validation images are computed once; each grid point only re-runs the
post-processing (a watershed or components, milliseconds to a second per image) and the object metric. The
grid is visited coarse-first (every other value of every parameter, then the rest), so a time limit that cuts
the search still leaves a spread of the grid tried; a point is started only if it would end inside the limit.
Ties keep the earlier point, so the default wins a tie.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from unet_train.metrics.objects import object_scores
from unet_train.objects import postprocess

log = logging.getLogger(__name__)

# What each representation's post-processing takes from the model's outputs, and the grid it is tuned over.
GRIDS: dict[str, dict[str, list[Any]]] = {
    "boundary": {
        "threshold": [0.5, 0.3, 0.4, 0.6, 0.7],
        "seed_threshold": [0.5, 0.3, 0.4, 0.6, 0.7, 0.8],
        "min_size": [1, 4, 16, 32, 64],
    },
    "distance": {
        "threshold": [0.5, 0.3, 0.4, 0.6, 0.7],
        "seed_threshold": [0.5, 0.3, 0.4, 0.6, 0.7, 0.8],
        "min_size": [1, 4, 16, 32, 64],
    },
    "affinities": {"threshold": [0.5, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95], "min_size": [1, 4, 16, 32, 64]},
}


def apply(representation: str, outputs: dict[str, Any], params: dict[str, Any]) -> NDArray[np.uint32]:
    """Instances of one image from the model's ``outputs`` (probabilities by name) with ``params``."""
    if representation == "boundary":
        return postprocess.from_boundary(outputs["interior"], outputs["boundary"], **params)
    if representation == "distance":
        return postprocess.from_distance(outputs["foreground"], outputs["distance"], **params)
    if representation == "affinities":
        return postprocess.from_affinities(outputs["affinities"], outputs["offsets"], outputs["foreground"], **params)
    raise ValueError(f"unknown representation {representation!r}: choose {', '.join(GRIDS)}")


def coarse_first(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of ``grid``; first the points made of each list's even positions, then the rest."""
    names = list(grid)
    points = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]

    def coarse(point: dict[str, Any]) -> bool:
        return all(grid[n].index(point[n]) % 2 == 0 for n in names)

    return [p for p in points if coarse(p)] + [p for p in points if not coarse(p)]


@dataclass
class TuneResult:
    """The best parameters, their mean metric, the default's, and how much of the grid was tried."""

    params: dict[str, Any]
    score: float
    default_score: float
    tried: int
    total: int
    seconds: float
    table: list[tuple[dict[str, Any], float]] = field(default_factory=list)


def tune(
    representation: str,
    outputs: Sequence[dict[str, Any]],
    truths: Sequence[NDArray],
    ignores: Sequence[NDArray | None] | None = None,
    metric: str = "f1_50",
    grid: dict[str, list[Any]] | None = None,
    time_limit: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> TuneResult:
    """Search ``grid`` (default :data:`GRIDS`) for the parameters with the best mean ``metric`` over the images.

    The first point is the grid's default (each list's first value), always tried; after it, a point is started
    only if it would end within ``time_limit`` seconds at the slowest point's pace, so the search ends with the
    best so far inside the limit (the default alone may overrun it), and logs how much of the grid it tried.
    """
    grid = grid or GRIDS[representation]
    ignores = ignores if ignores is not None else [None] * len(truths)
    if not truths:
        raise ValueError("tuning needs at least one validation image with instance labels")
    if not len(outputs) == len(truths) == len(ignores):
        raise ValueError(
            f"tuning got {len(outputs)} predicted image(s), {len(truths)} label image(s) and {len(ignores)} ignore "
            "mask(s); give one of each per validation image"
        )
    known = object_scores(np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1), dtype=np.int64))
    if metric not in known:
        raise ValueError(f"metric={metric!r} is not an object metric; choose one of {', '.join(known)}")
    points = coarse_first(grid)
    start = last = clock()
    longest = 0.0  # the slowest point so far: a point that would end past the limit is not started
    table: list[tuple[dict[str, Any], float]] = []
    for point in points:
        if table:
            now = clock()
            longest, last = max(longest, now - last), now
            if now - start + longest > time_limit:
                break
        scores = [
            object_scores(truth, apply(representation, out, point), ignore)[metric]
            for out, truth, ignore in zip(outputs, truths, ignores)
        ]
        table.append((point, float(np.mean(scores))))
    best_params, best_score = max(table, key=lambda row: row[1])  # max keeps the first of equal scores
    seconds = clock() - start
    log.info(
        "Post-processing tuned on %d validation image(s): %s %.4f with %s (default %.4f); "
        "%d of %d grid points in %.1f s",
        len(truths), metric, best_score, best_params, table[0][1], len(table), len(points), seconds,
    )  # fmt: skip
    return TuneResult(best_params, best_score, table[0][1], len(table), len(points), seconds, table)
