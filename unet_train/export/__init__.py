"""``unet-export``: a checkpoint as ONNX, TorchScript and a bioimage.io model package, each verified.

The exporters need the optional extra ``export`` (onnx, onnxscript, onnxruntime, bioimageio.core);
:func:`require_extra` names it in one line when a package is missing.
"""

from __future__ import annotations

import importlib.util

from unet_train.errors import UserError

EXTRA_HINT = 'pip install "unet-train[export]"'
# The import name of each package the exporters need, by format.
NEEDS = {
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "torchscript": (),
    "bioimageio": ("onnx", "onnxscript", "onnxruntime", "bioimageio.spec", "bioimageio.core"),
}


class MissingExtra(UserError):
    """A package of the ``export`` extra is not installed."""


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package (bioimageio) is missing
        return False


def require_extra(formats: list[str]) -> None:
    """Raise :class:`MissingExtra` naming the extra when a package ``formats`` need is not importable."""
    missing = sorted({name for fmt in formats for name in NEEDS[fmt] if not _installed(name)})
    if missing:
        raise MissingExtra(
            f"format={','.join(formats)} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed: {EXTRA_HINT}"
        )
