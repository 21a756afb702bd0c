"""What a binary problem's positive class is: the one decision unet-eval, validation and unet-predict share.

``membrane``: the positive class is the border between segments (ISBI 2012's default, the synthetic
membranes, a folder with ``data.foreground=membrane``); V-Rand/V-Info segment what it encloses and
``instance_method=auto`` is ``membrane``. Anything else (a folder's ``object``, ISBI's ``cell``): the
positive class is the segments' pixels; ``auto`` is ``components``.
"""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig


def foreground_of(data: Any) -> str:
    """``data.foreground`` of a built data module or of its config.

    A config without the key (a checkpoint written before a data class had it) gets what building it
    would give: the default of its ``_target_``'s ``foreground`` argument (ImageFolder: ``object``,
    ISBI2012: ``membrane``); a class without one (SyntheticMembranes) is a membrane problem.
    """
    if not isinstance(data, (DictConfig, dict)):
        return str(getattr(data, "foreground", "membrane"))
    value = data.get("foreground")
    if value is not None:
        return str(value)
    target = data.get("_target_")
    if not target:
        return "membrane"
    try:  # the config's targets were checked (trust) before any caller gets here
        from hydra.utils import get_class

        parameter = inspect.signature(get_class(str(target))).parameters.get("foreground")
    except Exception:  # an unimportable class: the old behaviour
        return "membrane"
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return "membrane"
    return str(parameter.default)


def boundary_positive(data: Any) -> bool:
    """Whether the positive class is the border of the V-Rand/V-Info segments (see the module docstring)."""
    return foreground_of(data) == "membrane"
