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

A config read from a file resolves nothing: a checkpoint stores its config resolved and a plan
holds plain values, so an interpolation (``${...}``) in either was written by hand, and none is
accepted, neither a resolver nor a reference to another key. Refusing them all, rather than
keeping a list of harmless resolvers, is the simpler sound rule: ``oc.env`` would read secrets into
a URL, ``hydra:`` reaches Hydra's own config (its callbacks are components too), a key reference
reads ``paths.*`` of the runtime, and a resolver registered later could do anything.

An allowed component is not enough either: a file-borne data config never downloads or names where
to write (:func:`file_borne_data` resets ``download``, ``urls`` and caps ``num_workers``), a plan
may not set :data:`PLAN_FORBIDDEN` keys, and a YAML file read for a config holds no anchors or aliases
and is bounded in size and nesting (:func:`read_yaml`): a 275-byte alias chain expands to millions of nodes.

``trust_config=true`` switches the target and interpolation checks off; ``trust_config=[my_pkg]``
also accepts targets in the module ``my_pkg`` and below (for a user's own model or loss). Neither is ever read from the
file itself: only the command line (or the config the user composed) can say it.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from unet_train.cpus import usable_cpus
from unet_train.errors import ConfigError

log = logging.getLogger(__name__)

# Packages of the project whose ``__all__`` lists what a stored config may build.
COMPONENT_MODULES = ("unet_train.models", "unet_train.data", "unet_train.losses", "unet_train.engine.schedulers")
# albumentations transforms that run a callable given to them rather than a fixed operation.
EXCLUDED_TRANSFORMS = frozenset({"Lambda"})
HINT_TARGET = "If you wrote this component, pass trust_config=true or trust_config=[your_module]."
HINT_RESOLVER = "Write the value itself, or pass trust_config=true if you wrote this file."
# Top-level keys and groups a plan may not set: what the command line alone decides (which file to
# trust or resume, where Hydra and the run write) and where the data lives or comes from.
PLAN_FORBIDDEN = ("trust_config", "ckpt", "plan", "hydra", "paths", "data.root", "data.download", "data.urls")
# The most a plan may ask for of what sets a run's memory: larger values are typed on the command line.
PLAN_LIMITS = {"model.base_channels": 1024, "model.depth": 8, "data.patch_size": 4096, "data.batch_size": 4096}
# Bounds of a config read from a file: its YAML text, and its nodes once loaded.
MAX_YAML_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000
MAX_YAML_DEPTH = 100


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


def _interpolates(text: str) -> bool:
    """Whether OmegaConf would resolve anything in ``text`` (an escaped ``\\${...}`` is plain text)."""
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
    from omegaconf.grammar_parser import parse

    if "${" not in text:
        return False
    try:
        tree = parse(text)
    except Exception:  # OmegaConf would fail on the value when it is read: refuse it now, in one line
        return True
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationContext):
            return True
        pending.extend(node.getChildren() if hasattr(node, "getChildren") else ())
    return False


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
    for count, (path, key, value) in enumerate(_walk(config, "config")):
        if count >= MAX_CONFIG_NODES:
            raise UntrustedConfigError(f"The config in {source} has over {MAX_CONFIG_NODES} entries; refusing it.")
        if key == "_target_" and not (isinstance(value, str) and (value in allowed or _is_trusted(value, extra))):
            raise UntrustedConfigError(
                f"{path}={_short(value)} is not a unet-train component; refusing to build it ({source}). {HINT_TARGET}"
            )
        if isinstance(value, str) and _interpolates(value):
            raise UntrustedConfigError(
                f"{path}={_short(value)} is an interpolation, which a config read from a file may not hold "
                f"(it could read the environment or the runtime); refusing to build it ({source}). {HINT_RESOLVER}"
            )


