"""``unet-train``: train a UNet from the Hydra config tree (``configs/train.yaml``).

Examples::

    unet-train experiment=quickstart
    unet-train model=attention data=isbi data.root=/data/isbi2012
    unet-train ckpt=outputs/2026-11-25/10-00-00/checkpoints/last.pt   # resume
    unet-train -m model=vanilla,attention,dilated,dense seed=0,1,2      # sweep
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from unet_train.cli import apply_overrides, exit_on_user_error, run_dir, user_overrides
from unet_train.config import config_dir
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit

log = logging.getLogger(__name__)


def resume_config(cfg: DictConfig) -> DictConfig:
    """On ``ckpt=...``, continue the checkpoint's own run: its config plus this command's overrides."""
    stored = OmegaConf.create(load_checkpoint(cfg.ckpt)["config"])
    merged = apply_overrides(stored, user_overrides())
    merged.ckpt = cfg.ckpt
    return merged


@exit_on_user_error
def train(cfg: DictConfig) -> float | None:
    """Train one run; returns the best monitored value (what Hydra sweepers optimise)."""
    if cfg.get("ckpt"):
        cfg = resume_config(cfg)
    out = run_dir()
    (out / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    metrics = fit(cfg, out)
    value = metrics.get(f"best/{cfg.monitor}")
    return None if value is None else float(value)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
