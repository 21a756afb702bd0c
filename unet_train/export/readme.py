"""The package's README: what the model is, how to run it, and a ``# Validation`` section from its metrics."""

from __future__ import annotations

from typing import Any

from unet_train.export.model import ExportModel


def validation_section(metrics: dict[str, float] | None) -> str:
    """``# Validation``: the checkpoint's evaluation metrics (``unet-eval``'s metrics.json), 4 decimals."""
    lines = ["# Validation", ""]
    if not metrics:
        return "\n".join([*lines, "No evaluation metrics were given to the export (`metrics=` in unet-export).", ""])
    lines += ["Measured by unet-train on the checkpoint's own data split:", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items()]
    return "\n".join([*lines, ""])


def package_readme(exported: ExportModel, name: str, metrics: dict[str, float] | None) -> str:
    kwargs: dict[str, Any] = exported.kwargs
    classes = exported.out_channels
    data = exported.config.get("data", {})
    lines = [
        f"# {name}",
        "",
        f"A {kwargs.get('spatial_dims', 2)}D UNet trained with unet-train on `{data.get('_target_', 'unknown data')}`: "
        f"encoder `{kwargs.get('encoder')}`, skip `{kwargs.get('skip')}`, depth {kwargs.get('depth')}, base width "
        f"{kwargs.get('base_channels')}, {exported.in_channels} input channel(s), "
        + ("one logit (binary segmentation)." if classes == 1 else f"{classes} classes."),
        "",
        "The weights return logits; the package's postprocessing turns them into probabilities "
        + ("(sigmoid)." if classes == 1 else "(softmax over the channel axis)."),
        f"Inputs of any size work (the model pads to a multiple of {exported.multiple} and crops back); the package "
        f"declares sides of {exported.multiple} + k x {exported.multiple}, where nothing is padded.",
        "Batch norms are folded into the convolutions in the ONNX and TorchScript weights.",
        "",
        validation_section(metrics),
    ]
    return "\n".join(lines)
