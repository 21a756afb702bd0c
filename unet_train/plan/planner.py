"""Plan a data config: fingerprint it, measure the device, derive the plan and write both files; load a plan."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from unet_train.build import build_data
from unet_train.engine.runtime import resolve_device
from unet_train.errors import ConfigError
from unet_train.plan.derive import Choice, DeviceFacts, derive_plan, geometry, min_width, plan_yaml
from unet_train.plan.measure import measure_device
from unet_train.plan.objects import image_fingerprint
from unet_train.plan.volume_derive import (
    choose_dims,
    derive_section_plan,
    derive_volume_plan,
    section_fingerprint,
    section_size,
    validation_block,
    volume_layout,
)
from unet_train.plan.volume_fingerprint import is_volume_data, volume_fingerprint
from unet_train.safe_io import write_atomic
from unet_train.trust import check_config, check_plan_keys, check_plan_sizes, read_yaml

log = logging.getLogger(__name__)


def parse_budget(value: Any) -> float:
    """Seconds from ``600``, ``"90s"``, ``"10m"`` or ``"1.5h"``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(value))
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"budget={value!r} must be a positive time such as 600, 90s, 10m or 1.5h.")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def default_plan_path(run_dir: Path) -> Path:
    """``<run folder>/experiment/plan.yaml``: the plan is this run's output, never written into the data folder
    (shared, read-only or someone else's)."""
    return run_dir / "experiment" / "plan.yaml"


def check_writable(output: Path) -> None:
    """Refuse, before any work, a plan path whose folder cannot be created or written to."""
    folder = output.expanduser().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = "a file, not a folder" if folder.is_file() else (exc.strerror or type(exc).__name__).lower()
        raise ConfigError(
            f"output={output}: cannot write in {folder} ({reason}); pass output= a path in a folder you can write to."
        ) from None


def load_note(kind: str) -> str | None:
    """A plan-header line when the machine was busier than its cores while timing (the step times run slow)."""
    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (OSError, AttributeError):  # no load average on this platform
        return None
    if load <= cores:
        return None
    return (
        f"Timed under load: the load average was {load:.1f} on {cores} cores, so the {kind} step times (and the "
        "width and steps chosen from them) are likely slower than on an idle machine; plan again when it is idle."
    )


def fingerprint_path(plan: Path) -> Path:
    """Where the fingerprint of ``plan`` goes: ``<run>/fingerprint.json`` for the default
    ``<run>/experiment/plan.yaml``, else beside the plan
    (``mine.yaml`` -> ``mine.fingerprint.json``, also in a folder of one's own called ``experiment``)."""
    if plan.name == "plan.yaml" and plan.parent.name == "experiment":
        return plan.parent.parent / "fingerprint.json"
    return plan.with_name(f"{plan.stem}.fingerprint.json")


def plan_root(plan: Path) -> Path:
    """The folder a plan's files must stay in: the run folder holding ``experiment/`` for
    ``<run>/experiment/plan.yaml`` (its fingerprint sits beside ``experiment/``), else the plan's own folder."""
    if plan.name == "plan.yaml" and plan.parent.name == "experiment":
        return plan.parent.parent
    return plan.parent


