"""What a config read from a file may build: the one place that decides it.

A checkpoint (or any config a file carries) is data. Its ``_target_`` nodes name callables that
``hydra.utils.instantiate`` would import and call, so a crafted file could name
``pathlib.Path.write_text`` or ``shutil.rmtree`` and have them run when the model is built. Before
anything in such a config is built, :func:`check_config` compares every ``_target_`` in it,
nested ones included (``_args_``, ``_partial_`` factories, albumentations pipelines), with the
project's own components, as exact strings and without importing anything the string names:

- what ``unet_train.models``, ``unet_train.data``, ``unet_train.losses`` and
  ``unet_train.engine.schedulers`` export in ``__all__`` (adding a component there makes it buildable);
- the optimizers of ``torch.optim`` and the schedulers of ``torch.optim.lr_scheduler``;
- the transforms and compositions of albumentations (``albumentations.Compose``, ``albumentations.RandomCrop``,
  ...), except ``Lambda``, whose purpose is to call arbitrary code.

Each is accepted by its public name and by its defining module's path. A prefix is never enough:
modules re-export what they import (``unet_train.data.base.Path`` is ``pathlib.Path``).

Interpolations are checked too: a stored config is written resolved, so one that still holds
``${...}`` was edited. References to other keys and read-only resolvers (``oc.env``, ``oc.select``,
``now``, the project's ``unet.*``) are harmless; ``oc.create`` and ``oc.decode`` turn strings into
new config nodes the check never saw, and other resolvers are code that this rule does not know, so
both are refused.

``trust_config=true`` switches the check off; ``trust_config=[my_pkg]`` also accepts targets in
the module ``my_pkg`` and below (for a user's own model or loss). Neither is ever read from the
file itself: only the command line (or the config the user composed) can say it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from unet_train.errors import ConfigError

# Packages of the project whose ``__all__`` lists what a stored config may build.
COMPONENT_MODULES = ("unet_train.models", "unet_train.data", "unet_train.losses", "unet_train.engine.schedulers")
# albumentations transforms that run a callable given to them rather than a fixed operation.
EXCLUDED_TRANSFORMS = frozenset({"Lambda"})
# Resolvers that only read (the environment, the clock, other keys) or compute plain values.
SAFE_RESOLVERS = frozenset(
    {"oc.env", "oc.select", "oc.dict.keys", "oc.dict.values", "now", "hydra"}
    | {"unet.run_dir", "unet.logit_channels", "unet.monitor_direction"}
)
HINT_TARGET = "If you wrote this component, pass trust_config=true or trust_config=[your_module]."
HINT_RESOLVER = "If you wrote this config, pass trust_config=true."


class UntrustedConfigError(ConfigError):
    """A config read from a file names something outside the project's components."""


def _names_of(objects: Iterator[tuple[str, Any]], public_module: str) -> set[str]:
    """The public name ``public_module.NAME`` of each object, and ``defining.module.QualName``."""
    names: set[str] = set()
    for name, obj in objects:
        names.add(f"{public_module}.{name}")
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
            names.add(f"{module}.{qualname}")
    return names


@functools.cache
def allowed_targets() -> frozenset[str]:
    """Every ``_target_`` string a config read from a file may name (computed once)."""
    import albumentations
    import torch.optim
    import torch.optim.lr_scheduler
    from albumentations.core.composition import BaseCompose
    from albumentations.core.transforms_interface import BasicTransform

    names: set[str] = set()
    for module_name in COMPONENT_MODULES:
        module = importlib.import_module(module_name)
        names |= _names_of(((n, getattr(module, n)) for n in module.__all__), module_name)

    def members(module: Any, base: type | tuple[type, ...]) -> Iterator[tuple[str, Any]]:
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, base) and not name.startswith("_"):
                yield name, obj

    schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    names |= _names_of(members(torch.optim, torch.optim.Optimizer), "torch.optim")
    names |= _names_of(members(torch.optim.lr_scheduler, schedulers), "torch.optim.lr_scheduler")
    transforms = (
        (n, obj)
        for n, obj in members(albumentations, (BasicTransform, BaseCompose))
        if n not in EXCLUDED_TRANSFORMS and obj.__module__.startswith("albumentations.")
    )
    names |= _names_of(transforms, "albumentations")
    return frozenset(names)


def trusted_modules(value: Any) -> bool | list[str]:
    """The ``trust_config`` setting as given (``true``/``false``, one module or a list of them), checked."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, (Sequence, ListConfig)) else None
    if items is None or not all(isinstance(item, str) and item.strip(".") for item in items):
        raise ConfigError(
            f"trust_config={value!r} must be true, false or a list of module names (trust_config=[my_package])."
        )
    return [item.strip(".") for item in items]


def _is_trusted(target: str, modules: Sequence[str]) -> bool:
    return any(target == module or target.startswith(module + ".") for module in modules)


def _walk(node: Any, where: str) -> Iterator[tuple[str, Any, Any]]:
    """``(path, key, value)`` for every entry of a tree of dicts and lists, parents before children."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}"
            yield path, key, value
            yield from _walk(value, path)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            path = f"{where}[{index}]"
            yield path, index, value
            yield from _walk(value, path)


def _resolvers(text: str) -> list[str] | None:
    """The resolver names an interpolated string calls (None if OmegaConf could not parse it at all)."""
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
    from omegaconf.grammar_parser import parse

    try:
        tree = parse(text)
    except Exception:  # OmegaConf would refuse the value when it is read: nothing can run
        return None
    names: list[str] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, OmegaConfGrammarParser.ResolverNameContext):
            names.append(node.getText())  # an interpolated name (${${x}:...}) keeps its "${": never safe
        pending.extend(node.getChildren() if hasattr(node, "getChildren") else ())
    return names


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_config(config: Any, *, source: str, trusted: bool | Sequence[str] = False) -> None:
    """Refuse a config read from ``source`` if it could build or run anything but the project's components.

    Args:
        config: the config as read (nested dicts and lists, or a ``DictConfig``/``ListConfig``);
            interpolations are inspected, never resolved.
        source: what the config was read from, for the message (``"checkpoint /x/best.pt"``).
        trusted: ``True`` skips the check; a list of module names also allows their targets.

    Raises:
        UntrustedConfigError: naming the first offending key, its value and the fix.
    """
    modules = trusted_modules(trusted)
    if modules is True:
        return
    extra = modules if isinstance(modules, list) else []
    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=False)
    allowed = allowed_targets()
    for path, key, value in _walk(config, "config"):
        if key == "_target_" and not (isinstance(value, str) and (value in allowed or _is_trusted(value, extra))):
            raise UntrustedConfigError(
                f"{path}={_short(value)} is not a unet-train component; refusing to build it ({source}). {HINT_TARGET}"
            )
        if isinstance(value, str) and "${" in value:
            unsafe = [name for name in _resolvers(value) or () if name not in SAFE_RESOLVERS]
            if unsafe:
                raise UntrustedConfigError(
                    f"{path}={_short(value)} calls the resolver {unsafe[0]}, which a stored config may not run; "
                    f"refusing to build it ({source}). {HINT_RESOLVER}"
                )
