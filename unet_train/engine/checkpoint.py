"""Self-describing checkpoints, written atomically and loaded without running code.

A checkpoint is a dict: ``format``, ``model`` (state dict of the unwrapped model),
``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``step``, ``best``
(monitored value), ``monitor``, ``rng``, ``runtime`` (the memory layout and precision the run trained
in) and ``config`` (the resolved run config as plain containers), so ``unet-eval`` and a resumed
``unet-train`` need nothing else.

Loading keeps code out twice: ``weights_only=True`` refuses pickled objects, and the stored config's
``_target_`` nodes must name unet-train components (:mod:`unet_train.trust`) before anyone builds them.
It keeps the machine's resources in: the file's zip records and pickle are bounded before ``torch.load``
reads them (:mod:`unet_train.engine.archive`), and what it returns is checked against the checkpoint's
schema (:func:`check_structure`, :func:`check_resumable`), so a wrong file is one message, not a traceback.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from unet_train.data.instances import TARGETS
from unet_train.engine.archive import ArchiveError, NotAnArchive, check_archive
from unet_train.engine.state import TrainState
from unet_train.errors import CheckpointError, ConfigError
from unet_train.objects.heads import affinity_offsets, extra_channels
from unet_train.objects.params import check_stored, instance_target
from unet_train.objects.tune import GRIDS
from unet_train.safe_io import write_atomic
from unet_train.trust import check_config, file_borne_data

FORMAT = "unet-train/1"
UNREADABLE = "is not a readable checkpoint (truncated, corrupted or not a torch file)"
# What a stored config may hold: what OmegaConf.to_container writes of a resolved config.
PLAIN = (dict, list, str, int, float, bool, type(None))
# Levels of a stored run config: ~10 in practice; deeper ones only serve to exhaust recursion.
MAX_CONFIG_DEPTH = 50


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = cast(nn.Module, model._orig_mod)
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_atomic(obj: Any, path: str | Path, root: str | Path | None = None) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or kill at any point leaves either the old file or the new one, never a truncated file;
    ``root`` (the run folder; default: the file's folder) is where links may lead (:mod:`unet_train.safe_io`).
    """
    write_atomic(path, lambda handle: torch.save(obj, handle), root=root)


def _is_text(path: Path) -> bool:
    """Whether the start of ``path`` reads as UTF-8 text (a torch file is a zip archive or a binary pickle)."""
    try:
        with path.open("rb") as handle:
            start = handle.read(512)
        start.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return bool(start) and all(ch.isprintable() or ch.isspace() for ch in start.decode("utf-8"))


