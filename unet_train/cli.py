"""What the console scripts share: logging of user errors, the run folder, resume overrides."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from unet_train.errors import ConfigError, RunInterrupted, UserError

log = logging.getLogger("unet_train")
F = TypeVar("F", bound=Callable[..., Any])

# Config groups whose choice a checkpoint fixes: changing them on resume or eval would not fit the weights.
FIXED_GROUPS = ("model",)


def exit_on_user_error(func: F) -> F:
    """Turn a :class:`UserError` into one logged line and exit status 2, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
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
