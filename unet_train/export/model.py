"""The model to export: a checkpoint's UNet in eval mode, deep supervision heads dropped."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from unet_train.build import build_model
from unet_train.engine.checkpoint import check_model_size, load_checkpoint, load_model_state
from unet_train.errors import CheckpointError
from unet_train.inference.tiling import fold_batchnorm, size_multiple
from unet_train.models import UNet


class VerificationError(RuntimeError):
    """An exported model does not reproduce the PyTorch model (a bug, not a user error)."""


@dataclass
class ExportModel:
    """What every exporter needs from a checkpoint.

    ``model`` is the checkpoint's UNet without the deep supervision heads (eval mode), whose state dict
    is the bioimage.io ``pytorch_state_dict``; ``folded`` is the same model with batch norms folded
    into the convolutions, as ``unet-predict`` runs it, which the ONNX and TorchScript graphs hold.
    """

    model: nn.Module
    folded: nn.Module
    kwargs: dict[str, Any]  # UNet's constructor arguments (the architecture's kwargs)
    config: DictConfig  # the checkpoint's resolved run config
    checkpoint: dict[str, Any]
    path: Path

    @property
    def in_channels(self) -> int:
        return int(self.kwargs.get("in_channels", 1))

    @property
    def out_channels(self) -> int:
        return int(self.kwargs.get("out_channels", 1))

    @property
    def multiple(self) -> int:
        """The side multiple on which the model pads nothing (``2**depth``)."""
        return 2 ** int(self.kwargs.get("depth", 4))

    @property
    def spatial_dims(self) -> int:
        return int(self.kwargs.get("spatial_dims", 2))

    @property
    def multiples(self) -> tuple[int, ...]:
        """Per spatial axis (``y, x`` or ``z, y, x``), the side multiple on which the model pads nothing."""
        multiples = size_multiple(self.model)
        return multiples * self.spatial_dims if len(multiples) == 1 else multiples

    @property
    def example_size(self) -> tuple[int, ...]:
        """The input size the exporters trace: no side 1 (export would fix it to 1) and none a multiple of anything."""
        return (45, 37) if self.spatial_dims == 2 else (11, 45, 37)


def load_export_model(path: str | Path, trust: bool | Sequence[str] = False) -> ExportModel:
    """Rebuild a checkpoint's model for export (CPU, float32, eval mode, no auxiliary heads).

    ``trust`` is ``trust_config``: the checkpoint's config builds only unet-train components unless it says more.
    """
    path = Path(path).expanduser()
    checkpoint = load_checkpoint(path, trust=trust)
    config = OmegaConf.create(checkpoint["config"])
    model_cfg = copy.deepcopy(config.model)
    model_cfg.deep_supervision = False  # the heads only serve the training loss
    check_model_size(lambda: build_model(model_cfg), checkpoint["model"], path)
    model = build_model(model_cfg)
    if not isinstance(model, UNet):
        raise CheckpointError(f"{path}: model._target_ builds {type(model).__name__}, not the UNet that export knows.")
    state = {k: v.float() for k, v in checkpoint["model"].items() if not k.startswith("aux_heads.")}
    load_model_state(model, state, path)
    model.eval()
    arguments = OmegaConf.to_container(model_cfg, resolve=True)
    assert isinstance(arguments, dict)
    kwargs = {str(k): v for k, v in arguments.items() if k != "_target_"}
    with torch.no_grad():
        folded = fold_batchnorm(model)
    return ExportModel(model, folded, kwargs, config, checkpoint, path)


def verification_inputs(
    in_channels: int, sizes: list[list[int]], batch_sizes: list[int], seed: int = 0
) -> list[torch.Tensor]:
    """Random normalised inputs for every (batch size, size) pair, fixed by ``seed``; a size is ``(H, W)`` or
    ``(D, H, W)``."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.rand(batch, in_channels, *(int(side) for side in size), generator=generator)
        for size in sizes
        for batch in batch_sizes
    ]


def volume_sizes(multiples: Sequence[int]) -> list[list[int]]:
    """The sizes a 3D export is checked at (``verify.sizes_3d: null``): two on the model's pooling grid, which
    differ on every axis, and one off it, which the graph pads."""
    return [[2 * m for m in multiples], [3 * m for m in multiples], [2 * m + 1 for m in multiples]]


def max_abs_difference(reference: nn.Module, run: Any, inputs: list[torch.Tensor]) -> float:
    """Largest ``|reference(x) - run(x)|`` over ``inputs``; ``run`` takes and returns numpy or torch."""
    worst = 0.0
    with torch.inference_mode():
        for x in inputs:
            expected = reference(x)
            got = torch.as_tensor(run(x))
            if tuple(got.shape) != tuple(expected.shape):
                raise VerificationError(
                    f"exported model returned shape {tuple(got.shape)} for input {tuple(x.shape)}, "
                    f"expected {tuple(expected.shape)}"
                )
            worst = max(worst, float((got - expected).abs().max()))
    return worst