def _load_failure(path: Path, exc: Exception) -> CheckpointError:
    """One message for why ``torch.load(weights_only=True)`` rejected ``path``."""
    text = str(exc)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:
        # weights_only refuses any pickled global that is not a tensor or plain container; the
        # refused object is never constructed, so no code in the file runs.
        return CheckpointError(
            f"Refused to load {path}: it holds pickled objects other than tensors and plain values (it refers to "
            f"{named.group(1)}), which could run code when loaded; only load checkpoints written by unet-train."
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Weights only load failed" in text:  # not a torch file: a raw pickle, ...
        detail = next((line for line in lines if "Unsupported operand" in line), "not a torch file")
        detail = detail.replace("WeightsUnpickler error: ", "")
    else:
        detail = lines[0].split(". This is an internal")[0] if lines else type(exc).__name__
    return CheckpointError(f"{path} {UNREADABLE}: {detail}")


def load_checkpoint(
    path: str | Path, map_location: str | torch.device | None = None, *, trust: bool | Sequence[str] = False
) -> dict[str, Any]:
    """Load a unet-train checkpoint with ``weights_only=True``; explain any failure in one message.

    ``map_location``: where the tensors go (None: the CPU). The stored run config is checked by
    :func:`unet_train.trust.check_config` before any caller can build from it; ``trust`` is the
    user's ``trust_config`` setting (never the one stored in the checkpoint).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        inside = [p for p in (path / "checkpoints" / "best.pt", path / "best.pt") if p.is_file()]
        example = inside[0] if inside else path / "checkpoints" / "best.pt"
        raise CheckpointError(f"Checkpoint {path} is a folder; pass the checkpoint file, e.g. ckpt={example}.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist; pass ckpt=<run>/checkpoints/best.pt or last.pt.")
    try:
        check_archive(path)
    except NotAnArchive as exc:
        detail = "it is a text file, not a torch file" if _is_text(path) else str(exc)
        raise CheckpointError(f"{path} {UNREADABLE}: {detail}") from None
    except ArchiveError as exc:
        raise CheckpointError(f"Refused to load {path}: {exc}; only load checkpoints written by unet-train.") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols before failing on them
            checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here; all mean "not a checkpoint we can load"
        raise _load_failure(path, exc) from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a unet-train checkpoint (no format={FORMAT!r} entry).")
    check_structure(checkpoint, path)
    check_config(checkpoint["config"], source=f"checkpoint {path}", trusted=trust)
    file_borne_data(checkpoint["config"]["data"], f"checkpoint {path}")
    return checkpoint


def _unusable(path: Path | str, reason: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a usable unet-train checkpoint: {reason}.")


def check_structure(checkpoint: dict[str, Any], path: Path | str) -> None:
    """What every command reads from a checkpoint: ``config`` (plain values with ``model`` and ``data``
    mappings) and ``model`` (a state dict of named tensors); refused in one message otherwise."""
    config = checkpoint.get("config")
    if not isinstance(config, dict):
        raise _unusable(path, "its 'config' entry is missing or not a mapping")
    pending: list[tuple[str, Any, int]] = [("config", config, 0)]
    while pending:
        where, node, level = pending.pop()
        if level > MAX_CONFIG_DEPTH:  # OmegaConf and the trust check recurse per level
            raise _unusable(path, f"its config nests over {MAX_CONFIG_DEPTH} levels deep, which no run config does")
        if not isinstance(node, PLAIN):
            raise _unusable(path, f"{where} is a {type(node).__name__}, where a config holds plain values only")
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(node, dict) and not isinstance(key, str):
                raise _unusable(path, f"{where} has the key {key!r}, where a config has names only")
            pending.append((f"{where}.{key}" if isinstance(node, dict) else f"{where}[{key}]", value, level + 1))
    for group in ("model", "data"):
        if not isinstance(config.get(group), dict):
            raise _unusable(path, f"its config has no {group} section")
    if not isinstance(config["model"].get("_target_"), str):
        raise _unusable(path, "its config's model section names no _target_ (the model to build)")
    state = checkpoint.get("model")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise _unusable(path, "its 'model' entry is missing or not a state dict of named tensors")
    data, model = config["data"], config["model"]
    if data.get("context_slices"):  # 2.5D: (2k + 1) sections of data.in_channels each are the model's input
        context, channels = data["context_slices"], data.get("in_channels")
        counts = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (context, channels))
        if not counts or model.get("in_channels") != (2 * context + 1) * channels:
            raise _unusable(
                path,
                f"its data.context_slices={context!r} of data.in_channels={channels!r} each do not make its model's "
                f"model.in_channels={model.get('in_channels')!r} (2 x context_slices + 1 sections)",
            )
    target = instance_target(data)
    if target is not None and target not in GRIDS:  # every command picks its maps and post-processing by it
        raise _unusable(path, f"its data.target={target!r} is not known (one of {', '.join(GRIDS)})")
    offsets: list[tuple[int, ...]] = []
    if target == "affinities":  # the post-processing walks each offset over the model's 2D images or 3D volumes
        dims = 3 if model.get("spatial_dims") == 3 else 2
        try:
            offsets = affinity_offsets(data, dims)
        except ConfigError as exc:
            raise _unusable(path, f"its {str(exc).split(';')[0]}") from None
        if any(len(offset) != dims for offset in offsets):
            raise _unusable(
                path, f"its data.affinity_offsets {[list(o) for o in offsets]} do not have {dims} axes each, as the "
                f"images of its {dims}D model do"
            )  # fmt: skip
    if target is not None:  # each command reads the maps by the target from the channels (objects/heads.py)
        _check_instance_channels(data, model, target, offsets, path)
    try:  # tuned post-processing of an instance model: plain numbers in range, or the file is refused
        check_stored(checkpoint.get("postprocess"), config["data"])
    except ValueError as exc:
        raise _unusable(path, str(exc)) from None


def _check_instance_channels(
    data: dict[str, Any], model: dict[str, Any], target: str, offsets: list[tuple[int, ...]], path: Path | str
) -> None:
    """Refuse an instance model whose ``data.num_classes`` or ``model.out_channels`` are not those of its target
    (classes, then one channel per map of the target, one per offset for affinities): the post-processing would
    read other channels than the maps (a traceback, or labels from the wrong maps)."""
    classes = TARGETS[target]
    if data.get("num_classes") != classes:
        raise _unusable(
            path, f"its data.num_classes={data.get('num_classes')!r} does not fit its data.target={target}, whose "
            f"model predicts {classes} classes"
        )  # fmt: skip
    maps = len(offsets) if target == "affinities" else extra_channels(target)
    channels, out = (1 if classes <= 2 else classes) + maps, model.get("out_channels")
    if out is not None and out != channels:
        what = "its classes, then the target's maps"
        if target == "affinities":
            what = f"the foreground, then one map per offset of its {len(offsets)} data.affinity_offsets"
        raise _unusable(
            path, f"its model.out_channels={out!r} does not fit its data.target={target}, whose model outputs "
            f"{channels} channels ({what})"
        )  # fmt: skip


def check_resumable(checkpoint: dict[str, Any], path: Path | str) -> None:
    """What a resume reads besides :func:`check_structure`: progress, optimizer, scheduler and scaler states."""
    state = checkpoint.get("state")
    if not isinstance(state, dict):
        raise _unusable(path, "its 'state' entry (the training progress) is missing")
    known = {field.name for field in fields(TrainState)}
    unknown = sorted(str(key) for key in state if key not in known)
    if unknown:
        raise _unusable(path, f"its state has the unknown entry {unknown[0]!r}")
    for key in ("epoch", "step"):
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _unusable(path, f"its state.{key}={value!r} is not a count (0 or more)")
    optimizer = checkpoint.get("optimizer")
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if (
        not isinstance(optimizer, dict)
        or not isinstance(optimizer.get("state"), dict)
        or not isinstance(groups, list)
        or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
    ):
        raise _unusable(path, "its 'optimizer' entry is not an optimizer state (state and param_groups)")
    for key in ("scheduler", "scaler"):
        if not isinstance(checkpoint.get(key), dict):
            raise _unusable(path, f"its {key!r} entry is missing or not a mapping")


def check_model_size(model: Callable[[], nn.Module], state: dict[str, torch.Tensor], path: Path | str) -> nn.Module:
    """Refuse a model config whose weights differ from the checkpoint's, before the model is built.

    ``model`` is a builder called on the ``meta`` device (no memory), so a config cannot make the tool
    allocate a model larger than the file it came from (``model.base_channels=100000``): the shapes,
    which are metadata, are compared first. Returns that meta model.
    """
    with torch.device("meta"):
        built = model()
    # Weights the built model lacks (deep supervision heads an export drops) are load_model_state's to judge.
    check_model_fits(built, state, path, shapes_only=True)
    return built


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load weights into ``model``, or say in one message how the checkpoint's model differs."""
    check_model_fits(model, state, path)
    model.load_state_dict(state)


def check_model_fits(
    model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, shapes_only: bool = False
) -> None:
    """Say in one message how the checkpoint's weights differ from ``model``'s (which may be on ``meta``);
    ``shapes_only``: only the shapes of the weights both have."""
    own = model.state_dict()
    missing = [] if shapes_only else [k for k in own if k not in state]
    unexpected = [] if shapes_only else [k for k in state if k not in own]
    resized = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or resized:
        problems = []
        if resized:
            k = resized[0]
            problems.append(
                f"{len(resized)} tensor(s) differ in shape, e.g. {k} is {tuple(state[k].shape)} in the checkpoint "
                f"but {tuple(own[k].shape)} in the model asked for"
            )
        if missing:
            problems.append(f"{len(missing)} weight(s) missing from the checkpoint, e.g. {missing[0]}")
        if unexpected:
            problems.append(f"{len(unexpected)} weight(s) the model does not have, e.g. {unexpected[0]}")
        raise CheckpointError(
            f"{path} does not fit the model asked for: {'; '.join(problems)}. Keep the checkpoint's model "
            "settings (model.*, data.in_channels, data.num_classes; of an instance model data.target and "
            "data.affinity_offsets, which set its output channels) or start a new run."
        )


# How an optimizer runs rather than what it has learnt: this run decides them, not the checkpoint.
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable")


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Refuse a saved optimizer state whose groups or per-parameter tensors do not fit ``optimizer``.

    ``optimizer`` may hold ``meta`` parameters (a resume checks before anything is built or written).
    """
    saved_groups = state["param_groups"]
    sizes = [len(g["params"]) for g in saved_groups]
    own = [len(g["params"]) for g in optimizer.param_groups]
    if sizes != own:
        raise CheckpointError(
            f"The checkpoint's optimizer state has parameter groups of {sizes} parameters but the model's optimizer "
            f"has {own}; the checkpoint does not belong to this model and optimizer."
        )
    params = {
        index: param
        for saved, group in zip(saved_groups, optimizer.param_groups)
        for index, param in zip(saved["params"], group["params"])
    }
    for index, values in state["state"].items():
        param = params.get(index)
        if param is None or not isinstance(values, dict):
            raise CheckpointError(f"The checkpoint's optimizer state names parameter {index!r}, which no group has.")
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise CheckpointError(
                    f"The checkpoint's optimizer state {name} of parameter {index} has shape {tuple(value.shape)}, "
                    f"but the parameter has {tuple(param.shape)}; the checkpoint does not belong to this model."
                )


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimizer's implementation flags.

    A checkpoint written by a foreach optimizer (on a CPU, say) can resume with a fused one (on a
    GPU) and back: the saved groups take this run's ``fused``/``foreach``/``capturable`` before
    loading, so that torch also places the ``step`` counters where that implementation wants them.
    """
    check_optimizer_state(optimizer, state)
    saved_groups = state["param_groups"]
    groups = [
        {**saved, **{key: group[key] for key in IMPLEMENTATION_FLAGS if key in group}}
        for saved, group in zip(saved_groups, optimizer.param_groups, strict=True)
    ]
    optimizer.load_state_dict({**state, "param_groups": groups})


def weights_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer is finite (one reduction per tensor; done once per save)."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def discard_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files that a kill during :func:`save_atomic` left in ``folder``; returns them."""
    leftovers = sorted(folder.glob(".*.pt.*.tmp")) if folder.is_dir() else []
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers
