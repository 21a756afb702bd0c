"""``unet-eval``: score a checkpoint on a split and write metrics and predictions.

The checkpoint carries its model and data config, so ``unet-eval ckpt=PATH`` needs nothing
else. ``split=test|train|val|all`` picks the images, each scored once, whole, without augmentation;
``data.root=DIR`` (or any ``data.KEY``, checked against the stored data config; ``+data.KEY`` adds one)
changes the stored data settings; ``data=folder data.root=DIR`` evaluates on another dataset. ``tta=true`` averages the
probabilities over the 8 flips and 90-degree rotations. Binary problems also get the ISBI
challenge's V-Rand and V-Info (best threshold reported; volumes per section and in 3D) and HD95 (volumes in
the units of their voxel spacing); overlays of image, ground truth, prediction and errors go to ``overlays/``
and to TensorBoard under ``tensorboard/``.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import tifffile
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.tensorboard import SummaryWriter

from unet_train.build import build_data, build_model
from unet_train.cli import console_script, exit_if_version_asked, exit_on_user_error, run_dir
from unet_train.config import config_dir
from unet_train.data.foreground import boundary_positive
from unet_train.data.limits import set_max_pixels
from unet_train.engine.autotune import forward_step, tune
from unet_train.engine.checkpoint import check_model_size, load_checkpoint
from unet_train.engine.evaluate import evaluate
from unet_train.engine.objects import EVAL_METRICS, ObjectReport, instance_target, params_for, stored_postprocess
from unet_train.engine.report import METRES, EvalReport, volume_spacing, volume_units
from unet_train.engine.runtime import make_runtime, to_channels_last
from unet_train.engine.signals import ignore_stop_signals
from unet_train.errors import CheckpointError, ConfigError
from unet_train.inference import TTALogits
from unet_train.inference.budget import parse_memory
from unet_train.inference.tiling import fold_batchnorm
from unet_train.metrics import predict_labels
from unet_train.objects.heads import affinity_offsets, check_tta, class_channels
from unet_train.objects.params import smallest_dtype
from unet_train.overrides import apply_overrides, eval_data_overrides, hold_eval_data_overrides
from unet_train.safe_io import confined, make_folder, write_atomic, write_csv, write_png
from unet_train.trust import check_download_root
from unet_train.volume_predict import IMAGEJ_UNITS

log = logging.getLogger(__name__)


def eval_data_config(cfg: DictConfig, stored: DictConfig) -> DictConfig:
    """The data config to evaluate on: another dataset (``data=NAME``) or the stored one with ``+data.*`` overrides."""
    held = eval_data_overrides()
    if HydraConfig.get().runtime.choices.get("data"):
        data = cfg.data
        with open_dict(data):
            for key in ("in_channels", "num_classes"):
                if data.get(key) == "auto":  # the model fixes them
                    data[key] = stored.data.get(key)
            if instance_target(stored.data) and data.get("labels") == "auto":  # its masks hold ids as in training
                data.labels, data.target = "instances", stored.data.target
                data.affinity_offsets = stored.data.get("affinity_offsets")  # the model's, whatever the data says
            # The model takes inputs normalised as in training: the checkpoint's scheme and statistics.
            data.normalize = stored.data.get("normalize")
            if stored.data.get("context_slices"):  # a 2.5D model takes its neighbouring sections as in training
                data.context_slices = stored.data.context_slices
    elif held is not None:  # from the console script: checked against the stored data config
        data = apply_overrides(OmegaConf.create({"data": stored.data}), held).data
        check_download_root(data, held, f"checkpoint {cfg.ckpt}")
    else:
        data = OmegaConf.create(OmegaConf.to_container(stored.data, resolve=True))
        given = cfg.get("data") or {}
        with open_dict(data):
            for key, value in given.items():
                OmegaConf.update(data, key, value, merge=False)
        check_download_root(data, [f"data.{key}=" for key in given], f"checkpoint {cfg.ckpt}")
    for key in ("in_channels", "num_classes"):
        if data.get(key) != stored.data.get(key):
            raise ConfigError(
                f"data.{key}={data.get(key)} does not match the checkpoint's model, trained with "
                f"data.{key}={stored.data.get(key)}."
            )
    # Evaluation reads whole images; no worker processes are worth starting for a few images.
    with open_dict(data):
        data.persistent_workers = False
    return data


def save_prediction(
    folder: Path, name: str, logits: torch.Tensor, spacing: tuple[float, ...] | None = None, unit: str = ""
) -> None:
    """Write the label image of one prediction as PNG, of a volume as a TIFF stack (binary: 0/255); a volume's
    stack is an ImageJ one with its voxel ``spacing`` (z, y, x) and ``unit`` when they are known."""
    labels = predict_labels(logits.unsqueeze(0))[0].numpy()
    image = (labels * 255).astype(np.uint8) if logits.shape[0] == 1 else labels.astype(np.uint8)
    if image.ndim == 3:  # (z, y, x)
        buffer = io.BytesIO()  # tifffile wants a named file or a buffer, not the atomic writer's descriptor
        if spacing is None:
            tifffile.imwrite(buffer, image, photometric="minisblack")
        else:
            metadata: dict[str, Any] = {"axes": "ZYX", "spacing": float(spacing[0])}
            if unit in METRES:  # a length unit, not "voxel" or "spacing unit"
                metadata["unit"] = IMAGEJ_UNITS.get(unit, unit)
            tifffile.imwrite(buffer, image, imagej=True, resolution=(1 / spacing[2], 1 / spacing[1]), metadata=metadata)
        write_atomic(folder / f"{name}.tif", buffer.getvalue(), root=folder.parent)
        return
    write_png(folder / f"{name}.png", image, root=folder.parent)


def object_report(
    cfg: DictConfig, checkpoint: dict[str, Any], stored: DictConfig, folder: Path | None
) -> ObjectReport | None:
    """An instance model's object scoring with its tuned post-processing (``objects.*`` overrides it); writes
    ``<name>_labels.tif`` (uint16, or uint32 past 65535 objects) into ``folder`` when given."""
    target = instance_target(stored.data)
    if target is None:
        return None
    params = params_for(cfg, target, stored_postprocess(checkpoint))
    source = "tuned in training" if checkpoint.get("postprocess") else "defaults: the checkpoint holds no tuned ones"
    log.info("Post-processing %s (%s; objects.* override it)", params, source)

    def save(name: str, labels: np.ndarray) -> None:
        assert folder is not None
        encoded = io.BytesIO()  # tifffile seeks in and names its file: written whole, then atomically
        tifffile.imwrite(encoded, smallest_dtype(labels))
        write_atomic(folder / f"{name}_labels.tif", encoded.getvalue(), root=folder.parent)

    on_labels = save if folder is not None else None
    offsets = affinity_offsets(stored.data)
    return ObjectReport(target, params, EVAL_METRICS, on_labels, class_channels(stored.data), offsets)


def format_table(rows: dict[str, float]) -> str:
    width = max(len(k) for k in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in rows.items()]
    return "\n".join(lines)


@exit_on_user_error
def run_eval(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt`` on ``cfg.split``; returns the mean metrics (``<split>/<name>``)."""
    set_max_pixels(cfg.get("max_pixels"))
    checkpoint = load_checkpoint(cfg.ckpt, trust=cfg.get("trust_config", False))
    stored = OmegaConf.create(checkpoint["config"])
    data_cfg = eval_data_config(cfg, stored)
    out = run_dir()

    runtime = make_runtime(cfg.trainer.device, cfg.trainer.precision, cfg.trainer.channels_last, deterministic=False)
    check_model_size(lambda: build_model(stored.model), checkpoint["model"], cfg.ckpt)
    model = build_model(stored.model)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{cfg.ckpt}: weights do not fit its own model config: {str(exc).splitlines()[0]}"
        ) from exc
    # Batch norms folded into their convolutions: the same results, one pass less per layer (as unet-predict).
    model = fold_batchnorm(model.eval()).to(runtime.device)
    classes = class_channels(stored.data)  # the leading class channels; the rest a target's maps (distance)
    check_tta(stored.data, bool(cfg.get("tta", False)))
    if cfg.get("tta", False):
        model = TTALogits(model, classes)

    data = build_data(data_cfg)
    # Every split is scored as validation is: each image once, whole, without augmentation (a
    # training loader would draw samples_per_epoch augmented crops and drop the last partial batch).
    # Workers leave Ctrl-C to this process, which ends in one line (exit_on_user_error), not one traceback per worker.
    pin = runtime.device.type == "cuda"
    loader = data.dataloader(
        cfg.split, shuffle=False, training=False, pin_memory=pin, worker_init_fn=ignore_stop_signals
    )
    if runtime.auto:  # channels_last/precision=auto on a CPU: the forward timed at the size of the first image
        shape = (int(loader.batch_size or 1), *loader.dataset[0]["image"].shape)
        what = {"model": repr(model)}
        runtime, _ = tune(runtime, "inference", lambda rt: forward_step(model, rt, shape), what, shape)
    if runtime.channels_last:
        model = to_channels_last(model)
    pred_dir = out / "predictions"
    if cfg.save_predictions:
        make_folder(pred_dir, out)

    writer = SummaryWriter(str(confined(out / "tensorboard", out)))  # not through a link out of the run folder
    # The positive class is the border of the V-Rand segments only for membranes (ISBI's default,
    # data.foreground=membrane of a folder, the synthetic membranes); objects and cells are the segments.
    spacing, unit = volume_spacing(loader.dataset)  # HD95 of a volume in the units of its voxel size
    report = EvalReport(
        data.num_classes,
        boundary_positive=boundary_positive(data),
        overlay_dir=out / "overlays" if cfg.save_predictions else None,
        writer=writer,
        spacing=spacing,
    )

    objects = object_report(cfg, checkpoint, stored, pred_dir if cfg.save_predictions else None)

    def on_batch(batch: dict[str, Any], logits: torch.Tensor) -> None:
        class_logits = logits if classes is None else logits[:, :classes]
        if cfg.save_predictions:
            for name, item in zip(batch["name"], class_logits):
                save_prediction(pred_dir, name, item, spacing.get(name), unit)
        report.on_batch(batch, class_logits)
        if objects is not None:
            objects.on_batch(batch, logits)

    memory = parse_memory(cfg.get("tile_memory"))  # each batch whole where it fits, else image by image or tiled
    result = evaluate(model, loader, runtime, data.num_classes, on_batch=on_batch, memory=memory, classes=classes)
    if objects is not None:
        objects.finish(result)
    report.finish(result)
    metrics = {f"{cfg.split}/{k}": v for k, v in result.metrics.items()}
    summary = {
        "ckpt": str(Path(cfg.ckpt).resolve()),
        "split": cfg.split,
        "images": len(loader.dataset),  # type: ignore[arg-type]
        "metrics": metrics,
        "per_image": result.per_image,
    }
    if "hd95" in result.metrics:  # the unit of the HD95 figures: pixel, voxel, or the volumes' (micrometer...)
        summary["units"] = {"hd95": unit}
        own = volume_units(loader.dataset) if unit == "mixed units" else {}  # each row in its volume's unit
        for row in result.per_image:
            row["hd95_unit"] = own.get(str(row.get("name")), unit)
    for key, value in metrics.items():
        writer.add_scalar(key, value)
    writer.close()
    write_atomic(out / "metrics.json", json.dumps({**metrics, "details": summary}, indent=2) + "\n", root=out)
    if result.per_image:
        write_csv(out / "per_image.csv", list(result.per_image[0]), result.per_image, root=out)
        print(format_table(metrics))
        if "units" in summary:
            print(f"hd95 is in {unit}")
    elif cfg.save_predictions:
        print(f"The {cfg.split!r} split has no masks: wrote predictions only.")
    else:
        print(f"The {cfg.split!r} split has no masks and save_predictions=false: nothing was scored or written.")
    print(f"Results in {out}")
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    run_eval(cfg)


@console_script
def main() -> None:
    """The ``unet-eval`` console script."""
    exit_if_version_asked()
    sys.argv[:] = hold_eval_data_overrides(sys.argv)
    hydra_main()


if __name__ == "__main__":
    main()
