"""Checkpoints of instance models whose data config does not describe their output channels are refused on loading:
the post-processing picks its maps from the channels by the target, so a crafted file ended unet-predict and
unet-eval in a traceback (``4 affinity maps need as many offsets``) or predicted from the wrong channels."""

from __future__ import annotations

import pytest
import torch

from unet_train.engine.checkpoint import load_checkpoint
from unet_train.errors import CheckpointError
from unet_train.predict import run_predict

from ..conftest import compose_config

OFFSETS = [[-1, 0], [0, -1], [-3, 0], [0, -3]]


def crafted(tiny_ckpt, path, out_channels=5, **data):
    """``tiny_ckpt`` relabelled as an affinities model of ``OFFSETS`` (``data`` replaces its entries), its head widened
    to ``out_channels``."""
    checkpoint = torch.load(tiny_ckpt, weights_only=True)
    checkpoint["config"]["data"].update(
        {"labels": "instances", "target": "affinities", "num_classes": 2, "affinity_offsets": OFFSETS, **data}
    )
    checkpoint["config"]["model"]["out_channels"] = out_channels
    for key in ("head.weight", "head.bias"):  # weights of as many output channels: only the config is crafted
        checkpoint["model"][key] = checkpoint["model"][key][:1].repeat(
            out_channels, *[1] * (checkpoint["model"][key].ndim - 1)
        )
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"affinity_offsets": OFFSETS[:2]}, "its model.out_channels=5 does not fit its data.target=affinities, whose "
         "model outputs 3 channels (the foreground, then one map per offset of its 2 data.affinity_offsets)"),
        ({"num_classes": 3}, "its data.num_classes=3 does not fit its data.target=affinities, whose model predicts 2 "
         "classes"),
        ({"target": "boundary", "num_classes": 3}, "its model.out_channels=5 does not fit its data.target=boundary, "
         "whose model outputs 3 channels (its classes, then the target's maps)"),
    ],
)  # fmt: skip
def test_an_instance_checkpoint_whose_channels_do_not_fit_its_target_is_refused(tiny_ckpt, tmp_path, changes, said):
    assert load_checkpoint(crafted(tiny_ckpt, tmp_path / "fits.pt"))["config"]["model"]["out_channels"] == 5
    path = crafted(tiny_ckpt, tmp_path / "crafted.pt", **changes)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == f"{path} is not a usable unet-train checkpoint: {said}."


def test_unet_predict_refuses_it_in_one_line_and_writes_nothing(tiny_ckpt, tmp_path, caplog):
    import numpy as np
    from skimage import io as skio

    image = tmp_path / "in.png"
    skio.imsave(image, np.zeros((32, 32), dtype=np.uint8), check_contrast=False)
    path = crafted(tiny_ckpt, tmp_path / "crafted.pt", affinity_offsets=OFFSETS[:2])
    cfg = compose_config([f"ckpt={path}", f"input={image}", f"output={tmp_path / 'out'}"], config_name="predict")
    with pytest.raises(SystemExit) as caught:
        run_predict(cfg)
    assert caught.value.code == 2 and "does not fit its data.target=affinities" in caplog.records[-1].getMessage()
    assert not (tmp_path / "out").exists()
