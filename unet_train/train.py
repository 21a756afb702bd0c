"""``unet-train``: train a UNet from the Hydra config tree (``configs/train.yaml``).

Examples::

    unet-train experiment=quickstart
    unet-train model=attention data=isbi data.root=/data/isbi2012
    unet-train ckpt=outputs/2026-11-25/10-00-00/checkpoints/last.pt   # resume
    unet-train data=folder data.root=my_data plan=auto                  # plan (unet-plan), then train
    unet-train -m model=vanilla,attention,dilated,dense seed=0,1,2      # sweep
    torchrun --nproc_per_node=4 -m unet_train.train trainer=ddp         # DistributedDataParallel
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from torch import nn

from unet_train.added_keys import check_added_keys
from unet_train.build import build_model, build_optimizer
from unet_train.cli import console_script, exit_if_version_asked, exit_on_user_error, run_dir, user_overrides
from unet_train.config import config_dir
from unet_train.data.limits import set_max_pixels
from unet_train.engine import distributed
from unet_train.engine.archive import check_archive
from unet_train.engine.checkpoint import check_model_size, check_optimizer_state, check_resumable, load_checkpoint
from unet_train.engine.fit import fit
from unet_train.engine.run_folder import check_run_folder, run_lock
from unet_train.errors import ConfigError, UserError
from unet_train.overrides import (
    apply_overrides,
    hold_resume_overrides,
    require_sweep_extra,
    resume_overrides,
    run_choices,
)
from unet_train.safe_io import confined, write_atomic
from unet_train.trust import check_download_root

log = logging.getLogger(__name__)


RESUME_LOG = "resume_log.yaml"


def planned_config(cfg: DictConfig) -> DictConfig:
    """On ``plan=PATH`` (or ``plan=auto``: plan ``cfg.data`` first, into ``<run>/experiment/plan.yaml``), the plan
    merged under this command's overrides."""
    from unet_train.plan.planner import (
        apply_plan,
        auto_plan_budget,
        default_plan_path,
        load_plan,
        make_plan,
        warn_if_made_for_other_data,
    )

    path = cfg.plan
    if path == "auto":
        if distributed.launched_by_torchrun():  # every rank would time its own device and write the plan
            raise ConfigError(
                "plan=auto is not run under torchrun: each rank would plan on its own timing. Plan once with "
                "unet-plan data=... (or a single-process plan=auto run), then start torchrun with plan=PATH."
            )
        path = default_plan_path(run_dir())  # the run's own folder, beside resolved_config.yaml
        make_plan(cfg.data, auto_plan_budget(cfg), cfg.trainer.device, path, run_cfg=cfg, typed=user_overrides())
        log.info("plan=auto: wrote %s", path)
    plan = load_plan(path, trusted=cfg.get("trust_config", False))
    merged = apply_plan(cfg, plan, user_overrides(), source=f"plan={path}")
    warn_if_made_for_other_data(Path(path), merged.data)
    merged.plan = str(path)
    return merged


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, int]:
    """On ``ckpt=...``, continue the checkpoint's own run: its config plus this command's overrides.

    Returns that config and the number of epochs the checkpoint has done.
    """
    trust = cfg.get("trust_config", False)
    check_checkpoint_link(str(cfg.ckpt))
    checkpoint = load_checkpoint(cfg.ckpt, trust=trust)
    check_resumable(checkpoint, cfg.ckpt)
    refuse_an_earlier_checkpoint(Path(cfg.ckpt), checkpoint["state"]["step"])
    stored = OmegaConf.create(checkpoint["config"])
    merged = apply_overrides(stored, overrides, choices=run_choices(cfg.ckpt))
    warn_if_the_split_moves(stored, merged)
    check_download_root(merged.get("data"), overrides, f"checkpoint {cfg.ckpt}")
    # The model and optimizer on the meta device (no memory): the file's sizes and groups are checked
    # before anything is built or written.
    model = check_model_size(lambda: build_model(merged.model), checkpoint["model"], cfg.ckpt)
    optimizer = meta_optimizer(merged, model)
    if optimizer is not None:
        check_optimizer_state(optimizer, checkpoint["optimizer"])
    merged.ckpt = cfg.ckpt
    merged.trust_config = trust  # this command's setting, never the one stored in the checkpoint
    return merged, checkpoint["state"]["epoch"]


# The data keys that decide which images train and which validate.
SPLIT_KEYS = ("val_fraction", "split_seed", "val_pick", "fold", "num_folds", "num_val")


def split_setting(data: Any, key: str) -> Any:
    """``data``'s value of the split key ``key``; where its config lacks the key (saved before it existed, or
    deleted), the default of its ``_target_``'s argument, which the run then splits by (None if unknown)."""
    if key in data:
        return data.get(key)
    try:
        parameter = inspect.signature(get_object(str(data.get("_target_")))).parameters.get(key)
    except Exception:  # no or an unknown target: nothing to compare with
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def warn_if_the_split_moves(stored: DictConfig, merged: DictConfig) -> None:
    """A resume that changes how the data are split validates on other images than the run so far did (a key the
    stored config lacks, ``+data.val_pick=typical`` on a run from before the key, against its argument's default)."""
    old, new = stored.get("data") or {}, merged.get("data") or {}
    changed = [
        f"data.{k}={split_setting(new, k)} (was {split_setting(old, k)})"
        for k in SPLIT_KEYS
        if (k in old or k in new) and split_setting(old, k) != split_setting(new, k)
    ]
    if changed:
        log.warning(
            "Resumed with %s: the training/validation split moves, so images the run trained on may now validate, "
            "and best.pt's earlier scores came from other images; resume without these overrides to keep the split.",
            ", ".join(changed),
        )


