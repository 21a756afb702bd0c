"""``unet-export ckpt=PATH format=onnx|torchscript|bioimageio|all output=DIR``: export, then verify each artefact."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from unet_train.cli import console_script, exit_if_version_asked, exit_on_user_error
from unet_train.config import config_dir
from unet_train.errors import ConfigError, DataError
from unet_train.export import require_extra
from unet_train.export.model import (
    ExportModel,
    VerificationError,
    load_export_model,
    max_abs_difference,
    verification_inputs,
    volume_sizes,
)
from unet_train.safe_io import check_outputs, make_folder, write_atomic

if TYPE_CHECKING:
    from unet_train.export.volume import TestVolume

log = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript", "bioimageio")


def chosen_formats(value: str) -> list[str]:
    names = list(FORMATS) if value == "all" else [v.strip() for v in str(value).split(",")]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ConfigError(f"format={value} is not known; choose onnx, torchscript, bioimageio or all.")
    return names


def verification_sizes(exported: ExportModel, settings: DictConfig) -> list[list[int]]:
    """``verify.sizes`` for a 2D model; for a 3D one ``verify.sizes_3d``, or sizes from its pooling grid."""
    if exported.spatial_dims == 2:
        return [list(size) for size in settings.sizes]
    given = settings.get("sizes_3d")
    if given is None:
        return volume_sizes(exported.multiples)
    sizes = [list(size) for size in given]
    if not sizes or any(len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size) for size in sizes):
        raise ConfigError(
            f"verify.sizes_3d={OmegaConf.to_container(given)} must list [z, y, x] sizes of positive ints "
            "for this 3D model, e.g. [[8,32,32],[12,48,40]], or null for sizes from its pooling."
        )
    return sizes


def verify(exported: ExportModel, name: str, runner: Any, cfg: DictConfig) -> float:
    """Max |exported - PyTorch| over the verification sizes and batch sizes; fails above ``verify.atol``."""
    sizes = verification_sizes(exported, cfg.verify)
    inputs = verification_inputs(exported.in_channels, sizes, list(cfg.verify.batch_sizes))
    diff = max_abs_difference(exported.folded, runner, inputs)
    shapes = ", ".join(f"{tuple(x.shape)}" for x in inputs)
    log.info("%s matches PyTorch to %.2e (max abs logit difference over %s)", name, diff, shapes)
    if not diff <= float(cfg.verify.atol):
        raise VerificationError(f"{name} differs from PyTorch by {diff:.3g} > verify.atol={cfg.verify.atol}")
    return diff


def test_image(exported: ExportModel, settings: DictConfig) -> np.ndarray:
    """The raw test image ``(1, C, H, W)``: ``test_image`` or the first image of the checkpoint's val split."""
    from unet_train.build import build_data
    from unet_train.data.folder import read_image
    from unet_train.data.sections import raw_sections
    from unet_train.export.bioimageio import raw_to_nchw

    if settings.test_image:
        path = Path(settings.test_image).expanduser()
        if not path.is_file():
            raise DataError(f"bioimageio.test_image={path} does not exist; pass an image file.")
        return raw_to_nchw(read_image(path))
    data_cfg = OmegaConf.create(OmegaConf.to_container(exported.config.data, resolve=True))
    assert isinstance(data_cfg, DictConfig)
    if settings.data_root:
        with open_dict(data_cfg):
            data_cfg.root = str(settings.data_root)
    try:
        data: Any = build_data(data_cfg)
        if getattr(data, "from_sections", False):  # 2.5D: the middle section of a val volume with its neighbours
            volume = data.split("val").images[0].image
            return raw_to_nchw(raw_sections(volume, volume.depth // 2, int(data.context_slices)))
        images = data.load_split("val").images
    except (DataError, ConfigError, OSError) as exc:
        raise DataError(
            f"No test image: the checkpoint's val split could not be read ({exc}); "
            "pass bioimageio.test_image=FILE or bioimageio.data_root=DIR."
        ) from exc
    return raw_to_nchw(images[0])


def read_metrics(path: str | None) -> dict[str, float] | None:
    """The numeric ``<split>/<metric>`` entries of a unet-eval (or unet-train) ``metrics.json``."""
    if not path:
        return None
    file = Path(path).expanduser()
    try:
        content = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"bioimageio.metrics={file} is not a readable metrics.json: {exc}") from exc
    return {k: float(v) for k, v in content.items() if "/" in k and isinstance(v, (int, float))}


def export_bioimageio(
    exported: ExportModel, out: Path, weights: dict[str, Path], cfg: DictConfig, volume: TestVolume | None = None
) -> dict[str, Any]:
    """Write and test the package; ``volume`` is a 3D model's test volume, read before anything was exported."""
    from unet_train.export.bioimageio import PackageInfo, build_package
    from unet_train.export.package import save_package, test_package
    from unet_train.objects.params import instance_target

    settings = cfg.bioimageio
    kwargs = exported.kwargs
    variant = f"{kwargs.get('encoder')}-{kwargs.get('skip')}"
    name = settings.name or f"unet-train {variant} UNet"
    target = instance_target(exported.config.data)
    task = (
        f"instance segmentation ({target} maps; the post-processing in config.unet_train)" if target
        else "binary segmentation" if exported.out_channels == 1
        else f"{exported.out_channels}-class segmentation"
    )  # fmt: skip
    info = PackageInfo(
        name=name,
        description=settings.description
        or f"{kwargs.get('spatial_dims', 2)}D UNet ({variant}, depth {kwargs.get('depth')}) for {task}, "
        "trained with unet-train.",
        authors=[dict(a) for a in settings.authors],
        license=settings.license,
        tags=[*settings.tags, *(["instance-segmentation"] if target else [])],
        channel_names=list(settings.channel_names) if settings.channel_names else None,
        class_names=list(settings.class_names) if settings.class_names else None,
    )
    folder = out / "bioimageio"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in weights.values():
        shutil.copy2(path, folder / path.name)
    if exported.spatial_dims == 3:
        from unet_train.export.volume import read_test_volume

        volume = volume or read_test_volume(exported.config.data, settings.test_image, settings.data_root)
        raw, spacing, unit = volume.raw, volume.spacing, volume.unit
    else:
        raw, spacing, unit = test_image(exported, settings), None, None
    rdf = build_package(exported, raw, folder, info, weights, read_metrics(settings.metrics), spacing, unit)
    zip_path = save_package(rdf, folder, out / f"{name.replace(' ', '_')}.bioimageio.zip")
    log.info("Wrote %s", zip_path)
    result: dict[str, Any] = {"package": str(zip_path)}
    if cfg.test_bioimageio:
        result["bioimageio_test"] = test_package(zip_path, ["pytorch_state_dict", *weights])
    return result


@exit_on_user_error
def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt`` in ``cfg.format`` into ``cfg.output``; returns what was written and measured."""
    formats = chosen_formats(cfg.format)
    require_extra(formats)
    exported = load_export_model(cfg.ckpt, trust=cfg.get("trust_config", False))
    verification_sizes(exported, cfg.verify)  # a malformed verify.sizes_3d is refused before anything is written
    volume = None
    if "bioimageio" in formats and exported.spatial_dims == 3:  # so is a test volume that cannot be packaged
        from unet_train.export.bioimageio import check_test_size
        from unet_train.export.volume import read_test_volume

        volume = read_test_volume(exported.config.data, cfg.bioimageio.test_image, cfg.bioimageio.data_root)
        check_test_size(exported, volume.raw)
    out = Path(cfg.output).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output={out} is a file; pass a folder (it is created if missing).")
    make_folder(out, out)
    # Links planted among the outputs are refused before anything is exported (the package: when it is written).
    check_outputs(out, ["model.onnx", "model.onnx.data", "model.pt", "export.json", "bioimageio"])
    result: dict[str, Any] = {"ckpt": str(Path(cfg.ckpt).resolve()), "max_abs_diff": {}}
    weights: dict[str, Path] = {}
    # The package carries all three weight formats, so format=bioimageio exports the other two too.
    if "onnx" in formats or "bioimageio" in formats:
        from unet_train.export.onnx import export_onnx, onnx_runner

        weights["onnx"] = export_onnx(exported.folded, out / "model.onnx", exported.in_channels,
                                      example_size=exported.example_size)  # fmt: skip
        result["max_abs_diff"]["onnx"] = verify(exported, "ONNX (onnxruntime)", onnx_runner(weights["onnx"]), cfg)
    if "torchscript" in formats or "bioimageio" in formats:
        from unet_train.export.torchscript import torchscript_runner, trace_torchscript

        weights["torchscript"] = trace_torchscript(exported.folded, out / "model.pt", exported.in_channels,
                                                   exported.example_size)  # fmt: skip
        runner = torchscript_runner(weights["torchscript"])
        result["max_abs_diff"]["torchscript"] = verify(exported, "TorchScript", runner, cfg)
    if "bioimageio" in formats:
        result.update(export_bioimageio(exported, out, weights, cfg, volume))
    result["files"] = {k: str(v) for k, v in weights.items()}
    write_atomic(out / "export.json", json.dumps(result, indent=2) + "\n")
    for fmt, diff in result["max_abs_diff"].items():
        print(f"{fmt}: max |exported - PyTorch| = {diff:.2e}")
    for fmt, status in result.get("bioimageio_test", {}).items():
        print(f"bioimageio test ({fmt}): {status}")
    print(f"Exported to {out}")
    return result


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def hydra_main(cfg: DictConfig) -> None:
    run_export(cfg)


@console_script
def main() -> None:
    """The ``unet-export`` console script."""
    exit_if_version_asked()
    hydra_main()


if __name__ == "__main__":
    main()
