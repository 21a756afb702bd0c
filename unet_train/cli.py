"""What the console scripts share: logging of user errors, usage for missing keys, the run folder, resume overrides."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from unet_train.errors import ConfigError, RunInterrupted, UserError

log = logging.getLogger("unet_train")
F = TypeVar("F", bound=Callable[..., Any])

# Config groups whose choice a checkpoint fixes: changing them on resume or eval would not fit the weights.
FIXED_GROUPS = ("model",)

# Every mandatory key (``???`` in configs/): what it is and an example value. A command called without
# one prints what it needs and an example command, and exits 2. A new ``???`` key gets an entry here
# (tests/test_cli.py checks that every ``???`` in configs/ has one).
MANDATORY: dict[str, tuple[str, str]] = {
    "ckpt": ("a checkpoint written by unet-train", "outputs/2026-12-01/10-00-00/checkpoints/best.pt"),
    "input": ("an image, a multi-page TIFF stack or a folder of images", "stack.tif"),
    "data.root": ("your data folder, with images/ and masks/ inside", "my_data"),
    "format": ("onnx, torchscript or bioimageio", "onnx"),
}


def command_name() -> str:
    """The console script as typed (``unet-eval``), or ``unet-<job>`` under ``python -m`` and torchrun."""
    name = Path(sys.argv[0]).name
    if name.startswith("unet-"):
        return name
    return f"unet-{HydraConfig.get().job.name}" if HydraConfig.initialized() else "unet-train"


def missing_usage(keys: list[str], cfg: DictConfig | None = None) -> str:
    """Two lines: what the command needs and an example command with this call's overrides plus the keys."""
    prog = command_name()
    needs = " and ".join(f"{key} ({MANDATORY[key][0]})" if key in MANDATORY else key for key in keys)
    examples = [f"{key}={example_value(key, cfg)}" for key in keys]
    typed = user_overrides() if HydraConfig.initialized() else []
    typed = [o for o in typed if o.partition("=")[0].lstrip("+~") not in keys]
    return f"{prog} needs {needs}.\nExample: {' '.join([prog, *typed, *examples])}"


def example_value(key: str, cfg: DictConfig | None) -> str:
    """The table's example; for ``ckpt``, the newest ``best.pt`` under ./outputs when there is one."""
    if key == "ckpt":
        root = Path(str(OmegaConf.select(cfg, "paths.output_dir", default=".") if cfg is not None else "."))
        found = sorted(root.glob("outputs/*/*/checkpoints/best.pt"))
        if found:
            return str(found[-1])
    return MANDATORY[key][1] if key in MANDATORY else "..."


def missing_keys(cfg: DictConfig) -> list[str]:
    """The keys of ``cfg`` still at ``???``, in the order of :data:`MANDATORY` (then by name).

    Read from the unresolved tree: an interpolation is not evaluated, so none can fail here.
    """

    def walk(node: Any, prefix: str) -> list[str]:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        found = []
        for key, value in items:
            found += [prefix + str(key)] if value == "???" else walk(value, f"{prefix}{key}.")
        return found

    order = list(MANDATORY)
    tree = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(tree, dict)
    tree.pop("hydra", None)  # a config composed with return_hydra_config: Hydra's own fields are not the user's
    found = walk(tree, "")
    return sorted(found, key=lambda key: (order.index(key) if key in order else len(order), key))


def exit_with_usage(keys: list[str], cfg: DictConfig | None) -> NoReturn:
    sys.stderr.write(missing_usage(keys, cfg) + "\n")
    sys.exit(2)


def exit_on_user_error(func: F) -> F:
    """Turn a :class:`UserError` into one logged line and exit status 2, instead of a traceback.

    A config (the first argument) with mandatory keys left at ``???`` stops before any work, with
    :func:`missing_usage` on stderr and exit status 2.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cfg = args[0] if args and isinstance(args[0], DictConfig) else None
        if cfg is not None and (missing := missing_keys(cfg)):
            exit_with_usage(missing, cfg)
        try:
            return func(*args, **kwargs)
        except MissingMandatoryValue as exc:  # a ``???`` read later, in a config built at run time
            exit_with_usage([str(getattr(exc, "full_key", None) or exc)], cfg)
        except UserError as exc:
            log.error("%s", exc)
            sys.exit(2)
        except RunInterrupted as exc:  # a stop signal: last.pt is saved, the message says how to resume
            log.error("%s", exc)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def run_dir() -> Path:
    """The Hydra run folder of this job (``outputs/<date>/<time>`` or ``multirun/.../<n>``)."""
    return Path(HydraConfig.get().runtime.output_dir)


def user_overrides() -> list[str]:
    """The command-line overrides of this job, as typed."""
    return list(HydraConfig.get().overrides.task)


def apply_overrides(base: DictConfig, overrides: list[str], skip: tuple[str, ...] = ()) -> DictConfig:
    """Apply ``key=value`` overrides from the command line onto a checkpoint's stored config.

    Values parse as YAML (``trainer.max_epochs=20``, ``data.root=/x``). Choosing another option of
    a group the checkpoint fixes (``model=attention``) is refused; other group choices are
    handled by the caller (``skip``).
    """
    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=False))
    dotlist = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in skip or key.split(".")[0] in ("hydra",) or key in ("ckpt",):
            continue
        if key in FIXED_GROUPS:
            raise ConfigError(f"{override}: the checkpoint fixes the model; start a new run to train {key}={value}.")
        if "." not in key and isinstance(OmegaConf.select(cfg, key), DictConfig):
            raise ConfigError(f"{override}: choosing another {key} group is not supported here; override its keys.")
        dotlist.append(f"{key}={value}")
    with open_dict(cfg):
        cfg.merge_with_dotlist(dotlist)
    assert isinstance(cfg, DictConfig)
    return cfg
