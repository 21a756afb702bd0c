"""Keys added with ``+`` under a config group, checked against what the group's object really takes.

Hydra adds ``+trainer.max_epoch=1`` to a structured config without a word, and the run then ignores it;
``+optim.learning_rate=1e-3`` only fails when the optimizer is built, deep in a traceback. Both are
refused here, before any work, in one line naming the nearest key the group has.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Iterable
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig

from unet_train.config import PathsConfig, TrainerConfig
from unet_train.errors import ConfigError

# Groups whose keys are a schema's fields (trainer, paths) or a ``_target_``'s arguments (the others).
SCHEMAS: dict[str, type] = {"trainer": TrainerConfig, "paths": PathsConfig}
TARGET_GROUPS = ("data", "model", "optim", "sched", "loss")
# Keys instantiate reads itself, never passed to the target.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
# Arguments the trainer passes itself when it builds a group's object (``build_optimizer``, ``build_scheduler``):
# one added in the config would be overridden without a word, or fail with "got multiple values".
SUPPLIED: dict[str, frozenset[str]] = {
    "optim": frozenset({"params"}),
    "sched": frozenset({"optimizer", "total_steps", "progress"}),
}


def target_arguments(target: Any) -> set[str] | None:
    """The keyword arguments ``target`` takes, following ``**kwargs`` up a class's bases; None: it takes any."""
    names: set[str] = set()
    classes = inspect.getmro(target) if inspect.isclass(target) else (target,)
    for owner in classes:
        function = owner.__init__ if inspect.isclass(owner) else owner
        if inspect.isclass(owner) and "__init__" not in vars(owner):
            continue
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names - {"self"}
        if owner is object or not inspect.isclass(target):
            return None
    return None


def nearest(key: str, keys: Iterable[str]) -> str | None:
    """The key most like ``key`` (``max_epoch`` -> ``max_epochs``), or the one its initials spell (``lr``)."""
    keys = sorted(keys)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    initials = "".join(word[0] for word in key.split("_") if word)
    return initials if len(initials) > 1 and initials in keys else None


def _accepted(cfg: DictConfig, group: str, parts: list[str]) -> tuple[str, set[str] | None, int]:
    """The start of a refusal (``trainer has no key``), the keys taken and the index in ``parts`` they check.

    A nested key is checked against the deepest object (a ``_target_``) above it: ``+data.reading.x`` against
    the data class (``reading``), ``+data.train_transform.transforms.0.pp`` against ``PadIfNeeded`` (``pp``).
    None for the keys: it takes any, or it is not checked here.
    """
    if group in SCHEMAS:
        fields = {field.name for field in dataclasses.fields(SCHEMAS[group])}
        return f"{group} has no key", fields, 0  # under a key the schema lacks (+trainer.foo.bar): foo is the slip
    found: tuple[str, set[str] | None, int] = (group, None, 0)
    node: Any = cfg.get(group)
    for index, part in enumerate(parts):
        if isinstance(node, DictConfig) and isinstance(node.get("_target_"), str):
            try:
                target = get_object(node._target_)
            except Exception:  # an unknown target fails with its own message when it is built
                return group, None, 0
            taken = target_arguments(target)
            where = f"{'.'.join([group, *parts[:index]])} ({node._target_}) takes no argument"
            found = (where, None if taken is None else taken | HYDRA_KEYS, index)
        if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]  # an item of a list (data.train_transform.transforms.0)
        else:
            node = node.get(part) if isinstance(node, DictConfig) else None
    return found


def check_added_keys(cfg: DictConfig, overrides: Iterable[str]) -> None:
    """Refuse a ``+group.key=value`` whose group's schema or target does not take ``key``, in one line."""
    for line in overrides:
        if not line.startswith("+"):
            continue
        key = line.lstrip("+").partition("=")[0]
        group, *parts = key.split(".")
        if group not in (*SCHEMAS, *TARGET_GROUPS) or not parts:
            continue
        if len(parts) == 1 and parts[0] in SUPPLIED.get(group, ()):
            raise ConfigError(f"{line}: {key} is set by the trainer when it builds {group}; leave it out.")
        where, taken, index = _accepted(cfg, group, parts)
        leaf = parts[index]
        if taken is None or leaf in taken:
            continue
        if index == 0:
            taken = taken - SUPPLIED.get(group, frozenset())
        prefix = ".".join([group, *parts[:index]])
        close = nearest(leaf, taken - HYDRA_KEYS)
        hint = f"did you mean {prefix}.{close}?" if close else f"its keys are {', '.join(sorted(taken - HYDRA_KEYS))}."
        raise ConfigError(f"{line}: {where} {leaf}; {hint}")


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a mapping's leaves (a list is a leaf)."""
    if not isinstance(node, DictConfig):
        return [prefix]
    return [key for name, value in node.items_ex(resolve=False) for key in _leaf_keys(value, f"{prefix}{name!s}.")]


def check_plan_keys(cfg: DictConfig, plan: DictConfig, source: str) -> None:
    """Refuse a plan (an edited ``plan.yaml``) whose keys under a group its schema or target does not take.

    Merged into the config, ``trainer.max_tim`` would otherwise be ignored without a word, as a ``+key`` would.
    ``cfg`` is the config with the plan merged (its loss, say, is the plan's).
    """
    for key in _leaf_keys(plan):
        line = f"+{key.rstrip('.')}="
        try:
            check_added_keys(cfg, [line])
        except ConfigError as exc:
            raise ConfigError(f"{source}: {key.rstrip('.')}: {str(exc).removeprefix(line + ': ')}") from None
