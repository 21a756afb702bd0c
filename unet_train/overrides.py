"""Command-line overrides: which of them go to a checkpoint's stored config, and applying them there.

A resume (``unet-train ckpt=...``) and ``unet-eval`` on a run's own data take the overrides meant for the
checkpoint's config out of Hydra's hands (:func:`hold_resume_overrides`, :func:`hold_eval_data_overrides`)
and apply them with :func:`apply_overrides`, which checks them as Hydra checks a new run's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from unet_train.added_keys import check_added_keys
from unet_train.cli import user_overrides
from unet_train.config import PathsConfig, TrainerConfig, config_dir
from unet_train.errors import ConfigError

# Config groups whose choice a checkpoint fixes: changing them on resume or eval would not fit the weights.
FIXED_GROUPS = ("model",)

# Overrides meant for a checkpoint's stored config travel here rather than through Hydra, which would
# check them against the default config (data=isbi has no data.num_val; unet-eval's data is null) and,
# on a resume, record them in the job's .hydra/overrides.yaml. An environment variable reaches the
# job in any launcher's process.
RESUME_ENV = "UNET_TRAIN_RESUME_OVERRIDES"
EVAL_DATA_ENV = "UNET_TRAIN_EVAL_DATA_OVERRIDES"


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))  # ``~key`` deletes without a value


def _key(arg: str) -> str:
    return arg.lstrip("+~").partition("=")[0]


def is_resume(args: Sequence[str]) -> bool:
    """Whether the command line resumes a checkpoint (``ckpt=PATH``)."""
    return any(arg.startswith("ckpt=") and arg[5:] not in ("", "null") for arg in args if _is_override(arg))


def _hold(argv: list[str], env: str, held: Callable[[str], bool] | None) -> list[str]:
    """Move the overrides of ``argv`` that ``held`` selects into ``env`` (JSON); None clears ``env``."""
    if held is None:
        os.environ.pop(env, None)
        return argv
    args = argv[1:]
    taken = [arg for arg in args if _is_override(arg) and held(arg)]
    os.environ[env] = json.dumps(taken)
    return [argv[0], *(arg for arg in args if arg not in taken)]


SWEEP_HINT = 'pip install "unet-train[sweep]"'
# Group choices that need a Hydra plugin of the sweep extra, and the plugin's module.
SWEEP_PLUGINS = {
    "hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hydra/sweeper=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher",
    "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=submitit_local": "hydra_plugins.hydra_submitit_launcher",
}


def require_sweep_extra(args: Sequence[str]) -> None:
    """Exit 2 with one line naming the sweep extra when a choice in ``args`` needs a plugin not installed.

    Without it, Hydra fails to compose with a list of the options it did find (``Could not find
    'hydra/sweeper/optuna'``), which does not say what to install.
    """
    for arg in args:
        module = SWEEP_PLUGINS.get(arg.lstrip("+"))
        if module is None:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            sys.stderr.write(f"{arg} needs the sweep extra, which is not installed: {SWEEP_HINT}\n")
            sys.exit(2)


def hold_resume_overrides(argv: list[str]) -> list[str]:
    """On a resume, take the overrides for the checkpoint's config out of ``argv``; returns the new argv.

    ``ckpt=`` and ``hydra.*`` overrides stay with Hydra (they choose the run folder); the others go to
    :data:`RESUME_ENV` for :func:`resume_overrides`. A multirun (``-m``) keeps its overrides, which Hydra
    needs to sweep. Without a resume, a value left by an earlier call in this process is cleared.
    """
    args = argv[1:]
    resume = is_resume(args) and not any(arg in ("-m", "--multirun") for arg in args)
    # trust_config decides whether the checkpoint may be opened; max_pixels is this machine's, not the run's
    keep = ("ckpt", "hydra", "trust_config", "max_pixels")
    return _hold(argv, RESUME_ENV, (lambda arg: _key(arg).split(".")[0].split("/")[0] not in keep) if resume else None)


def hold_eval_data_overrides(argv: list[str]) -> list[str]:
    """For ``unet-eval`` on the checkpoint's own data (no ``data=NAME``), take the ``data.*`` overrides out.

    They apply to the stored data config (:func:`eval_data_overrides`): ``data.root=DIR`` and
    ``+data.root=DIR`` both work, and a key the stored config lacks is refused unless added with ``+``.
    """
    chosen = any(_is_override(arg) and _key(arg) == "data" for arg in argv[1:])
    return _hold(argv, EVAL_DATA_ENV, None if chosen else (lambda arg: _key(arg).startswith("data.")))


def resume_overrides() -> list[str]:
    """The overrides a resume applies to the checkpoint's config (held by :func:`hold_resume_overrides`)."""
    held = os.environ.get(RESUME_ENV)
    return list(json.loads(held)) if held is not None else user_overrides()


