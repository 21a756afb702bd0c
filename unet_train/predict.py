"""``unet-predict``: apply a checkpoint (or an ensemble of them) to images of any size, tile by tile.

``unet-predict ckpt=PATH input=FILE|DIR|STACK.tif output=DIR`` writes, per input,
``<name>_prob.tif`` (float32 probabilities: ``(H, W)`` of the positive class for a binary
model, ``(K, H, W)`` otherwise) and ``<name>.png`` (the mask: 0/255 for a binary model, class
indices otherwise). A multi-page TIFF stack gives ``<name>_prob.tif`` ``(N, H, W)`` and
``<name>_mask.tif`` ``(N, H, W)`` uint8, written slice by slice. Files are written under a temporary
name and renamed when complete: an interrupted prediction leaves no partial file under a final name.

Zarr and HDF5 inputs, and any input with ``output=NAME.zarr``, are predicted chunk by chunk into
an OME-Zarr store in bounded memory (:mod:`unet_train.inference.large`); under ``torchrun`` the
chunks are shared between the processes. ``ckpt=[a.pt,b.pt]`` averages the models' probabilities.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import tifffile
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from skimage import io as skio
from torch import nn
from tqdm.auto import tqdm

from unet_train.build import build_model
from unet_train.cli import console_script, exit_if_version_asked, exit_on_user_error
from unet_train.config import config_dir
from unet_train.data.folder import read_image
from unet_train.data.limits import check_pixels, set_max_pixels
from unet_train.data.normalize import prepare_input, resolve_spec
from unet_train.engine import distributed
from unet_train.engine.autotune import agree, tune
from unet_train.engine.checkpoint import check_model_size, load_checkpoint
from unet_train.engine.objects import params_for, stored_postprocess
from unet_train.engine.runtime import Runtime, make_runtime
from unet_train.errors import CheckpointError, ConfigError, DataError, UserError
from unet_train.inference import TiledPredictor
from unet_train.inference.budget import parse_memory
from unet_train.inference.instances import instance_labels, label_chunks, resolve_method
from unet_train.inference.large import Throughput, checkpoint_identity, chunk_setting, predict_to_zarr, store_settings
from unet_train.inference.sources import (
    NIFTI_SUFFIXES,
    TIFF_SUFFIXES,
    PlaneScaling,
    Volume,
    is_chunked_input,
    open_volume,
)
from unet_train.objects.heads import affinity_offsets, check_tta, class_channels, extra_channels
from unet_train.objects.params import instance_target, smallest_dtype
from unet_train.overrides import require_sweep_extra
from unet_train.predict_files import (
    check_ensemble,
    check_output_names,
    find_inputs,
    mask_of,
    probability_array,
    removed_on_failure,
    written_whole,
)
from unet_train.safe_io import make_folder

log = logging.getLogger(__name__)


def load_model(path: str | Path, trust: bool | Sequence[str] = False) -> tuple[nn.Module, DictConfig]:
    """The model of a checkpoint with its weights (eval mode, CPU) and the checkpoint's run config."""
    checkpoint = load_checkpoint(path, trust=trust)
    stored = OmegaConf.create(checkpoint["config"])
    check_model_size(lambda: build_model(stored.model), checkpoint["model"], path)
    model = build_model(stored.model)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit its own model config: {str(exc).splitlines()[0]}") from exc
    tuned = stored_postprocess(checkpoint)  # an instance model's tuned post-processing (checked on load)
    if tuned is not None:
        with open_dict(stored):
            stored.tuned_postprocess = tuned
    return model.eval(), stored


def checkpoint_paths(spec: Any) -> list[str]:
    """``ckpt`` as a list: one path, or ``[a.pt,b.pt,...]`` for an ensemble."""
    paths = [str(p) for p in spec] if isinstance(spec, ListConfig | list | tuple) else [str(spec)]
    if not paths:
        raise ConfigError("ckpt=[] names no checkpoint; pass ckpt=PATH or ckpt=[a.pt,b.pt].")
    return paths


def resolved_paths(spec: Any) -> list[str]:
    """The checkpoints as a store records them (:func:`~unet_train.inference.large.checkpoint_identity`)."""
    return checkpoint_identity(checkpoint_paths(spec))


def load_models(spec: Any, trust: bool | Sequence[str] = False) -> tuple[list[nn.Module], list[DictConfig]]:
    """The models of one or several checkpoints and their run configs; they must agree on their data's channels
    and classes (each keeps its own ``data.normalize``, see :func:`input_specs`)."""
    paths = checkpoint_paths(spec)
    loaded = [load_model(path, trust=trust) for path in paths]
    check_ensemble(paths, [stored.data for _, stored in loaded])
    return [model for model, _ in loaded], [stored for _, stored in loaded]


