"""Write the 2D fixtures of ``tests/models/test_dims.py`` from the code of another checkout.

Run with the checkout to record on ``PYTHONPATH`` (here: ``main`` at 50c8dbd, before the UNet became
dimension-generic)::

    mkdir /tmp/main && git archive main | tar -x -C /tmp/main
    PYTHONPATH=/tmp/main python tests/models/data/generate_main_fixtures.py tests/models/data

It writes ``state_dict_keys_2d.json`` (parameter and buffer names with shapes, per model option set)
and ``main_checkpoint.pt`` (a tiny run's ``last.pt``, trained two steps by that code's ``fit``) with
``main_checkpoint_output.pt`` (its eval-mode logits on a fixed odd-sized input).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from unet_train.build import build_model
from unet_train.config import config_dir
from unet_train.engine.fit import fit
from unet_train.models import UNet

# Option sets whose 2D state dict keys must never change (small widths: the names do not depend on them).
OPTION_SETS: dict[str, dict] = {
    "vanilla-depth4": {"base_channels": 2, "depth": 4},
    "dilated-attention-ds-bilinear-group": {
        "base_channels": 4,
        "depth": 3,
        "encoder": "dilated",
        "skip": "attention",
        "deep_supervision": True,
        "upsample": "bilinear",
        "norm": "group",
    },
    "attention_gate-instance-dropout": {
        "base_channels": 2,
        "depth": 2,
        "skip": "attention_gate",
        "norm": "instance",
        "dropout": 0.1,
    },
    "dense-none-ds3-depth4": {
        "base_channels": 2,
        "depth": 4,
        "skip": "dense",
        "norm": "none",
        "deep_supervision": True,
        "supervision_levels": 3,
        "dense_growth": 3,
        "dense_layers": 2,
    },
}
INPUT_SHAPE = (1, 1, 29, 37)
OVERRIDES = [
    "experiment=quickstart",
    "trainer=smoke",
    "trainer.max_epochs=1",
    "trainer.channels_last=false",
    "model.base_channels=2",
    "model.depth=2",
    "model.skip=attention_gate",
    "model.deep_supervision=true",
    "data.image_size=32",
    "data.patch_size=16",
    "data.num_train=4",
    "data.num_val=2",
    "data.num_test=2",
]


def main(out: Path) -> None:
    keys = {}
    for name, options in OPTION_SETS.items():
        model = UNet(**options)
        keys[name] = {"options": options, "state": {k: list(v.shape) for k, v in model.state_dict().items()}}
    (out / "state_dict_keys_2d.json").write_text(json.dumps(keys, indent=1) + "\n")

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=OVERRIDES)
    with tempfile.TemporaryDirectory() as tmp:
        fit(cfg, Path(tmp))
        checkpoint = torch.load(Path(tmp) / "checkpoints" / "last.pt", weights_only=True)
    for key in ("optimizer", "scheduler", "rng", "rng_per_rank"):
        checkpoint[key] = None  # only the model and its config matter here: keep the file small
    torch.save(checkpoint, out / "main_checkpoint.pt")
    model = build_model(cfg.model)
    model.load_state_dict(checkpoint["model"])
    with torch.no_grad():
        logits = model.eval()(torch.linspace(-1, 1, 29 * 37).reshape(INPUT_SHAPE))
    torch.save(logits, out / "main_checkpoint_output.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
