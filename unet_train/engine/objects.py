"""Object metrics of an instance model, in validation and ``unet-eval``, and its post-processing tuned after training.

One function turns a batch's logits into instances and scores them (:class:`ObjectReport`), so validation and
``unet-eval`` report the same figures for the same checkpoint and parameters. After training,
:func:`tune_after_training` predicts the validation images once with the best weights, searches the
post-processing grid for ``objects.tune_time`` seconds (:mod:`unet_train.objects.tune`) and stores the winner
in ``best.pt`` and ``last.pt`` under ``postprocess`` (read back by :func:`stored_postprocess`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from unet_train.engine.checkpoint import load_checkpoint, save_atomic, unwrap
from unet_train.engine.evaluate import EvalResult, evaluate, probabilities
from unet_train.errors import ConfigError
from unet_train.labels import IGNORE_INDEX
from unet_train.metrics.objects import object_scores
from unet_train.objects import params as pp
from unet_train.objects import tune
from unet_train.objects.heads import affinity_offsets, class_channels
from unet_train.objects.params import instance_target

__all__ = [
    "EVAL_METRICS", "ObjectReport", "instance_target", "params_for", "plan_tuning", "stored_postprocess",
    "tune_after_training",
]  # fmt: skip

log = logging.getLogger(__name__)


def tune_metric(cfg: DictConfig) -> str:
    """What tuning maximises: ``objects.tune_metric``, or the monitored object metric, or ``f1_50``."""
    chosen = (cfg.get("objects") or {}).get("tune_metric")
    monitored = str(cfg.get("monitor", "")).removeprefix("val/")
    metric = chosen or (monitored if monitored in pp.OBJECT_METRICS else "f1_50")
    if metric not in pp.OBJECT_METRICS:
        raise ConfigError(
            f"objects.tune_metric={metric!r} is not an object metric; choose {', '.join(pp.OBJECT_METRICS)}."
        )
    return str(metric)


# What unet-eval reports besides OBJECT_METRICS: precision and recall, a stricter F1, PQ's parts, the counts
EVAL_METRICS = (*pp.OBJECT_METRICS, "precision_50", "recall_50", "f1_75", "sq", "rq", "tp", "fp", "fn", "splits",
                "merges", "true_objects", "pred_objects")  # fmt: skip


class ObjectReport:
    """Per image: logits -> instances (``params``) -> object scores against the batch's ``instances``.

    ``keys``: the scores kept (validation: :data:`~unet_train.objects.params.OBJECT_METRICS`); ``on_labels``
    sees each image's name and predicted instance labels (``unet-eval`` writes them). ``classes``: the leading
    class channels of the logits (:func:`~unet_train.objects.heads.class_channels`); ``offsets``: the affinities
    target's (:func:`~unet_train.objects.heads.affinity_offsets`).
    """

    def __init__(
        self,
        target: str,
        params: dict[str, Any],
        keys: tuple[str, ...] = pp.OBJECT_METRICS,
        on_labels: Callable[[str, np.ndarray], None] | None = None,
        classes: int | None = None,
        offsets: list[tuple[int, ...]] | None = None,
    ) -> None:
        self.target, self.params, self.keys, self.on_labels = target, params, keys, on_labels
        self.classes, self.offsets = classes, offsets
        self.rows: list[dict[str, float]] = []
        self.seconds = 0.0  # spent in the post-processing and the scores (what one tuning grid point costs)

    def on_batch(self, batch: dict[str, Any], logits: torch.Tensor) -> None:
        started = time.monotonic()
        try:
            self._score(batch, logits)
        finally:
            self.seconds += time.monotonic() - started

    def _score(self, batch: dict[str, Any], logits: torch.Tensor) -> None:
        probs = probabilities(logits, self.classes).numpy()
        for i in range(len(probs)):
            pred = pp.instances(self.target, probs[i], self.params, self.offsets)
            if self.on_labels is not None:
                self.on_labels(batch["name"][i], pred)
            if "instances" not in batch:  # an unlabelled split: predicted, not scored
                continue
            ignore = (batch["mask"][i] == IGNORE_INDEX).numpy()
            scores = object_scores(batch["instances"][i].numpy(), pred, ignore if ignore.any() else None)
            self.rows.append({key: float(scores[key]) for key in self.keys})

    def finish(self, result: EvalResult) -> None:
        """Add the scores to ``result``'s per-image rows (scored in the same order) and means."""
        if not self.rows:
            return
        for row, scores in zip(result.per_image, self.rows, strict=True):
            row.update(scores)
        for key in self.keys:
            result.metrics[key] = float(np.mean([row[key] for row in self.rows]))


