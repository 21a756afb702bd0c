"""A bioimage.io model package (spec 0.5): ``rdf.yaml``, weights in three formats, test tensors, README, cover.

``pytorch_state_dict`` (the architecture file from :mod:`.architecture` and the bare state dict) is the
parent entry; the ``torchscript`` and ``onnx`` entries name it as their parent. The inputs are raw
images (their own dtype) and the preprocessing states the checkpoint's normalisation as bioimage.io
operations; the weights return logits and the postprocessing turns them into probabilities
(``sigmoid`` for one logit channel, ``softmax`` over channels otherwise). An instance model's post-processing,
which no bioimage.io operation expresses, goes to the free-form ``config.unet_train`` (:mod:`.instances`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.transform import resize

from unet_train import __version__
from unet_train.data.normalize import bioimageio_preprocessing, prepare_input
from unet_train.data.reading import match_channels
from unet_train.data.sections import section_names, section_spec
from unet_train.errors import ConfigError, DataError
from unet_train.export.architecture import write_architecture
from unet_train.export.instances import KEY, instance_config, output_description
from unet_train.export.model import ExportModel
from unet_train.export.readme import package_readme
from unet_train.export.volume import space_axes
from unet_train.objects.heads import class_channels, map_names
from unet_train.objects.params import instance_target
from unet_train.safe_io import write_atomic, write_png

log = logging.getLogger(__name__)

# The description is built as 0.5.9 (plain-string documentation and covers, as bioimageio.spec 0.5.9,
# ilastik's pin, reads them); bioimageio.spec converts it on loading and saves 0.5.12, which
# package.write_for_older_readers turns back into this form inside the zip.
FORMAT_VERSION = "0.5.9"
UNET_CITATION = {
    "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
    "MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
# DOIs only: a URL would make the validator send a request, which fails offline.
VARIANT_CITATIONS = {
    "attention": ("Woo et al. CBAM: Convolutional Block Attention Module. ECCV 2018.", "10.1007/978-3-030-01234-2_1"),
    "attention_gate": (
        "Oktay et al. Attention U-Net: Learning Where to Look for the Pancreas. MIDL 2018.",
        "10.48550/arXiv.1804.03999",
    ),
    "dense": ("Huang et al. Densely Connected Convolutional Networks. CVPR 2017.", "10.1109/CVPR.2017.243"),
    "dilated": (
        "Yu and Koltun. Multi-Scale Context Aggregation by Dilated Convolutions. ICLR 2016.",
        "10.48550/arXiv.1511.07122",
    ),
}


@dataclass
class PackageInfo:
    """The package's metadata (``bioimageio.*`` in ``configs/export.yaml``)."""

    name: str
    description: str
    authors: list[dict[str, Any]]
    license: str = "MIT"
    tags: list[str] = field(default_factory=list)
    channel_names: list[str] | None = None
    class_names: list[str] | None = None


def citations(kwargs: dict[str, Any]) -> list[dict[str, str]]:
    """The UNet paper and the papers of the variant's parts."""
    parts = [kwargs.get("skip"), kwargs.get("encoder")]
    return [UNET_CITATION] + [
        {"text": VARIANT_CITATIONS[p][0], "doi": VARIANT_CITATIONS[p][1]} for p in parts if p in VARIANT_CITATIONS
    ]


