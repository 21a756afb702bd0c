"""Print the parameter count and forward GFLOPs of each named model variant.

Each ``configs/model/*.yaml`` is composed through Hydra with ``data=isbi`` (1 input channel,
one logit), exactly as ``unet-train model=NAME data=isbi`` would build it, and one forward
pass at 1x1x512x512 is counted with ``torch.utils.flop_counter.FlopCounterMode``.

The pass runs on the ``meta`` device: shapes propagate and FLOPs are counted, but no
arithmetic is done, so the script takes seconds even for the 31 M-parameter networks.
FlopCounterMode counts convolutions and matrix products (2 FLOPs per multiply-add); norms,
activations, pooling and the attention maps' element-wise work are not counted.

Usage::

    python scripts/model_stats.py                       # every configs/model/*.yaml
    python scripts/model_stats.py vanilla dense         # some of them
    python scripts/model_stats.py --size 256 model.base_channels=16   # other size / overrides
"""

from __future__ import annotations

import argparse
import logging

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from unet_train.build import build_model
from unet_train.config import config_dir

log = logging.getLogger("model_stats")


def model_names() -> list[str]:
    """The named variants: every YAML in ``configs/model``."""
    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


def model_stats(name: str, size: int = 512, overrides: list[str] | None = None) -> tuple[int, float]:
    """Return (parameters, forward GFLOPs at 1 x C x size x size) of ``configs/model/<name>.yaml``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=[f"model={name}", "data=isbi", *(overrides or [])])
    with torch.device("meta"):
        model = build_model(cfg.model).eval()
        image = torch.empty(1, cfg.data.in_channels, size, size)
    parameters = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(image)
    return parameters, counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "items", nargs="*", help="model configs (default: all of configs/model) and Hydra overrides (key=value)"
    )
    parser.add_argument("--size", type=int, default=512, help="side of the square input (default 512)")
    args = parser.parse_args()
    overrides = [item for item in args.items if "=" in item]
    names = [item for item in args.items if "=" not in item] or model_names()
    unknown = [n for n in names if n not in model_names()]
    if unknown:
        parser.error(f"unknown model config(s) {unknown}; choose from {model_names()}")

    rows = [(name, *model_stats(name, args.size, overrides)) for name in names]
    # A script's report goes to stdout, as a Markdown table ready for the README.
    print(f"| model | parameters | GFLOPs (1x1x{args.size}x{args.size} forward) |")
    print("|---|---:|---:|")
    for name, parameters, gflops in rows:
        print(f"| {name} | {parameters / 1e6:.2f} M | {gflops:.1f} |")


if __name__ == "__main__":
    main()