def stored_postprocess(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The tuned parameters of a loaded checkpoint (checked by load_checkpoint), or None."""
    return pp.check_stored(checkpoint.get("postprocess"), checkpoint["config"]["data"])


def params_for(cfg: DictConfig, target: str, stored: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters a command uses: defaults < the checkpoint's tuned ones < the command line's ``objects.*``."""
    given = {k: v for k, v in (cfg.get("objects") or {}).items() if k in pp.RANGES}
    params = pp.merged(target, stored, given)
    try:
        return pp.check_params(params, target, "objects")
    except ValueError as exc:
        raise ConfigError(f"{exc}.") from None


def tune_time(cfg: DictConfig) -> float:
    """``objects.tune_time`` of an instance run (seconds the search after training may take); 0 for other runs."""
    if instance_target(cfg.data) is None:
        return 0.0
    return float((cfg.get("objects") or {}).get("tune_time", 0) or 0)


def search_grid(cfg: DictConfig, target: str) -> dict[str, list[Any]]:
    """The grid tuning searches: :data:`~unet_train.objects.tune.GRIDS`, starting from the run's own ``objects.*``
    values (the parameters validation used)."""
    start = params_for(cfg, target, None)
    grid = tune.GRIDS[target]
    return {name: [start[name], *(v for v in values if v != start[name])] for name, values in grid.items()}


def plan_tuning(run: Any) -> None:
    """Tell ``run``'s time budget about the tuning after training, so that it holds its time back
    (:attr:`~unet_train.engine.budget.TimeBudget.tuning`): ``trainer.max_time`` bounds the whole run."""
    budget, target = run.budget, instance_target(run.cfg.data)
    budget.tune_time = tune_time(run.cfg)
    if target is None or budget.tune_time <= 0:
        return
    budget.tune_points = math.prod(len(values) for values in search_grid(run.cfg, target).values())


def tune_after_training(run: Any, folder: Path) -> dict[str, float]:
    """Tune the post-processing on the validation images (``trainer.val_subset``'s sample, else the whole split)
    with ``best.pt``'s weights; store it in the checkpoints.

    The search takes ``objects.tune_time`` seconds, less what would overrun ``trainer.max_time`` (whose reserve
    held the tuning's time back, :func:`plan_tuning`). Returns figures for ``metrics.json`` (``tuned/<metric>``,
    ``untuned/<metric>``); nothing when the data are not instances, ``objects.tune_time`` is 0, or no checkpoint
    was written.
    """
    cfg = run.cfg
    target, classes, offsets = instance_target(cfg.data), class_channels(cfg.data), affinity_offsets(cfg.data)
    limit = tune_time(cfg)
    best, last = folder / "best.pt", folder / "last.pt"
    if target is None or limit <= 0 or not best.is_file():
        return {}
    model = copy.deepcopy(unwrap(run.model))
    model.load_state_dict(load_checkpoint(best, trust=True)["model"])
    outputs: list[dict[str, Any]] = []
    truths: list[np.ndarray] = []
    ignores: list[np.ndarray | None] = []

    def collect(batch: dict[str, Any], logits: torch.Tensor) -> None:
        probs = probabilities(logits, classes).numpy()
        for i in range(len(probs)):
            outputs.append(pp.outputs_of(target, probs[i], offsets))
            truths.append(batch["instances"][i].numpy())
            ignore = (batch["mask"][i] == IGNORE_INDEX).numpy()
            ignores.append(ignore if ignore.any() else None)

    if not run.dist.is_main:  # rank 0 tunes on the whole split and writes the checkpoints
        return {}
    # the images validation scores (trainer.val_subset's fixed sample, else the split): what its pass measured
    from unet_train.engine.validation import ItemSampler, validation_subset

    items = validation_subset(len(run.data.dataset("val")), cfg.trainer.get("val_subset"))
    sampler = None if items is None else ItemSampler(items)
    loader = run.data.dataloader("val", shuffle=False, sampler=sampler, training=False)
    evaluate(model, loader, run.runtime, run.data.num_classes, on_batch=collect, classes=classes)
    metric = tune_metric(cfg)
    grid = search_grid(cfg, target)
    limit = run.budget.tune_limit(limit)  # what trainer.max_time leaves after the prediction above
    result = tune.tune(
        target, outputs, truths, ignores, metric=metric, grid=grid, time_limit=limit, clock=run.budget.clock
    )
    params, score = kept_tuning(best, target, result, outputs, truths, ignores, metric)
    entry = {"target": target, "params": params, "metric": metric, "score": score,
             "default_score": result.default_score, "tried": result.tried, "total": result.total}  # fmt: skip
    for path in (best, last):
        if path.is_file():
            checkpoint = load_checkpoint(path, trust=True)
            checkpoint["postprocess"] = entry
            if path == last:  # the run's time includes the tuning: a resume must not get it back
                checkpoint["state"]["elapsed"] = run.budget.elapsed
            save_atomic(checkpoint, path, root=folder)
    log.info("Tuned post-processing stored in %s: %s", best.name, params)
    return {f"tuned/{metric}": score, f"untuned/{metric}": result.default_score}  # what best.pt holds


def kept_tuning(
    best: Path,
    target: str,
    result: tune.TuneResult,
    outputs: list[dict[str, Any]],
    truths: list[np.ndarray],
    ignores: list[np.ndarray | None],
    metric: str,
) -> tuple[dict[str, Any], float]:
    """The parameters to store: the search's best, or those ``best.pt`` holds from an earlier segment's tuning where
    they score higher on the same images. A best.pt that holds parameters has the weights they were tuned on (a new
    best is written without them), so a resumed run whose budget leaves no time to search (the default alone) does
    not replace a whole search's result with the default."""
    stored = (load_checkpoint(best, trust=True).get("postprocess") or {}).get("params")
    if not stored or any(point == stored for point, _ in result.table):
        return result.params, result.score
    scores = [
        object_scores(truth, tune.apply(target, out, stored), ignore)[metric]
        for out, truth, ignore in zip(outputs, truths, ignores)
    ]
    score = float(np.mean(scores))
    if score <= result.score:
        return result.params, result.score
    log.info(
        "best.pt's post-processing tuned before, %s, scores %s %.4f, more than this search's best %.4f (%d of %d "
        "points): kept", stored, metric, score, result.score, result.tried, result.total,
    )  # fmt: skip
    return dict(stored), score
