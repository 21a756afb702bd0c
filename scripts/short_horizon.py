"""Step-matched short-horizon runs: how far a recipe gets in 100 or 300 optimizer steps (issue 28).

Time-matched comparisons on a shared machine measure the load as much as the recipe; this script
fixes the number of steps instead, so each recipe's learning per step is compared whatever the
machine does. Two recipes on one ``data=folder`` dataset with a ``test/`` split:

- ``plain``: the page of PyTorch in ``scripts/baseline_plain.py`` (width 16, depth 4, Adam 1e-3,
  cosine over the steps, BCE/CE + Dice, flips and 90-degree rotations), run for ``--steps`` steps;
- ``planned``: unet-train's own run built from ``unet-plan``'s choices for the dataset (the plan
  derived from its fingerprint, ``measure=false``) with ``--set key=value`` overrides on top (the
  width, depth, warm-up, augmentation, ... under test), trained for ``--steps`` steps with the
  schedule annealed over them.

Both are scored as ``baseline_plain.py`` scores (whole-image forward on ``<root>/test``, Dice per
image and foreground class averaged). Prints one JSON line with the CPU seconds spent.

    OMP_NUM_THREADS=1 python scripts/short_horizon.py --root /work/shared/data/usgra-seg --steps 100 \\
        --recipe planned --set model.base_channels=16 model.depth=4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def plain_module() -> Any:
    spec = importlib.util.spec_from_file_location("baseline_plain", HERE / "baseline_plain.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_plain(root: Path, steps: int) -> dict:
    plain = plain_module()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images, masks = plain.load(root)
    classes = max(2, max(int(m.max()) for m in masks) + 1)
    model = plain.UNet(3, 1 if classes == 2 else classes)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        for group in optim.param_groups:  # cosine over the steps, as baseline_plain's over its budget
            group["lr"] = 1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        x, y = plain.crops(images, masks, rng, 256, 4)
        optim.zero_grad()
        plain.loss_fn(model(x), y).backward()
        optim.step()
    test_images, truths = plain.load(root / "test")
    return score(model, [torch.from_numpy(im) for im in test_images], truths, classes)


def planned_choices(root: Path, steps: int) -> list[tuple[str, Any]]:
    """unet-plan's choices for ``root`` (data, model, loss, sched) for a budget of about ``steps`` steps."""

    from hydra import compose, initialize_config_dir

    from unet_train.build import build_data
    from unet_train.config import config_dir
    from unet_train.plan.derive import DeviceFacts, derive_plan
    from unet_train.plan.fingerprint import compute_fingerprint, training_split

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=["data=folder", f"data.root={root}"])
    fingerprint = compute_fingerprint(*training_split(build_data(cfg.data)))
    # A budget that buys about ``steps`` steps of a nominal 1 s at width 8 (nothing is timed): the plan of a
    # short budget, as a CPU at width 8 would get it (the ratios are this machine's, one thread, 256 px crops).
    facts = DeviceFacts(kind="cpu", name="bench", step_seconds={8: 1.0, 16: 2.2, 32: 5.6})
    choices = derive_plan(fingerprint, facts, budget_s=max(steps, 100) / 0.9)
    skip = {"trainer.max_time", "trainer.max_epochs", "data.samples_per_epoch", "trainer.val_every"}
    return [(c.key, c.value) for c in choices if c.key not in skip]


def run_planned(root: Path, steps: int, sets: list[str]) -> tuple[dict, list[str]]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from unet_train.config import config_dir
    from unet_train.data.base import image_to_tensor
    from unet_train.engine.guard import NonFiniteGuard
    from unet_train.engine.run import build_run
    from unet_train.engine.step import TrainStep

    choices = planned_choices(root, steps)
    nodes = [(key, value) for key, value in choices if isinstance(value, dict)]  # loss, data.normalize
    plain = [f"{key}={json.dumps(value)}" for key, value in choices if not isinstance(value, dict)]
    overrides = [*plain, *sets]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=[
            "data=folder", f"data.root={root}", "trainer=cpu", "trainer.channels_last=false", "data.num_workers=0",
            "trainer.max_epochs=1", "trainer.max_time=null", *overrides])  # fmt: skip
    with open_dict(cfg):
        for key, value in nodes:  # a planned node replaces the group's option, as apply_plan does
            if not any(s.split("=")[0] in (key, key.replace(".", "/")) for s in sets):  # unless --set chose it
                OmegaConf.update(cfg, key, value, merge=False)
        cfg.data.samples_per_epoch = steps * int(cfg.data.batch_size)
    run = build_run(cfg)
    run.start_epoch(0)
    guard = NonFiniteGuard.for_run(run, Path("/nonexistent/last.pt"))
    train = TrainStep.for_run(run, guard)
    for batch in run.train_loader:
        images, masks, extra = run.inputs(batch)
        train(images, masks, **extra)
    test = run.data.split("test")
    tensors = [image_to_tensor(im) for im in test.images]
    named = overrides + [f"{key}={json.dumps(value)}" for key, value in nodes]
    return score(run.model, tensors, list(test.masks), int(cfg.data.num_classes)), named


def score(model: torch.nn.Module, images: list[torch.Tensor], truths: list[np.ndarray], classes: int) -> dict:
    plain = plain_module()
    model.eval()
    preds = []
    with torch.no_grad():
        for image in images:
            logits = model(image[None])
            preds.append(((logits[0, 0] > 0).long() if classes == 2 else logits[0].argmax(0)).numpy())
    dice, _, pooled = plain.score(preds, truths, classes)
    per_class = [float(plain.score([(p == c) * 1 for p in preds], [(t == c) * 1 for t in truths], 2)[2])
                 for c in range(1, classes)]  # fmt: skip
    return {"test/dice": round(dice, 4), "test/dice_pooled": round(pooled, 4),
            "pooled_per_class": [round(d, 4) for d in per_class]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--recipe", choices=("plain", "planned"), default="planned")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides on top of the plan (planned)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.process_time()
    overrides: list[str] = []
    if args.recipe == "plain":
        result = run_plain(args.root, args.steps)
    else:
        result, overrides = run_planned(args.root, args.steps, args.set)
    row = {"data": args.root.name, "recipe": args.recipe, "tag": args.tag, "steps": args.steps, **result,
           "cpu_s": round(time.process_time() - start, 1), "overrides": overrides}  # fmt: skip
    print(json.dumps(row))


if __name__ == "__main__":
    main()
