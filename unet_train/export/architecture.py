"""A self-contained copy of the UNet's source for bioimage.io's ``pytorch_state_dict`` weights.

bioimage.io rebuilds a ``pytorch_state_dict`` model from one Python file and a callable in it. The
file is generated from the project's own modules (blocks, skips, unet), so it is the code that was
trained, with the project's imports removed: it imports only torch and the standard library.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from unet_train.models import blocks, skips, unet
from unet_train.safe_io import write_atomic

MODULES = (blocks, skips, unet)  # in dependency order
HEADER = '''"""UNet architecture exported by unet-train (generated from unet_train.models; imports only torch)."""

from __future__ import annotations

'''
PRELUDE = '''

class ConfigError(ValueError):
    """A model argument that cannot work (unet_train.errors.ConfigError in the project)."""
'''


def architecture_source() -> str:
    """The source of ``blocks``, ``skips`` and ``unet`` as one module without ``unet_train`` imports."""
    imports: list[str] = []
    bodies: list[str] = []
    for module in MODULES:
        source = inspect.getsource(module)
        lines = source.splitlines()
        tree = ast.parse(source)
        body_start = None
        for node in tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0]:
                continue  # the module docstring
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
                foreign = isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                    "unet_train",
                    "__future__",
                )
                if not foreign and text not in imports:
                    imports.append(text)
                continue
            body_start = node.lineno if body_start is None else body_start
            # decorators start above the def
            if getattr(node, "decorator_list", None):
                body_start = min(body_start, min(d.lineno for d in node.decorator_list))  # type: ignore[attr-defined]
        if body_start is not None:
            bodies.append("\n".join(lines[body_start - 1 :]))
    return HEADER + "\n".join(imports) + "\n" + PRELUDE + "\n\n" + "\n\n\n".join(bodies) + "\n"


def write_architecture(path: str | Path) -> Path:
    """Write :func:`architecture_source` to ``path`` (checked to parse)."""
    path = Path(path)
    source = architecture_source()
    compile(source, str(path), "exec")
    return write_atomic(path, source)
