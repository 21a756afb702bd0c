"""The package's README: what the model is, how to run it, and a ``# Validation`` section from its metrics."""

from __future__ import annotations

from typing import Any

from unet_train.export.instances import readme_lines
from unet_train.export.model import ExportModel
from unet_train.objects.heads import affinity_offsets, class_channels
from unet_train.objects.params import instance_target


def validation_section(metrics: dict[str, float] | None) -> str:
    """``# Validation``: the checkpoint's evaluation metrics (``unet-eval``'s metrics.json), 4 decimals."""
    lines = ["# Validation", ""]
    if not metrics:
        return "\n".join([*lines, "No evaluation metrics were given to the export (`metrics=` in unet-export).", ""])
    lines += ["Measured by unet-train on the checkpoint's own data split:", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items()]
    return "\n".join([*lines, ""])


def sizes_sentence(exported: ExportModel) -> str:
    """What input sizes work and which the package declares."""
    if exported.spatial_dims == 2:
        m = exported.multiple
        return (
            f"Inputs of any size work (the model pads to a multiple of {m} and crops back); the package "
            f"declares sides of {m} + k x {m}, where nothing is padded."
        )
    z, y, x = exported.multiples
    return (
        f"Inputs are volumes (batch, channel, z, y, x). Any size works (the model pads z, y and x to multiples of "
        f"{z}, {y} and {x}, its pooling per axis, and crops back); the package declares those multiples per axis, "
        "where nothing is padded, and the training data's voxel size as the space axes' scale."
    )


def context_lines(exported: ExportModel) -> list[str]:
    """2.5D (``data.context_slices=k``): the input is ``2k + 1`` sections as channels, the output the centre's mask."""
    k = int(exported.config.get("data", {}).get("context_slices") or 0)
    if not k:
        return []
    per = exported.in_channels // (2 * k + 1)
    return [
        "",
        f"A 2.5D model: the input is {2 * k + 1} neighbouring sections of a volume as channels, z-{k} .. z+{k} in "
        f"order ({per} channel(s) each, section-major: channel j x {per} + c is channel c of section z-{k}+j), and "
        "the output is the segmentation of the centre section z. At the volume's ends the missing sections are "
        "mirrored without repeating the end one (for section 0, z-1 is section 1). unet-predict applies it to a "
        "whole volume section by section.",
    ]


def package_readme(
    exported: ExportModel, name: str, metrics: dict[str, float] | None, instances: dict[str, Any] | None = None
) -> str:
    """The README of the package; ``instances``: an instance model's ``config.unet_train.instances``
    (:func:`~unet_train.export.instances.instance_config`), stated in a ``# Instances`` section."""
    kwargs: dict[str, Any] = exported.kwargs
    classes = exported.out_channels
    data = exported.config.get("data", {})
    maps = class_channels(data) == 1  # data.target=distance: a foreground logit and a distance map, each a sigmoid
    lines = [
        f"# {name}",
        "",
        f"A {kwargs.get('spatial_dims', 2)}D UNet trained with unet-train on `{data.get('_target_', 'unknown data')}`: "
        f"encoder `{kwargs.get('encoder')}`, skip `{kwargs.get('skip')}`, depth {kwargs.get('depth')}, base width "
        f"{kwargs.get('base_channels')}, {exported.in_channels} input channel(s), "
        + (
            "one logit (binary segmentation)."
            if classes == 1
            else f"a foreground logit and {classes - 1} affinity maps, one per neighbour offset "
            f"{[list(o) for o in affinity_offsets(data)]} (instances: components of the face-neighbour affinities)."
            if maps and data.get("target") == "affinities"
            else "a foreground logit and a distance-to-the-boundary map (instances by a seeded watershed)."
            if maps
            else "3 classes, background, interior and boundary (instances by a seeded watershed from the interiors)."
            if instance_target(data) == "boundary" and classes == 3
            else f"{classes} classes."
        ),
        *context_lines(exported),
        "",
        "The weights return logits; the package's postprocessing turns them into probabilities "
        + (
            "(sigmoid)."
            if classes == 1
            else "(sigmoid of each channel)."
            if maps
            else "(softmax over the channel axis)."
        ),
        sizes_sentence(exported),
        "Batch norms are folded into the convolutions in the ONNX and TorchScript weights.",
        "",
        *(readme_lines(instances, exported.path.name) if instances else []),
        validation_section(metrics),
    ]
    return "\n".join(lines)
