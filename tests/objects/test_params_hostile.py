"""Hostile post-processing parameters, from a checkpoint or the command line, refused in one line (no model)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from unet_train.engine.fit import fit
from unet_train.engine.objects import params_for
from unet_train.errors import ConfigError
from unet_train.objects.params import check_stored

from ..conftest import compose_config
from ..test_cli import BIN, run
from .discs import write_discs
from .test_training import disc_overrides

INSTANCES = {"labels": "instances", "target": "boundary"}
GOOD = {"threshold": 0.5, "seed_threshold": 0.5, "min_size": 1}


@pytest.mark.parametrize("name", ["threshold", "min_size"])
def test_a_stored_integer_too_large_for_a_float_is_refused_as_out_of_range(name):
    entry = {"target": "boundary", "params": {**GOOD, name: 10**400}}
    with pytest.raises(ValueError, match=f"its postprocess.params.{name}=.* must be a"):
        check_stored(entry, INSTANCES)


def test_an_override_too_large_for_a_float_is_a_config_error():
    cfg = OmegaConf.create({"objects": {"min_size": 10**40}})
    with pytest.raises(ConfigError, match=r"objects.min_size=10+ must be a whole number"):
        params_for(cfg, "boundary", None)


def test_a_negative_instance_halo_or_chunk_size_is_refused_in_one_line_and_writes_nothing(tmp_path):
    """They ended in tracebacks: a broadcast error once the chunks of an instance model were labelled (a window
    smaller than its chunk), a division by zero, a negative shape."""
    root = write_discs(tmp_path / "discs", 4)
    overrides = [*disc_overrides(root), "trainer.max_epochs=1", "data.samples_per_epoch=4", "objects.tune_time=0"]
    fit(compose_config(overrides), tmp_path / "run")
    image = sorted((root / "images").iterdir())[0]
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    args = [str(BIN / "unet-predict"), f"ckpt={ckpt}", f"input={image}", "output=out.zarr"]
    for wrong, said in (
        ("instance_halo=-8", "0 or more."),
        ("chunk_size=0", "1 or more."),
        ("chunk_size=-32", "1 or more."),
    ):
        result = run([*args, "chunk_size=32", wrong], cwd=tmp_path, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].endswith(f"{wrong} must be a whole number of pixels, {said}")
        assert not (tmp_path / "out.zarr").exists()


def test_a_checkpoint_of_an_unknown_target_is_refused_in_one_line_by_predict_and_export(tmp_path):
    """unet-predict ended in a KeyError traceback (the post-processing's defaults looked up by the target); unet-export
    wrote TorchScript first, then blamed the val split."""
    import torch

    root = write_discs(tmp_path / "discs", 4)
    overrides = [*disc_overrides(root), "trainer.max_epochs=1", "data.samples_per_epoch=4", "objects.tune_time=0"]
    fit(compose_config([*overrides, "data.target=distance"]), tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    checkpoint["config"]["data"]["target"] = "blah"
    crafted = tmp_path / "crafted.pt"
    torch.save(checkpoint, crafted)
    image = sorted((root / "images").iterdir())[0]
    for args, out in (
        ([str(BIN / "unet-predict"), f"input={image}", "output=out"], "out"),
        ([str(BIN / "unet-export"), "format=torchscript", "output=exported"], "exported"),
    ):
        result = run([*args, f"ckpt={crafted}"], cwd=tmp_path, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "its data.target='blah' is not known (one of boundary, distance, affinities)" in result.stderr
        assert not (tmp_path / out).exists()