def data_keys(data_cfg: DictConfig) -> set[str]:
    """The keyword arguments the data config's class takes (its own and its base classes')."""
    cls = get_class(data_cfg._target_)
    keys: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is not None:
            keys |= {p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs")}
    return keys


def make_plan(
    data_cfg: DictConfig, budget_s: float, device_name: str, output: Path, measure: bool = True,
    run_cfg: DictConfig | None = None, typed: list[str] | None = None,
) -> dict:  # fmt: skip
    """Fingerprint ``data_cfg``'s training split, time the device (a training step per width, a whole validation
    image at the chosen one), write the plan to ``output``; returns the fingerprint. ``run_cfg``: the run's config
    (``plan=auto``), whose optimizer, precision and layout are timed; ``typed``: the command line's overrides, whose
    ``data.target`` the plan keeps instead of the rule's choice."""
    from unet_train.overrides import _key

    asked = str(data_cfg.get("target")) if any(_key(o) == "data.target" for o in typed or []) else None
    data = build_data(data_cfg)
    device = resolve_device(device_name)
    kind = "cuda" if device.type == "cuda" else "cpu"
    derive: Callable[[DeviceFacts], list[Choice]]
    channels: int | None = None  # the timed net's input channels (a 2.5D net's: the sections' stacked)
    if is_volume_data(data) or getattr(data, "from_sections", False):  # volumes, also served as sections
        fingerprint = volume_fingerprint(data, asked)
        # The dims the data config asks for (data.spatial_dims, data.context_slices), else the rule's.
        dims = choose_dims(fingerprint, data_cfg.get("spatial_dims"), int(getattr(data, "context_slices", 0)), kind)
        if dims.dims == 2:  # sections as images: the image planner's geometry on the in-plane shapes
            patch, depth, batch = geometry(section_fingerprint(fingerprint), kind)
            shape: dict[str, Any] = {"patch": patch, "depth": depth, "batch": batch}
            shape["val_size"] = section_size(fingerprint)  # whole sections are validated
            shape["narrowest"] = min_width(fingerprint)
            channels = (2 * dims.context + 1) * max(fingerprint["channels"])
            derive = functools.partial(derive_section_plan, fingerprint, budget_s=budget_s, dims=dims)
        else:  # spacing, shapes and a 3D crop with pooling per axis (volume_derive.py)
            layout = volume_layout(fingerprint, kind)
            shape = {
                "patch": layout.patch,
                "depth": layout.depth,
                "batch": layout.batch,
                "pool_factors": layout.pool_factors,
                "val_size": validation_block(fingerprint, layout),
            }
            dims_key = data_cfg.get("spatial_dims") is not None  # data=isbi sets it; data=volumes leaves it null
            derive = functools.partial(derive_volume_plan, fingerprint, budget_s=budget_s, layout=layout,
                                       dims_key=dims_key)  # fmt: skip
    else:
        fingerprint = image_fingerprint(data, asked)  # of instance labels: with the target planned from the objects
        patch, depth, batch = geometry(fingerprint, kind)
        shape = {
            "patch": patch,
            "depth": depth,
            "batch": batch,
            "val_size": (int(fingerprint["height"]["median"]), int(fingerprint["width"]["median"])),
            "narrowest": min_width(fingerprint),
        }
        derive = functools.partial(derive_plan, fingerprint, budget_s=budget_s)
    facts = (
        measure_device(
            device,
            channels or max(fingerprint["channels"]),
            fingerprint["num_classes"],
            budget_s=budget_s,
            run_cfg=run_cfg,
            **shape,
        )
        if measure
        else DeviceFacts(kind=kind, name=f"{kind}, not timed (measure=false)")
    )
    choices = derive(facts)
    accepted = data_keys(data_cfg)
    unsupported = frozenset(c.key for c in choices if c.key.startswith("data.") and c.key[5:] not in accepted)
    root = data_cfg.get("root")
    header = [
        f"unet-plan for {data_cfg._target_}{f' at {root}' if root else ''}, budget {budget_s:g} s on {facts.name}.",
        f"Train with: unet-train {_data_choice(data_cfg)} +plan={output}",
        "Edit any value; the command line still overrides it.",
    ]
    if measure and (note := load_note(kind)):
        header.insert(1, note)
        log.warning("%s", note)
    root = plan_root(output)  # a link below the plan's folder that leads out of it is refused
    write_atomic(output, plan_yaml(choices, header, unsupported), root=root)
    made_for = {"made_for": {"data": str(data_cfg._target_), "root": str(data_cfg.get("root"))}}
    write_atomic(fingerprint_path(output), json.dumps({**fingerprint, **made_for}, indent=2) + "\n", root=root)
    for key in sorted(unsupported):
        log.warning("%s is planned but not a key of %s in this version: written commented out", key, data_cfg._target_)
    return fingerprint


def _data_choice(data_cfg: DictConfig) -> str:
    target = str(data_cfg._target_)
    names = {"ImageFolder": "folder", "ISBI2012": "isbi", "SyntheticMembranes": "synthetic", "VolumeFolder": "volumes"}
    name = names.get(target.rsplit(".")[-1])
    root = data_cfg.get("root")
    return " ".join(x for x in (f"data={name}" if name else "", f"data.root={root}" if root else "") if x)


def load_plan(path: str | Path, trusted: Any = False) -> DictConfig:
    """A plan file as a config, refused if it names anything but unet-train components, holds an interpolation,
    sets what only the command line decides (``trust_config``, ``ckpt``, ``hydra``, ``paths``, ``data.root``, ...)
    or is not a bounded, alias-free YAML mapping (the trust rule: :mod:`unet_train.trust`)."""
    path = Path(path).expanduser()
    try:
        raw = read_yaml(path, f"plan={path}")
    except FileNotFoundError:
        raise ConfigError(f"plan={path}: no such file; write one with unet-plan or use plan=auto.") from None
    except OSError as exc:
        raise ConfigError(f"plan={path} is not a readable YAML file: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"plan={path} must hold a mapping of config keys (a # @package _global_ experiment).")
    raw.pop("defaults", None)
    check_plan_keys(raw, f"plan={path}")
    check_plan_sizes(raw, f"plan={path}")
    check_config(raw, source=f"plan {path}", trusted=trusted)
    return OmegaConf.create(raw)


def apply_plan(cfg: DictConfig, plan: DictConfig, overrides: list[str], source: str = "the plan") -> DictConfig:
    """``cfg`` with ``plan`` merged on top and then the command line's own ``key=value`` overrides again.

    A config group chosen on the command line wins over the plan: a planned option of that group
    (``loss``, a node with ``_target_``; any nested group such as ``data.normalize``) is dropped when the
    command line chose the group (``loss=dice``, ``data/normalize=zscore``). Other planned keys are merged
    key by key, so the plan still tunes the data config it was made for (``data=folder``); a ``data.target`` typed
    without ``data.num_classes`` leaves out the plan's ``data.num_classes`` (its own target's). A planned key that
    its group's schema or target does not take (an edited plan's ``trainer.max_tim``) is refused, naming ``source``.
    """
    from unet_train.added_keys import check_plan_keys
    from unet_train.overrides import _is_group, _is_override, _key, apply_overrides

    given = [o for o in overrides if _is_override(o)]
    chosen = {_group_path(_key(o)) for o in given if _is_group_choice(_key(o), _is_group)}
    merged = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    assert isinstance(merged, DictConfig)
    planned = OmegaConf.to_container(plan, resolve=False)
    assert isinstance(planned, dict)
    for path in sorted(chosen):
        _drop_planned_option(planned, path)
    typed_keys = {_key(o) for o in given}
    data = planned.get("data")
    target_only = "data.target" in typed_keys and "data.num_classes" not in typed_keys
    if target_only and isinstance(data, dict) and data.pop("num_classes", None) is not None:
        log.info("data.target typed: the plan's data.num_classes (the classes of its own target) is left out")
    model = planned.get("model")
    depth_only = "model.depth" in typed_keys and "model.pool_factors" not in typed_keys
    if depth_only and isinstance(model, dict) and model.pop("pool_factors", None) is not None:
        log.info("model.depth typed: the plan's model.pool_factors (one per pooling of its depth) are left out")
    whole = {key: value for key, value in planned.items() if isinstance(value, dict) and "_target_" in value}
    with open_dict(merged):
        for key, value in whole.items():  # a whole option (loss): replaces the node, not merged into it
            merged[str(key)] = value
    merged = OmegaConf.merge(merged, {key: value for key, value in planned.items() if key not in whole})
    # The plain keys typed on the command line (data.root=..., seed=3) win over the plan's values.
    typed = [o for o in given if not _is_group_choice(_key(o), _is_group)]
    assert isinstance(merged, DictConfig)
    merged = apply_overrides(merged, typed)
    check_plan_keys(merged, OmegaConf.create(planned), source)
    return merged


def warn_if_made_for_other_data(path: Path, data_cfg: DictConfig) -> None:
    """Warn when the plan's fingerprint (written beside it by unet-plan) names another data config or folder:
    its normalisation, crop size and classes were chosen for that data."""
    try:
        with fingerprint_path(path).expanduser().open("rb") as handle:
            made_for = json.loads(handle.read(2**20)).get("made_for")
    except (OSError, ValueError, AttributeError):  # no fingerprint (a hand-written plan) or not one of ours
        return
    if not isinstance(made_for, dict):
        return
    here = {"data": str(data_cfg.get("_target_")), "root": str(data_cfg.get("root"))}
    if made_for == here:
        return
    log.warning(
        "plan=%s was made for %s at %s, but this run trains on %s at %s: its normalisation, crop size and classes "
        "may not suit this data; plan this data with unet-plan (or plan=auto).",
        path, made_for.get("data"), made_for.get("root"), here["data"], here["root"],
    )  # fmt: skip


def _is_group_choice(key: str, is_group: Any) -> bool:
    """``loss``, ``data/normalize`` or ``data/normalize@...``: the choice of a config group's option."""
    return "/" in key or "@" in key or is_group(key)


def _group_path(key: str) -> str:
    """The config node a group choice fills: ``data/normalize`` -> ``data.normalize`` (or its ``@package``)."""
    group, _, package = key.partition("@")
    return package or group.replace("/", ".")


def _drop_planned_option(planned: dict, path: str) -> None:
    """Remove the plan's option of the group at ``path`` (a node with ``_target_``, or a nested group's node)."""
    parent_path, _, leaf = path.rpartition(".")
    parent: Any = planned
    for part in parent_path.split(".") if parent_path else []:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if not isinstance(parent, dict) or leaf not in parent:
        return
    node = parent[leaf]
    if parent_path or (isinstance(node, dict) and "_target_" in node):
        log.info("%s: the command line's choice wins over the plan's", path.replace(".", "/"))
        del parent[leaf]


def auto_plan_budget(cfg: DictConfig) -> float:
    """The budget of ``plan=auto``: ``trainer.max_time`` when set, else 10 minutes."""
    return float(cfg.trainer.max_time) if cfg.trainer.get("max_time") else 600.0


__all__ = ["apply_plan", "auto_plan_budget", "load_plan", "make_plan", "parse_budget", "warn_if_made_for_other_data"]
