"""Keys added with ``+`` under a config group, checked against the group's schema or ``_target_``."""

from __future__ import annotations

import pytest
import torch

from unet_train.added_keys import check_added_keys, nearest, target_arguments
from unet_train.data import SyntheticMembranes
from unet_train.errors import ConfigError

from .conftest import compose_config


def test_target_arguments_follow_kwargs_to_the_base_class():
    taken = target_arguments(SyntheticMembranes)
    assert taken is not None and {"image_size", "num_train", "patch_size", "batch_size", "fold"} <= taken
    assert "kwargs" not in taken and "self" not in taken

    def anything(**kwargs):
        return kwargs

    assert target_arguments(anything) is None  # takes any key: nothing to check


def test_nearest_key_by_spelling_or_initials():
    keys = {"lr", "betas", "weight_decay", "amsgrad"}
    assert nearest("learning_rate", keys) == "lr"
    assert nearest("weight_decy", keys) == "weight_decay"
    assert nearest("momentum", keys) is None


def test_added_keys_are_checked_per_group():
    cfg = compose_config(["experiment=quickstart"])
    with pytest.raises(ConfigError) as caught:
        check_added_keys(cfg, ["+data.imag_size=64"])
    assert str(caught.value) == (
        "+data.imag_size=64: data (unet_train.data.SyntheticMembranes) takes no argument imag_size; "
        "did you mean data.image_size?"
    )
    with pytest.raises(ConfigError) as caught:
        check_added_keys(cfg, ["+sched.warmup=5"])
    assert str(caught.value) == (
        "+sched.warmup=5: sched (unet_train.engine.schedulers.cosine) takes no argument warmup; "
        "did you mean sched.warmup_steps?"
    )
    with pytest.raises(ConfigError) as caught:  # no near key: the keys it has
        check_added_keys(cfg, ["+optim.momentum=0.9"])
    adam = sorted((target_arguments(torch.optim.Adam) or set()) - {"self", "params"})  # params: the trainer's
    assert "lr" in adam and str(caught.value) == (
        f"+optim.momentum=0.9: optim (torch.optim.Adam) takes no argument momentum; its keys are {', '.join(adam)}."
    )
    # Keys the targets take, other groups, plain overrides and nested nodes without a target pass.
    check_added_keys(cfg, ["+optim.amsgrad=true", "+loss.smooth=0.5", "+foo.bar=1", "data.image_size=32"])
    check_added_keys(cfg, ["+data.train_transform.transforms.0.p=0.5", "+trainer.grad_clip=null"])


def test_keys_the_trainer_supplies_and_nested_slips_are_refused():
    """``+sched.total_steps`` was silently overridden, ``+optim.params``/``+sched.optimizer`` ended in a traceback
    ("got multiple values"); ``+trainer.foo.bar``, ``+data.reading.x`` and a list item's typo passed unchecked."""
    cfg = compose_config(["experiment=quickstart", "+sched.total_steps=3"])
    for line, message in [
        (
            "+sched.total_steps=3",
            "+sched.total_steps=3: sched.total_steps is set by the trainer when it builds sched; leave it out.",
        ),
        ("+optim.params=1", "+optim.params=1: optim.params is set by the trainer when it builds optim; leave it out."),
        (
            "+sched.optimizer=1",
            "+sched.optimizer=1: sched.optimizer is set by the trainer when it builds sched; leave it out.",
        ),
        (
            "+trainer.max_epoch.x=1",
            "+trainer.max_epoch.x=1: trainer has no key max_epoch; did you mean trainer.max_epochs?",
        ),
        (
            "+data.train_transform.transforms.0.pp=1",
            "+data.train_transform.transforms.0.pp=1: "
            "data.train_transform.transforms.0 (unet_train.data.transforms.ForegroundCrop) takes no argument pp; "
            "did you mean data.train_transform.transforms.0.p?",
        ),
    ]:
        with pytest.raises(ConfigError) as caught:
            check_added_keys(cfg, [line])
        assert str(caught.value) == message
    with pytest.raises(ConfigError, match=r"data \(unet_train.data.SyntheticMembranes\) takes no argument reading;"):
        check_added_keys(cfg, ["+data.reading.x=1"])
    with pytest.raises(ConfigError, match="its keys are power, warmup_steps.$"):  # not optimizer, total_steps
        check_added_keys(compose_config(["sched=poly"]), ["+sched.min_lr_ratio=0.1"])
    check_added_keys(cfg, ["+optim.eps=1e-7", "+trainer.max_time.x=1", "+data.train_transform.transforms.0.p=1"])