def refuse_an_earlier_checkpoint(ckpt: Path, step: int) -> None:
    """Refuse to resume from a checkpoint (``best.pt``) that its run's ``last.pt`` has gone past.

    The resume continues in the run folder: it would train the later epochs again and overwrite
    ``last.pt`` (and the run's record) with them.
    """
    last = ckpt.expanduser().parent / "last.pt"
    if ckpt.name == last.name or not last.is_file():
        return
    try:  # only the counters are read: mmap leaves the weights on disk
        check_archive(last)  # bounded like any checkpoint before torch reads it
        last_state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["state"]
        last_step, last_epoch = int(last_state["step"]), int(last_state["epoch"])
    except Exception:  # an unreadable last.pt cannot be overwritten with anything worse
        return
    if last_step > step:
        raise ConfigError(
            f"ckpt={ckpt} is behind its run's {last} (epoch {last_epoch}): resuming from it would train those "
            f"epochs again and overwrite last.pt. Resume with ckpt={last}; to start another run from these "
            f"weights, copy {ckpt.name} out of the run folder and pass that copy."
        )


def check_checkpoint_link(ckpt: str) -> None:
    """Refuse a ``ckpt`` that is a link into another run's folder; log the real folder of a linked run folder.

    A resume continues in the run folder of the checkpoint file itself (``<run>/checkpoints/x.pt``), so a
    linked ``last.pt`` (or ``checkpoints/``) would make it write, and replace ``best.pt``, in whatever folder the
    link points to, which the user never named. A link to the run folder itself (``latest -> outputs/...``) is
    the user's own shortcut: that run continues in its real folder, named in the log.
    """
    given = Path(os.path.abspath(Path(ckpt).expanduser()))
    real = given.resolve()
    if real == given:
        return
    named = given.parent.parent.resolve() if given.parent.name == "checkpoints" else None
    actual = real.parent.parent if real.parent.name == "checkpoints" else None
    if named != actual:
        where = f"the run folder {actual}" if actual else "a new run folder"
        raise ConfigError(
            f"ckpt={ckpt} is a link to {real}: a resume writes into the checkpoint's own run folder ({where}), "
            f"not {named or 'the folder named'}; give ckpt={real} to continue that run, or copy the file."
        )
    log.info("ckpt=%s is reached through a link: the run continues in its real folder %s", ckpt, actual)


def meta_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer | None:
    """``cfg``'s optimizer over a meta-device ``model`` (unfused: meta has no fused kernel), or None when it
    cannot be built there; the resume itself then checks the saved state against the real one."""
    if cfg.optim.get("fused"):
        cfg = OmegaConf.merge(cfg, {"optim": {"fused": False}})  # type: ignore[assignment]
    try:
        return build_optimizer(cfg, model)
    except (UserError, RuntimeError, ValueError, TypeError):
        return None


def log_resume(out: Path, ckpt: str, overrides: list[str]) -> None:
    """Append one resume (when, from which checkpoint, with which overrides) to ``<run>/resume_log.yaml``.

    The job's ``.hydra/`` keeps the overrides and config it was started with; this log is the
    record of what each later ``unet-train ckpt=...`` changed (a YAML list, one entry per resume).
    """
    entry = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ckpt": str(Path(ckpt).expanduser().resolve()),
        "overrides": overrides,
    }
    log_file = confined(out / RESUME_LOG, out)  # a link out of the run folder is refused, not read or written
    before = log_file.read_text() if log_file.is_file() else ""
    write_atomic(log_file, before + OmegaConf.to_yaml(OmegaConf.create([entry])), root=out)


@exit_on_user_error
def train(cfg: DictConfig) -> float | None:
    """Train one run; returns the best monitored value (what Hydra sweepers optimise)."""
    set_max_pixels(cfg.get("max_pixels"))  # this command's, before a checkpoint's or plan's config replaces cfg
    check_run_folder(run_dir())  # a planted link among the run's outputs: refused before anything is written
    overrides = resume_overrides() if cfg.get("ckpt") else []
    done = 0
    if cfg.get("ckpt"):
        cfg, done = resume_config(cfg, overrides)
    else:
        check_added_keys(cfg, user_overrides())
        if cfg.get("plan"):
            cfg = planned_config(cfg)
    dist = distributed.setup(cfg.trainer.strategy, cfg.trainer.device)
    try:
        out = Path(dist.broadcast_object(str(run_dir())))  # under DDP, rank 0's folder is the run's
        if dist.is_main and cfg.get("ckpt"):
            log.info("Resuming in the run folder %s", out.resolve())
        with run_lock(out) if dist.is_main else nullcontext():  # one process trains in a run folder at a time
            # A resume of a finished run trains nothing: its folder keeps the config its metrics came from.
            if dist.is_main and done < cfg.trainer.max_epochs:
                if cfg.get("ckpt"):
                    log_resume(out, cfg.ckpt, overrides)
                write_atomic(out / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True), root=out)
            metrics = fit(cfg, out)
    finally:
        distributed.cleanup()
    value = metrics.get(f"best/{cfg.monitor}")
    return None if value is None else float(value)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    return train(cfg)


@console_script
def main() -> None:
    """The ``unet-train`` console script; under torchrun, ranks other than 0 create no run folder."""
    exit_if_version_asked()
    require_sweep_extra(sys.argv[1:])
    sys.argv[:] = hold_resume_overrides(sys.argv)
    sys.argv.extend(distributed.worker_hydra_overrides())
    # train.yaml has a plan key (plan=auto); +plan=PATH, as an experiment-style override, means the same.
    sys.argv[1:] = [arg.removeprefix("+") if arg.startswith("+plan=") else arg for arg in sys.argv[1:]]
    hydra_main()


if __name__ == "__main__":
    main()