def file_borne_data(data: Any, source: str) -> None:
    """Make a data config read from ``source`` (a dict, changed in place) unable to fetch or write anything.

    Positional arguments (``_args_``) are refused: they would reach ``download`` and ``urls`` unseen.
    ``download`` becomes false and ``urls`` is dropped (the data class's pinned, checksummed mirrors
    apply), so a file cannot send a request nor create folders; ``data.download=true`` (with
    ``data.root``) on the command line asks for a download again. ``num_workers`` is capped at the
    machine's CPUs. ``root`` stays where reading starts, overridable with ``data.root=``; nothing
    under it is created from the file (see :func:`check_download_root`).
    """
    if not isinstance(data, dict):
        return
    if "_args_" in data:  # ISBI2012(root, download, ..., urls) takes them by position as well
        raise UntrustedConfigError(
            f"{source} passes its data config positional arguments (data._args_), which a config read from a file "
            "may not: they could ask for a download or name a folder to write; write them as named keys."
        )
    if data.get("download"):
        log.debug("%s: data.download=true is not taken from the file (pass data.download=true to fetch)", source)
    if "download" in data:
        data["download"] = False
    data.pop("urls", None)
    workers = data.get("num_workers")
    cpus = usable_cpus()
    if isinstance(workers, int) and not isinstance(workers, bool) and workers > cpus:
        log.info("%s: data.num_workers=%d capped at the %d CPUs of this machine", source, workers, cpus)
        data["num_workers"] = cpus


def check_download_root(data: Any, overrides: Sequence[str], source: str) -> None:
    """Refuse a download into a root the file chose: ``data.download=true`` needs ``data.root=`` typed too."""
    typed = {item.lstrip("+~").partition("=")[0] for item in overrides}
    if data is not None and data.get("download") and "data.root" not in typed:
        raise ConfigError(
            f"data.download=true with the data config of {source} needs data.root=DIR on the command line: "
            "files are downloaded only into a folder you name."
        )


def check_plan_keys(plan: Mapping[str, Any], source: str) -> None:
    """Refuse a plan that sets what only the command line decides (:data:`PLAN_FORBIDDEN`)."""
    for key in PLAN_FORBIDDEN:
        group, _, leaf = key.partition(".")
        node = plan.get(group)
        present = group in plan if not leaf else isinstance(node, Mapping) and leaf in node
        if present:
            raise UntrustedConfigError(
                f"{source} sets {key}, which a plan may not set (only the command line decides it); "
                f"remove it from the plan and pass it on the command line if you meant it."
            )


def check_plan_sizes(plan: Mapping[str, Any], source: str) -> None:
    """Refuse a plan whose model or crops exceed :data:`PLAN_LIMITS`; cap its ``data.num_workers`` at the CPUs."""
    for key, limit in PLAN_LIMITS.items():
        group, _, leaf = key.partition(".")
        node = plan.get(group)
        value = node.get(leaf) if isinstance(node, Mapping) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise UntrustedConfigError(
                f"{source} sets {key}={value}, over the {limit} a plan may set; pass {key}={value} on the command "
                "line if you mean it."
            )
    file_borne_data(plan.get("data"), source)


class _NoAliasLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses anchors and aliases before they are expanded."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            reason = "it uses a YAML anchor or alias (&name / *name), which a config file may not"
            raise yaml.constructor.ConstructorError(None, None, reason, event.start_mark)
        if self.depth >= MAX_YAML_DEPTH:  # composing recurses per level: thousands of '[' exhaust the stack
            reason = f"it nests over {MAX_YAML_DEPTH} levels deep, which a config file never needs"
            raise yaml.constructor.ConstructorError(None, None, reason, event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document of ``path`` (at most :data:`MAX_YAML_BYTES` and :data:`MAX_YAML_DEPTH` levels, no anchors
    or aliases), or a ConfigError.

    ``what`` names the file for the message (``plan=/x/plan.yaml``). A missing file raises FileNotFoundError.
    """
    with path.open("rb") as handle:
        text = handle.read(MAX_YAML_BYTES + 1)
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{what} is over {MAX_YAML_BYTES} bytes; a config file is far smaller. Check the path.")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader that also refuses aliases
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{what} is not a readable YAML file: {reason}") from None
