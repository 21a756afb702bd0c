"""Every YAML under configs/ composes, and each object node instantiates."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from unet_train.build import build_data, build_loss, build_model, build_optimizer, build_scheduler
from unet_train.config import config_dir
from unet_train.data.base import SegmentationData

from .conftest import ISBI_ROOT, TINY, compose_config

GROUPS = sorted(p.name for p in config_dir().iterdir() if p.is_dir() and p.name not in ("hydra", "paths"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


CASES = [(group, name) for group in GROUPS for name in options(group)]


def test_every_group_has_options():
    for group in ("model", "data", "loss", "optim", "sched", "trainer", "experiment"):
        assert options(group), group
    assert {"vanilla", "attention", "dilated", "dense"} <= set(options("model"))
    assert {"isbi", "folder", "synthetic"} <= set(options("data"))


@pytest.mark.parametrize(("group", "name"), CASES, ids=[f"{g}/{n}" for g, n in CASES])
def test_option_composes_and_instantiates(group, name, tmp_path):
    overrides = [f"{group}={name}"]
    if group != "experiment":
        overrides = ["data=synthetic", *overrides]
    if (group, name) in (("data", "folder"), ("data", "volumes")):  # auto channels/classes need files: give them
        overrides += [f"data.root={tmp_path}", "data.in_channels=1", "data.num_classes=2"]
    if group == "model":
        overrides += ["model.base_channels=4", "model.depth=2", "model.dilation_rates=null"]
    if group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_config(overrides)
    if group == "experiment" and cfg.data._target_.endswith("ISBI2012"):
        if not (ISBI_ROOT / "train-volume.tif").is_file():
            pytest.skip(f"{name} reads ISBI 2012, not found in {ISBI_ROOT}")
        cfg = compose_config([*overrides, f"data.root={ISBI_ROOT}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves

    model = build_model(cfg.model)
    assert isinstance(model, torch.nn.Module)
    assert build_loss(cfg) is not None
    data = build_data(cfg.data)
    assert isinstance(data, SegmentationData)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, total_steps=10)
    assert scheduler.get_last_lr()[0] > 0
    for key in ("train_transform", "val_transform"):
        if cfg.data.get(key) is not None:
            assert callable(instantiate(cfg.data[key]))


def test_eval_config_composes():
    cfg = compose_config(["ckpt=some.pt", "split=test"], config_name="eval")
    assert cfg.ckpt == "some.pt" and cfg.split == "test"


def test_unknown_option_is_refused_with_the_available_ones():
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/nope'"):
        compose_config(["model=nope"])


def test_schema_rejects_wrong_type_and_unknown_key():
    with pytest.raises(ConfigCompositionException, match="max_epochs"):
        compose_config([*TINY, "trainer.max_epochs=many"])
    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        compose_config([*TINY, "trainer.max_epoch=3"])


def test_one_source_of_truth_for_classes_and_channels():
    cfg = compose_config(["data=synthetic"])
    assert cfg.model.in_channels == cfg.data.in_channels == 1
    assert cfg.model.out_channels == 1  # binary: one logit channel
    cfg = compose_config(["data=folder", "data.root=x", "data.num_classes=4", "data.in_channels=3"])
    assert (cfg.model.in_channels, cfg.model.out_channels) == (3, 4)
