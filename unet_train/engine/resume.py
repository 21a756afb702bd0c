"""What a resumed run takes from its checkpoint besides weights and optimizer: RNG states, the plan, the setting.

A run stopped part-way through an epoch resumes exactly when every process gets back its own
random state (dropout draws from it) and skips the batches it already trained on; data order and
augmentation come from ``(seed, epoch)`` (:mod:`unet_train.data.sampling`). Under DDP, each rank's
state is gathered into the checkpoint (``rng_per_rank``). The ``plan`` records the number of
processes and the steps per epoch that the learning-rate schedule was planned with, so that a
resume with another number of processes keeps the schedule and says what changed. The ``runtime``
records the memory layout and precision the run trained in, so a resume with ``trainer.precision`` or
``trainer.channels_last`` at ``auto`` goes on in them instead of measuring again (a new measurement, on
another machine or with the cache gone, may choose otherwise, and the resumed run would not repeat the
uninterrupted one).
"""

from __future__ import annotations

import logging
from typing import Any

from unet_train.engine.autotune import Setting
from unet_train.engine.distributed import Distributed
from unet_train.engine.runtime import rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)


def checkpoint_extras(dist: Distributed, schedule_steps_per_epoch: int, steps_per_epoch: int) -> dict[str, Any]:
    """The ``rng``, ``rng_per_rank`` and ``plan`` entries of a checkpoint.

    Gathers every rank's RNG state: a collective, so every rank calls it at the same point.
    """
    states = dist.all_gather_object(rng_state())
    plan = {
        "world_size": dist.world_size,
        "steps_per_epoch": steps_per_epoch,
        "schedule_steps_per_epoch": schedule_steps_per_epoch,
    }
    return {"rng": states[0], "rng_per_rank": states, "plan": plan}


def stored_setting(checkpoint: dict[str, Any]) -> Setting | None:
    """The memory layout and precision the checkpoint's run trained in (its ``runtime`` entry), or None where it
    records none (a checkpoint from before it was recorded) or one a CPU run cannot take (float16)."""
    stored = checkpoint.get("runtime")
    if not isinstance(stored, dict):
        return None
    precision, channels_last = stored.get("precision"), stored.get("channels_last")
    if precision not in ("32", "bf16") or not isinstance(channels_last, bool):
        return None
    return Setting(channels_last, precision)


def restore_rng(checkpoint: dict[str, Any], dist: Distributed, seed: int, step: int) -> None:
    """Give this rank its own saved RNG state; with another number of processes, rank 0's and fresh seeds."""
    states = checkpoint.get("rng_per_rank") or [checkpoint["rng"]]
    if len(states) == dist.world_size:
        set_rng_state(states[dist.rank])
        return
    set_rng_state(checkpoint["rng"])
    if dist.rank:  # keep the ranks' random draws apart
        seed_everything(seed + dist.rank + step)


def resume_plan(
    checkpoint: dict[str, Any], dist: Distributed, steps_per_epoch: int, step: int, epoch: int, batch: int,
    max_epochs: int,
) -> tuple[int, int]:  # fmt: skip
    """``(steps per epoch the schedule plans with, batches of the interrupted epoch to skip)`` on resume.

    With the number of processes of the checkpoint, both are the checkpoint's. With another one
    an epoch takes another number of steps; the learning-rate schedule keeps the original plan
    (``schedule_steps_per_epoch x trainer.max_epochs`` optimizer steps), the interrupted epoch
    skips the images the old processes had trained on, and the log says what changed.
    """
    plan = checkpoint.get("plan") or {}
    old_world = int(plan.get("world_size", dist.world_size))
    planned = int(plan.get("schedule_steps_per_epoch", steps_per_epoch))
    if old_world == dist.world_size:
        return planned, batch
    skip = batch * old_world // dist.world_size  # batches of this rank that cover the images already seen
    total = planned * max_epochs
    remaining = (max_epochs - epoch) * steps_per_epoch - skip
    log.warning(
        "Resumed with %d process(es) instead of %d: an epoch now takes %d optimizer steps instead of %d "
        "(the global batch changed with the number of processes); the learning-rate schedule keeps its plan of "
        "%d steps (%d per epoch x %d epochs).",
        dist.world_size, old_world, steps_per_epoch, plan.get("steps_per_epoch", planned), total, planned, max_epochs,
    )  # fmt: skip
    if step + remaining > total:
        log.warning(
            "This run ends at step %d, after the schedule's %d: its last %d steps run at the schedule's final "
            "learning rate.",
            step + remaining, total, step + remaining - total,
        )  # fmt: skip
    if batch:
        log.warning(
            "The interrupted epoch continues after %d batch(es) per process (%d before, on %d processes).",
            skip, batch, old_world,
        )  # fmt: skip
    return planned, skip