def input_specs(configs: Sequence[DictConfig]) -> list[DictConfig]:
    """The data configs whose ``data.normalize`` make the model inputs: one when all models share it, else one
    per model (the ensemble then gets each model's input in turn along the channels, ``split_inputs``)."""
    specs = [resolve_spec(c.data.get("normalize")) for c in configs]
    return [configs[0].data] if all(s == specs[0] for s in specs) else [c.data for c in configs]


def to_input(
    array: np.ndarray, in_channels: int, where: str, normalize: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Raw pixels -> float ``(C, H, W)`` as in training: channels matched, then the checkpoint's ``data.normalize``.

    Per-image statistics (``per: image``) are this image's own, as training computed them for each image.
    """
    return torch.from_numpy(prepare_input(array, in_channels, normalize, where))


def show_progress(setting: str) -> bool:
    if setting not in ("auto", "always", "never"):
        raise ConfigError(f"progress={setting!r} must be auto, always or never.")
    return setting == "always" or (setting == "auto" and sys.stderr.isatty())


def open_input(path: Path, cfg: DictConfig, in_channels: int) -> Volume:
    """A TIFF, Zarr or HDF5 input as a :class:`Volume`; other images are read whole.

    NaN/inf pixels are refused where they are read, unless ``allow_nonfinite=true`` reads them as 0.
    """
    allow = bool(cfg.get("allow_nonfinite", False))
    if path.suffix.lower() in TIFF_SUFFIXES or is_chunked_input(path) or path.name.lower().endswith(NIFTI_SUFFIXES):
        volume = open_volume(path, cfg.get("input_key"), cfg.get("input_axes"), in_channels)
    else:
        array = read_image(path, finite=not allow)
        volume = Volume(array, "yx" if array.ndim == 2 else "yxc", str(path))
    volume.allow_nonfinite = allow
    if volume.shape[3] != in_channels and {volume.shape[3], in_channels} != {1, 3}:  # grey and RGB convert
        volume.close()
        raise DataError(
            f"{path} has {volume.shape[3]} channel(s) (axes {volume.axes}, shape {tuple(volume.array.shape)}) but the "
            f"model takes {in_channels}; set input_axes, or convert the images first."
        )
    return volume


@exit_on_user_error
def run_predict(cfg: DictConfig) -> list[Path]:
    """Predict every input of ``cfg.input`` into ``cfg.output``; returns the files written (by this rank)."""
    set_max_pixels(cfg.get("max_pixels"))
    files = find_inputs(cfg.input)
    models, configs = load_models(cfg.ckpt, trust=cfg.get("trust_config", False))
    distributed.export_submitit_tasks()  # hydra/launcher=slurm with several tasks: one rank per task
    dist = distributed.setup("ddp" if distributed.launched_by_torchrun() else "single", cfg.trainer.device)
    try:
        return _predict_all(cfg, files, models, configs[0], input_specs(configs), dist)
    finally:
        distributed.cleanup()


def _predict_all(
    cfg: DictConfig, files: list[Path], models: list[nn.Module], stored: DictConfig, inputs: list[Any], dist: Any
) -> list[Path]:
    from unet_train.volume_predict import predict_volumes, split_inputs, tile_setting  # cyclic

    check_tta(stored.data, bool(cfg.tta))
    in_channels = int(stored.data.in_channels)
    runtime = make_runtime(dist.device, cfg.trainer.precision, cfg.trainer.channels_last, deterministic=False)
    spatial_dims = int(stored.model.get("spatial_dims", 2))
    as_volumes = spatial_dims == 3 or bool(stored.data.get("context_slices"))  # 3D, 2.5D: each input one volume
    if as_volumes:  # a folder's NIfTI, HDF5 and Zarr volumes are inputs too (volume_predict.py)
        files = find_inputs(cfg.input, volumes=True)

    def predictor_for(rt: Runtime, nets: list[nn.Module]) -> TiledPredictor:
        return TiledPredictor(
            nets,
            tile_size=tile_setting(cfg.tile_size),
            overlap=float(cfg.overlap),
            batch_size=None if cfg.batch_size is None else int(cfg.batch_size),
            margin=cfg.margin,
            tta=bool(cfg.tta),
            device=rt.device,
            channels_last=rt.channels_last,
            autocast_dtype=rt.autocast_dtype,
            fold_bn=bool(cfg.fold_bn),
            split_inputs=len(inputs) > 1,
            memory=parse_memory(cfg.get("tile_memory")),
            classes=class_channels(stored.data),
        )

    if runtime.auto:  # channels_last/precision=auto on a CPU: one batch of full tiles timed in each setting
        tile = tile_setting(cfg.tile_size) or 256  # tile_size=null: a mid-size input stands in for every size
        sides = [tile] * spatial_dims if isinstance(tile, int) else list(tile)
        shape = (int(cfg.batch_size or 1), int(stored.model.get("in_channels", in_channels)) * len(inputs), *sides)

        def make_step(rt: Runtime) -> Callable[[], object]:
            trial, tiles = predictor_for(rt, copy.deepcopy(models)), torch.rand(shape)
            return lambda: trial.forward_tiles(tiles)

        what = {"models": [repr(m) for m in models], "tta": bool(cfg.tta), "fold_bn": bool(cfg.fold_bn)}
        chosen = tune(runtime, "inference", make_step, what, shape)[0] if dist.is_main else runtime
        runtime = agree(dist, runtime, chosen)
    predictor = predictor_for(runtime, models)
    out = Path(cfg.output).expanduser()
    to_zarr = out.name.lower().endswith(".zarr")
    if to_zarr and len(files) > 1:
        raise ConfigError(
            f"output={out} is one Zarr store but input={cfg.input} holds {len(files)} images; "
            "pass output=FOLDER (each Zarr/HDF5 input gets FOLDER/<name>.zarr)."
        )
    check_output_names(files, out, to_zarr)
    target = instance_target(stored.data)  # an instance model always writes its instances
    classes = int(stored.data.num_classes)
    classes = (1 if classes <= 2 else classes) + extra_channels(target, stored.data)  # with the target's maps
    method = resolve_method(str(cfg.instance_method), stored.data) if cfg.instances or target else None
    params = params_for(cfg, target, stored.get("tuned_postprocess")) if target else None
    if params is not None:
        log.info("Instances by the %s post-processing: %s", target, params)
    halo = cfg.get("instance_halo", 0)
    if isinstance(halo, bool) or not isinstance(halo, int) or halo < 0:
        raise ConfigError(f"instance_halo={halo!r} must be a whole number of pixels, 0 or more.")
    chunk = chunk_setting(cfg.get("chunk_size"), spatial_dims)
    written: list[Path] = []
    start = time.monotonic()
    volumes: list[tuple[Path, Volume]] = [(path, open_input(path, cfg, in_channels)) for path in files]
    planar, by_volume = split_inputs(volumes, as_volumes, to_zarr)  # by_volume: predicted whole, below
    try:
        whole = [(p, v) for p, v in planar if not (to_zarr or is_chunked_input(p))]
        for path, volume in whole:  # read one plane at a time, but each plane whole
            check_pixels(path, volume.shape[1:], "predict it chunk by chunk into output=NAME.zarr, or ")
        in_memory = whole[dist.rank :: dist.world_size]
        tiles = sum(predictor.num_tiles(*v.shape[1:3]) * v.depth for _, v in in_memory)
        report = Throughput(tiles, "predict")
        progress = show_progress(cfg.progress)
        with tqdm(total=tiles, unit="tile", disable=not progress or not tiles, dynamic_ncols=True) as bar:

            def on_tiles(n: int) -> None:
                bar.update(n)
                report(n)

            for path, volume in planar:
                if to_zarr or is_chunked_input(path):
                    store = out if to_zarr else out / f"{path.name.split('.')[0]}.zarr"
                    written.append(predict_store(cfg, predictor, volume, store, classes, inputs, method, dist, params))
                elif (path, volume) in in_memory:
                    written += predict_in_memory(cfg, predictor, path, volume, out, method, on_tiles, inputs, params)
        # a 3D or 2.5D model: whole, or chunk by chunk into OME-Zarr (output=NAME.zarr, large Zarr/HDF5 inputs)
        written += predict_volumes(
            cfg, predictor, by_volume, out, to_zarr, chunk, classes, inputs, dist, spatial_dims, method, params
        )
    finally:
        for _, volume in volumes:
            volume.close()
    log.info("Predicted %d input(s) in %.1f s into %s", len(files), time.monotonic() - start, out)
    if dist.is_main:
        print(f"Wrote {len(written)} file(s) to {out}")
    return written


def predict_store(
    cfg: DictConfig,
    predictor: TiledPredictor,
    volume: Volume,
    store: Path,
    classes: int,
    inputs: list[Any],
    method: str | None,
    dist: Any,
    params: dict[str, Any] | None = None,
) -> Path:
    """One input into an OME-Zarr store, chunk by chunk (resumes a store of the same settings)."""
    predictor = predictor.for_shape(*volume.shape[1:3], whole=False)  # tile_size=null: tiles fit tile_memory
    more = {"ckpt": resolved_paths(cfg.ckpt), "threshold": float(cfg.threshold), "instances": method}
    settings = store_settings(predictor, volume, 2, **more, postprocess=params, class_channels=predictor.classes)
    scalings = [PlaneScaling(volume, data) for data in inputs]
    chunk = chunk_setting(cfg.get("chunk_size"), 2)
    assert isinstance(chunk, int)  # a 2D model's chunks have one side

    def scaling(raw: np.ndarray, z: int) -> torch.Tensor:
        return scalings[0](z)(raw) if len(scalings) == 1 else torch.cat([s(z)(raw) for s in scalings])

    # A store begun here from an input refused mid-way (NaN pixels, a corrupt chunk) is removed; one that
    # existed is kept to resume, and so is any store after an interruption (that is what resuming is for).
    created = [] if dist.enabled else [store.parent, store]
    with removed_on_failure(created, (UserError,)):
        store.parent.mkdir(parents=True, exist_ok=True)
        result = predict_to_zarr(
            predictor,
            volume,
            scaling,
            store,
            classes,
            chunk,
            str(cfg.prob_dtype),
            float(cfg.threshold),
            settings,
            dist,
        )
    if method is not None:
        halo = int(cfg.instance_halo)
        offsets = affinity_offsets(inputs[0])
        label_chunks(result, method, float(cfg.threshold), int(cfg.min_distance), halo, dist, params, offsets)
    return store


def predict_in_memory(
    cfg: DictConfig,
    predictor: TiledPredictor,
    path: Path,
    volume: Volume,
    out: Path,
    method: str | None,
    on_tiles: Any,
    inputs: list[Any],
    params: dict[str, Any] | None = None,
) -> list[Path]:
    """An image or a TIFF stack with whole-plane outputs: TIFF probabilities, PNG/TIFF masks (and labels).

    Each plane is normalised on its own, as training normalised each image (``per: image`` statistics
    of that plane), as the chunked path does (:class:`~unet_train.inference.sources.PlaneScaling`).
    """
    in_channels = int(inputs[0].in_channels)

    def model_input(raw: np.ndarray) -> torch.Tensor:  # one input per normalisation (see input_specs)
        parts = [to_input(raw, in_channels, path.name, data.get("normalize")) for data in inputs]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    _, height, width, _ = volume.shape
    plane = predictor.for_shape(height, width)  # tile_size=null: the whole plane where it fits tile_memory
    threshold, min_distance, offsets = float(cfg.threshold), int(cfg.min_distance), affinity_offsets(inputs[0])

    def planes() -> Any:
        for z in range(volume.depth):
            prob = plane.predict(model_input(volume.read(z, 0, height, 0, width)), on_tiles=on_tiles)
            labels = instance_labels(prob.numpy(), method, threshold, min_distance, params, offsets) if method else None
            yield prob, labels

    if not volume.has_z:
        prob, labels = next(planes())  # read and predicted before anything is written
        names = ["_prob.tif", ".png", *(["_labels.tif"] if labels is not None else [])]
        files = [out / f"{path.stem}{suffix}" for suffix in names]
        with removed_on_failure([out], (UserError,)):
            make_folder(out, out)
            with written_whole(files) as temps:
                tifffile.imwrite(temps[0], probability_array(prob))
                skio.imsave(temps[1], mask_of(prob[: plane.classes], threshold), check_contrast=False)
                if labels is not None:  # an instance model's: uint16 where its ids fit
                    tifffile.imwrite(temps[2], smallest_dtype(labels) if params is not None else labels)
        return files
    # A stack: appended slice by slice (contiguous=True keeps one series, so files read back as (N, H, W)).
    names = ["_prob.tif", "_mask.tif", *(["_labels.tif"] if method else [])]
    files = [out / f"{path.stem}{suffix}" for suffix in names]
    with removed_on_failure([out], (UserError,)):
        make_folder(out, out)
        with written_whole(files) as temps:
            writers = [tifffile.TiffWriter(f) for f in temps]
            try:
                for prob, labels in planes():
                    writers[0].write(probability_array(prob), contiguous=True)
                    writers[1].write(mask_of(prob[: plane.classes], threshold), contiguous=True)
                    if labels is not None:
                        writers[2].write(labels, contiguous=True)
            finally:
                for writer in writers:
                    writer.close()
    return files


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    run_predict(cfg)


@console_script
def main() -> None:
    """The ``unet-predict`` console script; under torchrun, ranks other than 0 create no run folder."""
    exit_if_version_asked()
    require_sweep_extra(sys.argv[1:])  # hydra/launcher=slurm shares a prediction between SLURM tasks
    sys.argv.extend(distributed.worker_hydra_overrides())
    hydra_main()


if __name__ == "__main__":
    main()