def probabilities(logits: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """The package's postprocessing: sigmoid for one logit channel (or, ``sigmoid``, for every channel: a
    distance model's foreground and distance map), softmax over channels otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 or sigmoid else torch.softmax(logits, dim=1)


def raw_to_nchw(raw: np.ndarray) -> np.ndarray:
    """A raw ``(H, W)`` or ``(H, W, C)`` image as ``(1, C, H, W)`` in its own dtype."""
    array = raw[..., None] if raw.ndim == 2 else raw
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


def write_cover(path: Path, raw: np.ndarray, prob: np.ndarray, sigmoid: bool = False) -> Path:
    """A 2:1 cover: the input (first channel, stretched) beside the probability of the first class (``sigmoid``:
    of the first channel, a distance model's foreground)."""

    def panel(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return resize(a, (256, 256), order=1, anti_aliasing=True)

    positive = prob[0, 0] if prob.shape[1] == 1 or sigmoid else prob[0].argmax(0) / max(prob.shape[1] - 1, 1)
    image = raw[0, 0]
    if image.ndim == 3:  # a volume: its middle plane
        image, positive = image[image.shape[0] // 2], positive[positive.shape[0] // 2]
    cover = np.concatenate([panel(image), panel(positive)], axis=1)
    return write_png(path, (cover * 255).round().astype(np.uint8))


def test_tensors(exported: ExportModel, raw: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """The package's raw test input, cropped to its size grid, and the model input ``unet-predict`` makes of it.

    An image ``(1, C, H, W)`` is given the model's channels as unet-predict does (grey copied to 3, RGB turned
    grey); a volume ``(1, C, Z, Y, X)`` must have them. Either is scaled by the checkpoint's ``data.normalize``.
    """
    stored, channels = exported.config, exported.in_channels
    if exported.spatial_dims == 3:
        from unet_train.export.volume import volume_model_input

        check_test_size(exported, raw)  # its channels too
        z, y, x = (s - s % m for s, m in zip(raw.shape[2:], exported.multiples))
        raw = np.ascontiguousarray(raw[..., :z, :y, :x])
        return raw, volume_model_input(raw, stored.data)
    height, width = (s - s % exported.multiple for s in raw.shape[-2:])
    image = np.moveaxis(raw[0, :, :height, :width], 0, -1)
    image = match_channels(image[..., 0] if image.shape[-1] == 1 else image, channels, "the test image")
    normalize = package_spec(exported)
    return raw_to_nchw(image), torch.from_numpy(prepare_input(image, channels, normalize, "the test image")[None])


def package_spec(exported: ExportModel) -> Any:
    """The checkpoint's ``data.normalize`` for the package's input channels: of a 2.5D model, the ``2k + 1``
    stacked sections, per-channel values repeated per section (:func:`~unet_train.data.sections.section_spec`)."""
    normalize = exported.config.data.get("normalize")  # a DictConfig (or None); resolve_spec reads either
    context = int(exported.config.data.get("context_slices") or 0)
    return section_spec(normalize, context) if context else normalize


def check_test_size(exported: ExportModel, raw: np.ndarray) -> None:
    """Refuse a test image or volume smaller than the package's smallest input, or a volume of other channels."""
    sides, multiples = raw.shape[2:], exported.multiples
    if exported.spatial_dims == 3 and raw.shape[1] != exported.in_channels:
        raise DataError(
            f"The test volume has {raw.shape[1]} channel(s) but the model takes {exported.in_channels}; "
            "pass a bioimageio.test_image with its channels."
        )
    if exported.spatial_dims == 2 and exported.multiple > min(sides):
        raise ConfigError(
            f"The test image is {raw.shape[-2]}x{raw.shape[-1]} but the package's smallest input is "
            f"{exported.multiple}x{exported.multiple} (2**model.depth); pass a larger test_image."
        )
    if exported.spatial_dims == 3 and any(m > s for m, s in zip(multiples, sides)):
        raise ConfigError(
            f"The test volume is {'x'.join(map(str, sides))} (z, y, x) but the package's smallest input is "
            f"{'x'.join(map(str, multiples))} (the model's pooling per axis); pass a larger bioimageio.test_image."
        )


def build_package(
    exported: ExportModel,
    raw: np.ndarray,
    folder: Path,
    info: PackageInfo,
    weights: dict[str, Path],
    metrics: dict[str, float] | None,
    spacing: Sequence[float] | None = None,
    unit: str | None = None,
) -> dict[str, Any]:
    """Write the package's files into ``folder`` and return the ``rdf.yaml`` content (relative paths).

    ``weights`` maps ``onnx`` / ``torchscript`` to files already exported into ``folder``. ``raw`` is the raw
    test image ``(1, C, H, W)`` or, for a 3D model, volume ``(1, C, Z, Y, X)``; ``spacing`` (its voxel size,
    ``z, y, x``) and ``unit`` become the space axes' ``scale`` and ``unit``.
    """
    check_test_size(exported, raw)
    stored = exported.config
    normalize = package_spec(exported)
    channels = exported.in_channels
    context = int(stored.data.get("context_slices") or 0)  # 2.5D: 2k + 1 sections as channels, section-major
    # The test output is what unet-predict computes: the training normaliser, then the model.
    raw, x = test_tensors(exported, raw)
    # data.target=distance: one foreground logit, then the distance map; each channel through its own sigmoid
    sigmoid = class_channels(stored.data) == 1
    with torch.inference_mode():
        prob = probabilities(exported.model(x), sigmoid).numpy().astype(np.float32)
    write_atomic(folder / "test_input.npy", lambda handle: np.save(handle, raw))
    write_atomic(folder / "test_output.npy", lambda handle: np.save(handle, prob))
    write_atomic(folder / "weights.pt", lambda handle: torch.save(exported.model.state_dict(), handle))
    write_architecture(folder / "unet_arch.py")
    write_cover(folder / "cover.png", raw, prob, sigmoid)

    out_channels = exported.out_channels
    target = instance_target(stored.data)
    default_names = (
        ["foreground", *map_names(stored.data)] if sigmoid
        else ["background", "interior", "boundary"] if target == "boundary" and out_channels == 3
        else None
    )  # fmt: skip
    class_names = (
        info.class_names
        or default_names
        or (["foreground"] if out_channels == 1 else [f"class{k}" for k in range(out_channels)])
    )
    if len(class_names) != out_channels:
        raise ConfigError(f"bioimageio.class_names={class_names} needs {out_channels} names (the model's outputs).")
    check_names("class_names", class_names)
    # an instance model: its post-processing (the checkpoint's tuned parameters), which bioimage.io cannot state
    instances = instance_config(exported.checkpoint, stored.data, class_names)
    write_atomic(folder / "README.md", package_readme(exported, info.name, metrics, instances))
    channel_names = info.channel_names or (
        section_names(context, channels // (2 * context + 1)) if context
        else [f"channel{c}" for c in range(channels)] if channels > 1 else ["raw"]
    )  # fmt: skip
    if len(channel_names) != channels:
        raise ConfigError(f"bioimageio.channel_names={channel_names} needs {channels} names (data.in_channels).")
    check_names("channel_names", channel_names)
    names = "yx" if exported.spatial_dims == 2 else "zyx"
    input_axes, output_axes = space_axes(names, exported.multiples, spacing, unit)
    torch_version = torch.__version__.split("+")[0]
    weight_entries: dict[str, Any] = {
        "pytorch_state_dict": {
            "source": "weights.pt",
            "architecture": {"source": "unet_arch.py", "callable": "UNet", "kwargs": exported.kwargs},
            "pytorch_version": torch_version,
        }
    }
    if "torchscript" in weights:
        weight_entries["torchscript"] = {
            "source": weights["torchscript"].name,
            "parent": "pytorch_state_dict",
            "pytorch_version": torch_version,
        }
    if "onnx" in weights:
        from unet_train.export.onnx import OPSET

        weight_entries["onnx"] = {
            "source": weights["onnx"].name,
            "parent": "pytorch_state_dict",
            "opset_version": OPSET,
        }
    dims_tag = f"{exported.spatial_dims}d"
    binary = out_channels == 1 or sigmoid
    postprocessing = [{"id": "sigmoid"}] if binary else [{"id": "softmax", "kwargs": {"axis": "channel"}}]
    description = "sigmoid of each logit" if binary else "softmax over the classes"
    if instances:  # the channels by name, and where the instance step is
        description = output_description(instances, binary)
    rdf: dict[str, Any] = {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": info.name,
        "description": info.description,
        "authors": info.authors,
        "cite": citations(exported.kwargs),
        "license": info.license,
        "tags": list(dict.fromkeys([*info.tags, "unet", "segmentation", dims_tag, "pytorch", "onnx", "torchscript"])),
        "documentation": "README.md",
        "covers": ["cover.png"],
        "inputs": [
            {
                "id": "raw",
                "description": "raw image in its own dtype; the preprocessing normalises it as in training"
                + (f"; sections z-{context}..z+{context} as channels, section-major" if context else ""),
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": channel_names},
                    *input_axes,
                ],
                "test_tensor": {"source": "test_input.npy"},
                # bioimage.io's `data` is the tensor after preprocessing, the model's float32 input.
                "data": {"type": "float32"},
                # A cast to the model's float32, then data.normalize as bioimage.io operations.
                "preprocessing": [
                    {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                    *bioimageio_preprocessing(normalize, raw.dtype, names),
                ],
            }
        ],
        "outputs": [
            {
                "id": "probabilities",
                "description": description,
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": class_names},
                    *output_axes,
                ],
                "test_tensor": {"source": "test_output.npy"},
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": postprocessing,
            }
        ],
        "weights": weight_entries,
    }
    if instances:  # bioimage.io's free-form config: a tool's own keys under its name
        rdf["config"] = {"unet_train": {"version": __version__, KEY: instances}}
    return rdf


def check_names(key: str, names: Sequence[str]) -> None:
    """Channel or class names as one line of text each: they go into the package README's tables and headings
    and the outputs' descriptions, where a newline, a ``|`` or a backtick would change the Markdown."""
    for name in names:
        if not str(name).strip() or any(c in str(name) for c in "|`") or not str(name).isprintable():
            raise ConfigError(
                f"bioimageio.{key}: {str(name)!r} is not a name of one line of text (no line breaks, '|' or '`'); "
                "give plain names, e.g. [background, nucleus]."
            )
