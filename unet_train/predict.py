"""``unet-predict``: apply a checkpoint to images of any size, tile by tile.

``unet-predict ckpt=PATH input=FILE|DIR|STACK.tif output=DIR`` writes, per input,
``<name>_prob.tif`` (float32 probabilities: ``(H, W)`` of the positive class for a binary
model, ``(K, H, W)`` otherwise) and ``<name>.png`` (the mask: 0/255 for a binary model, class
indices otherwise). A multi-page TIFF stack gives ``<name>_prob.tif`` ``(N, H, W)`` and
``<name>_mask.tif`` ``(N, H, W)`` uint8, written slice by slice.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import tifffile
import torch
from omegaconf import DictConfig, OmegaConf
from skimage import io as skio
from torch import nn
from tqdm.auto import tqdm

from unet_train.build import build_model
from unet_train.cli import exit_on_user_error
from unet_train.config import config_dir
from unet_train.data.folder import IMAGE_SUFFIXES, read_image
from unet_train.data.normalize import prepare_input
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.runtime import make_runtime
from unet_train.errors import CheckpointError, ConfigError, DataError
from unet_train.inference import TiledPredictor

log = logging.getLogger(__name__)


def load_model(path: str | Path) -> tuple[nn.Module, DictConfig]:
    """The model of a checkpoint with its weights (eval mode, CPU) and the checkpoint's run config."""
    checkpoint = load_checkpoint(path)
    stored = OmegaConf.create(checkpoint["config"])
    model = build_model(stored.model)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit its own model config: {str(exc).splitlines()[0]}") from exc
    return model.eval(), stored


def find_inputs(spec: str | Path) -> list[Path]:
    """The image files named by ``input``: one file, or the images of a folder (sorted by name)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"input={path} is a folder without images ({', '.join(IMAGE_SUFFIXES)}).")
        return files
    if not path.is_file():
        raise DataError(f"input={path} does not exist; pass an image, a TIFF stack or a folder of images.")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"input={path} is not an image this tool reads ({', '.join(IMAGE_SUFFIXES)}).")
    return [path]


def stack_pages(path: Path) -> int:
    """Number of slices of a TIFF (0 for a single image, including a one-page RGB TIFF); 0 for other formats."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return 0
    try:
        with tifffile.TiffFile(path) as tif:
            pages = len(tif.pages)
    except Exception as exc:
        raise DataError(f"Could not read TIFF {path}: {exc}") from exc
    return pages if pages > 1 else 0


def read_slices(path: Path, pages: int) -> Iterator[np.ndarray]:
    """The slices of a stack one at a time (only one slice in memory), ``(H, W)`` or ``(H, W, C)`` in their dtype."""
    for index in range(pages):
        try:
            array = np.asarray(tifffile.imread(path, key=index))
        except Exception as exc:
            raise DataError(f"Could not read slice {index} of {path}: {exc}") from exc
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        if array.ndim not in (2, 3):
            raise DataError(f"Slice {index} of {path} has shape {array.shape}; expected a 2D grey or RGB image.")
        yield array


def to_input(
    array: np.ndarray, in_channels: int, where: str, normalize: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Raw pixels -> float ``(C, H, W)`` as in training: channels matched, then the checkpoint's ``data.normalize``."""
    return torch.from_numpy(prepare_input(array, in_channels, normalize, where))


def mask_of(prob: torch.Tensor, threshold: float) -> np.ndarray:
    """Probabilities ``(K, H, W)`` -> uint8 mask: 0/255 for a binary model, argmax class indices otherwise."""
    if prob.shape[0] == 1:
        return (prob[0] > threshold).numpy().astype(np.uint8) * 255
    return prob.argmax(0).numpy().astype(np.uint8)


def probability_array(prob: torch.Tensor) -> np.ndarray:
    """What ``<name>_prob.tif`` holds: the positive class ``(H, W)`` for a binary model, else ``(K, H, W)``."""
    return (prob[0] if prob.shape[0] == 1 else prob).numpy().astype(np.float32, copy=False)


def show_progress(setting: str) -> bool:
    if setting not in ("auto", "always", "never"):
        raise ConfigError(f"progress={setting!r} must be auto, always or never.")
    return setting == "always" or (setting == "auto" and sys.stderr.isatty())


@exit_on_user_error
def run_predict(cfg: DictConfig) -> list[Path]:
    """Predict every input of ``cfg.input`` into ``cfg.output``; returns the files written."""
    files = find_inputs(cfg.input)
    model, stored = load_model(cfg.ckpt)
    in_channels = int(stored.data.in_channels)
    normalize = stored.data.get("normalize")  # None in checkpoints from before data.normalize: uint8 / 255
    runtime = make_runtime(cfg.trainer.device, cfg.trainer.precision, cfg.trainer.channels_last, deterministic=False)
    predictor = TiledPredictor(
        model,
        tile_size=int(cfg.tile_size),
        overlap=float(cfg.overlap),
        batch_size=int(cfg.batch_size),
        margin=cfg.margin,
        tta=bool(cfg.tta),
        device=runtime.device,
        channels_last=runtime.channels_last,
        autocast_dtype=runtime.autocast_dtype,
        fold_bn=bool(cfg.fold_bn),
    )
    out = Path(cfg.output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    progress = show_progress(cfg.progress)
    pages = {path: stack_pages(path) for path in files}
    images = sum(max(n, 1) for n in pages.values())
    written: list[Path] = []
    start = time.monotonic()
    # One bar over images when there are several; over the tiles of the image when there is one.
    with tqdm(total=images, unit="image", disable=not progress or images == 1, dynamic_ncols=True) as bar:
        for path in files:
            if pages[path]:
                written += predict_stack(predictor, path, pages[path], in_channels, out, cfg.threshold, bar, normalize)
            else:
                tensor = to_input(read_image(path), in_channels, str(path), normalize)
                tiles = predictor.num_tiles(*tensor.shape[1:])
                with tqdm(total=tiles, unit="tile", disable=not progress or images > 1, dynamic_ncols=True) as tbar:
                    prob = predictor.predict(tensor, on_tiles=tbar.update)
                written += [out / f"{path.stem}_prob.tif", out / f"{path.stem}.png"]
                tifffile.imwrite(written[-2], probability_array(prob))
                skio.imsave(written[-1], mask_of(prob, cfg.threshold), check_contrast=False)
                bar.update(1)
    log.info("Predicted %d image(s) in %.1f s into %s", images, time.monotonic() - start, out)
    print(f"Wrote {len(written)} file(s) to {out}")
    return written


def predict_stack(
    predictor: TiledPredictor,
    path: Path,
    pages: int,
    in_channels: int,
    out: Path,
    threshold: float,
    bar: tqdm,
    normalize: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Predict a TIFF stack slice by slice, appending each slice to the output stacks as it is done."""
    prob_path, mask_path = out / f"{path.stem}_prob.tif", out / f"{path.stem}_mask.tif"
    with tifffile.TiffWriter(prob_path) as prob_tif, tifffile.TiffWriter(mask_path) as mask_tif:
        for index, array in enumerate(read_slices(path, pages)):
            prob = predictor.predict(to_input(array, in_channels, f"slice {index} of {path}", normalize))
            # contiguous=True appends to one series, so the file reads back as (N, H, W).
            prob_tif.write(probability_array(prob), contiguous=True)
            mask_tif.write(mask_of(prob, threshold), contiguous=True)
            bar.update(1)
    return [prob_path, mask_path]


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def main(cfg: DictConfig) -> None:
    run_predict(cfg)


if __name__ == "__main__":
    main()
