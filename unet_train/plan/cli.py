"""``unet-plan``: fingerprint a dataset and write a training plan (``configs/plan.yaml``).

Examples::

    unet-plan data=folder data.root=my_data   # outputs/plan/<date>/<time>/{fingerprint.json,experiment/plan.yaml}
    unet-plan data=folder data.root=my_data budget=30m output=plans/mine.yaml   # + plans/mine.fingerprint.json
    unet-train data=folder data.root=my_data +plan=outputs/plan/<date>/<time>/experiment/plan.yaml
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from unet_train.cli import console_script, exit_if_version_asked, exit_on_user_error, run_dir, user_overrides
from unet_train.config import config_dir
from unet_train.data.limits import set_max_pixels
from unet_train.plan.planner import check_writable, default_plan_path, fingerprint_path, make_plan, parse_budget

log = logging.getLogger(__name__)


@exit_on_user_error
def plan(cfg: DictConfig) -> Path:
    """Write the fingerprint and the plan of ``cfg.data``; print both (stdout); returns the plan's path."""
    set_max_pixels(cfg.get("max_pixels"))
    budget = parse_budget(cfg.budget)
    output = Path(cfg.output).expanduser() if cfg.get("output") else default_plan_path(run_dir())
    check_writable(output)
    fingerprint = make_plan(cfg.data, budget, cfg.device, output, measure=cfg.measure, typed=user_overrides())
    summary = {k: v for k, v in fingerprint.items() if k != "foreground_share_per_image"}
    if "spacing" in summary:  # volumes: the median is printed, each volume's spacing is in the file
        summary["spacing"] = {k: v for k, v in summary["spacing"].items() if k != "per_volume"}
    sys.stdout.write(json.dumps(summary, indent=2) + "\n\n" + output.read_text())
    log.info("Fingerprint: %s", fingerprint_path(output))
    log.info("Plan: %s  (train with: unet-train ... +plan=%s)", output, output)
    return output


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="plan")
def hydra_main(cfg: DictConfig) -> None:
    plan(cfg)


@console_script
def main() -> None:
    """The ``unet-plan`` console script."""
    exit_if_version_asked()
    hydra_main()


if __name__ == "__main__":
    main()
