"""ONNX export with ``torch.onnx.export(dynamo=True)``: dynamic batch and spatial sizes (y, x or z, y, x), one file."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unet_train.safe_io import cleared

log = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# ONNX keeps weights inside the .onnx file up to protobuf's 2 GB limit.
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2


def export_onnx(
    model: nn.Module, path: str | Path, in_channels: int, opset: int = OPSET, example_size: Sequence[int] = (45, 37)
) -> Path:
    """Write ``model`` (eval mode, float32, NC[D]HW logits) to ``path`` with dynamic N and spatial sizes.

    ``torch.export`` traces the model symbolically: the example sizes fix nothing, because the UNet's
    pad-to-a-multiple step has no Python branch on the sizes. The example batch is 2, since export
    specialises a dimension that is 1 in the example to the constant 1. ``example_size`` is (H, W) for
    a 2D model, (D, H, W) for a 3D one; no side may be 1, for the same reason.
    """
    path = Path(path)
    example = torch.rand(2, in_channels, *example_size)  # sizes that are not multiples of anything
    dynamic = torch.export.Dim.DYNAMIC
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    external = weight_bytes > EXTERNAL_DATA_BYTES
    # The exporter and its optimiser log every rewrite at INFO and warn about torchvision ops.
    for name in ("torch.onnx", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "torchvision is not installed. Skipping torchvision::nms" and the like, one line per op, are WARNINGs.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {axis: dynamic for axis in range(example.ndim) if axis != 1}},  # all but channels
            opset_version=opset,
            external_data=external,
            verbose=False,
        )
    assert program is not None
    # torch.export names the dynamic axes after its symbols (s77, s53); a reader of the file wants their meaning.
    shape = program.model.graph.inputs[0].shape
    if shape is not None and hasattr(program, "rename_axes"):  # torch 2.9+
        spatial = "zyx"[5 - example.ndim :]  # y, x or z, y, x
        names = {0: "batch", **{2 + i: axis for i, axis in enumerate(spatial)}}
        axes = {shape[i]: name for i, name in names.items() if not isinstance(shape[i], int)}
        program.rename_axes(axes)  # type: ignore[arg-type]
    # The exporter writes the file (and its .data beside it) itself: fresh files, not through planted links.
    cleared(path)
    cleared(path.with_name(path.name + ".data"))
    program.save(str(path), external_data=external)
    log.info("Wrote %s (opset %d%s)", path, opset, ", weights in an external file" if external else "")
    return path


def onnx_runner(path: str | Path) -> Callable[[torch.Tensor], np.ndarray]:
    """A function that runs the ONNX file with onnxruntime on the CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> np.ndarray:
        array = x.numpy()
        return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(array, dtype=np.float32)})[0]

    return run