def eval_data_overrides() -> list[str] | None:
    """The ``data.*`` overrides held by :func:`hold_eval_data_overrides`, or None when none were held."""
    held = os.environ.get(EVAL_DATA_ENV)
    return list(json.loads(held)) if held is not None else None


def _is_group(key: str) -> bool:
    return "." not in key and (config_dir() / key).is_dir()


def run_choices(ckpt: str | Path) -> dict[str, str | None] | None:
    """The group choices of the run that wrote ``ckpt`` (``model: vanilla``), from its ``.hydra/hydra.yaml``.

    None when the checkpoint is not inside its run folder (``<run>/checkpoints/``) or the record is unreadable.
    """
    record = Path(ckpt).expanduser().resolve().parent.parent / ".hydra" / "hydra.yaml"
    try:
        choices = yaml.safe_load(record.read_text())["hydra"]["runtime"]["choices"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    if not isinstance(choices, dict):
        return None
    return {str(group): None if option is None else str(option) for group, option in choices.items()}


def _refuse_choice(line: str, key: str, choices: dict[str, str | None] | None) -> NoReturn:
    """Refuse another option of group ``key`` on a resume, naming the run's own when it is recorded."""
    used = ""
    if choices is not None:
        used = f"this run used {key}={choices[key]}" if choices.get(key) else f"this run used no {key} option"
    if key in FIXED_GROUPS:
        note = f" ({used})" if used else ""
        raise ConfigError(f"{line}: the checkpoint fixes the model{note}; start a new run to train another {key}.")
    if used:
        raise ConfigError(
            f"{line}: {used}, and a resume cannot choose another {key} option; drop {key}=..., or override its keys."
        )
    raise ConfigError(f"{line}: choosing another {key} option is not supported on a resume; override its keys.")


def apply_overrides(
    base: DictConfig,
    overrides: list[str],
    skip: tuple[str, ...] = (),
    choices: dict[str, str | None] | None = None,
) -> DictConfig:
    """Apply Hydra-style overrides from the command line onto a checkpoint's stored config.

    They are checked against that config, as Hydra checks a new run's against the composed one:
    ``key=value`` changes a key the checkpoint's config has (a misspelt key is refused),
    ``+key=value`` adds one, ``++key=value`` sets one either way, ``~key`` deletes one; values
    parse as Hydra parses them, and ``trainer.*`` / ``paths.*`` values are checked against their
    schemas. A group choice equal to the run's own (``choices``, from :func:`run_choices`) is accepted, as
    when the run's own command is repeated with ``ckpt=`` added; another option of a config group
    (``model=attention``, ``data=folder``) is refused; group choices named in ``skip`` are left to the caller.
    Keys added under a group are checked by :func:`unet_train.added_keys.check_added_keys`.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=False))
    assert isinstance(cfg, DictConfig)
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(f"Could not parse the overrides {' '.join(overrides)}: {exc}") from None
    missing = object()
    for override in parsed:
        key, line = override.key_or_group, override.input_line or override.key_or_group
        if key in skip or key == "ckpt" or key.split(".")[0] == "hydra" or key.startswith("hydra/"):
            continue
        if override.is_sweep_override():
            raise ConfigError(f"{line}: a sweep over values cannot apply to one checkpoint; give one value.")
        if key in FIXED_GROUPS or _is_group(key) or override.package:
            if choices is not None and not override.package and key in choices and choices[key] == override.value():
                continue
            _refuse_choice(line, key, choices)
        current = OmegaConf.select(cfg, key, default=missing, throw_on_missing=False)
        if override.is_delete():
            if current is missing:
                raise ConfigError(f"{line}: the checkpoint's config has no {key} to delete.")
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            with open_dict(node):
                del node[leaf]
            continue
        if current is missing and not (override.is_add() or override.is_force_add()):
            raise ConfigError(
                f"{line}: the checkpoint's config has no key {key}; check the spelling, or write +{line} to add it."
            )
        value = override.value()
        _check_schema(key, value, line)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    check_added_keys(cfg, [line for line in overrides if _key(line).partition(".")[0] not in skip])
    return cfg


def _check_schema(key: str, value: Any, line: str) -> None:
    """Check a ``trainer.*`` or ``paths.*`` value against its dataclass schema, as composing would."""
    group, _, leaf = key.partition(".")
    schema = {"trainer": TrainerConfig, "paths": PathsConfig}.get(group)
    if schema is None or not leaf:
        return
    try:
        OmegaConf.merge(OmegaConf.structured(schema), {leaf: value})
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{line}: {str(exc).splitlines()[0]}") from None
