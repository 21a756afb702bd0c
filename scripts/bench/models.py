"""The model cases: the project's UNet as ``fit`` trains it, the same network in plain PyTorch, MONAI's BasicUNet."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.common import Case, batch, bf16_available, compose, monai_version, trainer_name


class PlainDoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PlainUNet(nn.Module):
    """UNet (Ronneberger et al. 2015, with BN), NCHW float32, ending in a sigmoid as the seed does."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 64, depth: int = 4) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.downs = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.downs.append(PlainDoubleConv(cin, w))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList()
        self.decs = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.ups.append(nn.ConvTranspose2d(w * 2, w, 2, stride=2))
            self.decs.append(PlainDoubleConv(w * 2, w))
        self.out = nn.Conv2d(base, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.downs):
            x = down(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decs):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return torch.sigmoid(self.out(x))


def count_flops(model: nn.Module, x: torch.Tensor, train: bool, size: int) -> float:
    """FLOPs of one forward (and backward when ``train``) pass of one ``size`` x ``size`` image.

    Counted on the small input ``x`` and scaled by the pixel count: every convolution of these
    fully convolutional networks costs FLOPs in proportion to its output pixels.
    """
    was_training = model.training
    model.train(train)
    with FlopCounterMode(display=False) as counter:
        if train:
            out = model(x)
            out = out if isinstance(out, torch.Tensor) else out[0]
            out.float().mean().backward()
        else:
            with torch.no_grad():
                model(x)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops() / x.shape[0] * (size * size) / (x.shape[-2] * x.shape[-1])


def project_case(
    width: int,
    precision: str,
    channels_last: bool | str,
    args: argparse.Namespace,
    device: torch.device,
    compiled=False,
) -> tuple[nn.Module, Callable[[], None], Callable[[], None], dict[str, Any]]:
    """The project's model, loss, optimizer and step as ``fit`` runs them (trainer=cpu/gpu defaults).

    ``channels_last="auto"`` decides each phase's layout (and ``precision="auto"`` its precision) as
    ``unet-train`` and ``unet-predict`` do on this machine; the choice and the timings behind it go
    into the case's settings (``auto``).
    """
    from unet_train.build import build_loss, build_model
    from unet_train.engine import autotune
    from unet_train.engine.runtime import eval_mode, make_runtime, to_channels_last
    from unet_train.engine.trial import trial_step, trial_steps
    from unet_train.inference.tiling import fold_batchnorm

    cfg = compose(
        [
            "data=synthetic",
            f"trainer={trainer_name(device)}",
            f"trainer.device={device}",
            f"model.base_channels={width}",
            f"model.depth={args.depth}",
            f"trainer.precision={precision}",
            f"trainer.channels_last={str(channels_last).lower()}",
        ]
    )
    t = cfg.trainer
    runtime = make_runtime(t.device, t.precision, t.channels_last, t.cudnn_benchmark, t.deterministic)
    model = build_model(cfg.model).to(runtime.device)
    criterion = build_loss(cfg)
    images, masks = batch(args, torch.device("cpu"))
    shape = tuple(images.shape)
    # What unet-eval and unet-predict do: batch norms folded into the convolutions once (fold_batchnorm),
    # then eval mode, inference tensors, autocast, probabilities. (The speed does not depend on the values
    # of the weights, so folding the untrained model is fair.)
    folded = fold_batchnorm(model)

    make_train, what = trial_steps(cfg, model, criterion, {"image": images, "mask": masks})
    train_rt, train_s = autotune.tune(runtime, "training", make_train, what, shape)
    infer_rt, infer_s = autotune.tune(
        runtime, "inference", lambda rt: autotune.forward_step(folded, rt, shape), {"model": repr(folded)}, shape
    )
    if train_rt.channels_last:
        model = to_channels_last(model)
    if infer_rt.channels_last:
        folded = to_channels_last(folded)
    train_model = cast(nn.Module, torch.compile(model)) if compiled else model
    if device.type == "cuda":
        images, masks = images.pin_memory(), masks.pin_memory()
    # fit()'s own step (engine/step.py) and non-finite guard (sync-free on CUDA), without the schedule.
    step = trial_step(cfg, model, criterion, train_rt, forward=train_model)

    def train_step() -> None:
        if step(train_rt.to_device(images, image=True), train_rt.to_device(masks)) is None:
            raise FloatingPointError("non-finite loss in the benchmark")

    def infer_step() -> None:
        with eval_mode(folded), infer_rt.autocast():
            torch.sigmoid(folded(infer_rt.to_device(images, image=True)).float())

    settings: dict[str, Any] = {
        "precision": train_rt.precision,
        "channels_last": train_rt.channels_last,
        "compile": compiled,
        "loss": cfg.loss._target_,
    }
    if runtime.auto:
        settings["auto"] = {
            phase: {"channels_last": rt.channels_last, "precision": rt.precision, "seconds": seconds}
            for phase, rt, seconds in (("training", train_rt, train_s), ("inference", infer_rt, infer_s))
        }
    return model, train_step, infer_step, settings


def plain_case(
    width: int, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, Callable[[], None], Callable[[], None], dict[str, Any]]:
    """The seed's way: NCHW float32 eager, sigmoid in the model, ``nn.BCELoss``, Adam."""
    model = PlainUNet(1, 1, width, args.depth).to(device)
    criterion = nn.BCELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, masks = batch(args, device)
    target = masks.unsqueeze(1).float()

    def train_step() -> None:
        model.train()
        loss = criterion(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        model.eval()
        with torch.no_grad():
            model(images)

    return model, train_step, infer_step, {"precision": "32", "channels_last": False, "loss": "nn.BCELoss"}


def monai_case(
    width: int, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, Callable[[], None], Callable[[], None], dict[str, Any]]:
    """MONAI's BasicUNet with the same widths (w, 2w, ..., 16w), batch norm and ReLU, as MONAI runs it (NCHW fp32)."""
    from monai.networks.nets import BasicUNet

    if args.depth != 4:
        raise ValueError("MONAI's BasicUNet has depth 4")
    features = (width, 2 * width, 4 * width, 8 * width, 16 * width, width)
    model = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=features, norm="batch", act="relu")
    model = model.to(device)
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, masks = batch(args, device)
    target = masks.unsqueeze(1).float()

    def train_step() -> None:
        model.train()
        loss = criterion(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        model.eval()
        with torch.no_grad():
            torch.sigmoid(model(images))

    return model, train_step, infer_step, {"precision": "32", "channels_last": False, "features": list(features)}


def model_variants(
    args: argparse.Namespace, device: torch.device, ablation: bool = True
) -> list[tuple[str, str, Callable]]:
    """(name, description, builder(width)) of every model case, in the order they are interleaved.

    ``ablation`` adds the channels_last=false cases (the benchmark runs them at the largest width only).
    """
    # trainer=cpu: layout and precision measured per phase (auto); trainer=gpu: bf16, channels-last.
    default_precision = "bf16" if device.type == "cuda" else "auto"
    variants: list[tuple[str, str, Callable]] = [
        ("plain", "plain PyTorch (seed): NCHW fp32 eager, sigmoid + BCELoss", lambda w: plain_case(w, args, device)),
        (
            "project",
            f"unet-train defaults (trainer={trainer_name(device)})",
            lambda w: project_case(w, default_precision, "auto" if device.type == "cpu" else True, args, device),
        ),
    ]
    if device.type == "cpu":  # the trainer=cpu default before channels_last=auto and precision=auto
        variants.append(
            (
                "project-cl",
                "unet-train, trainer.channels_last=true",
                lambda w: project_case(w, "32", True, args, device),
            )
        )
    other_precision = "32" if default_precision == "bf16" else "bf16"  # on a CPU: bf16 always, beside auto
    if bf16_available(device) and not args.no_bf16:
        variants.append(
            (
                f"project-{'fp32' if other_precision == '32' else 'bf16'}",
                f"unet-train, trainer.precision={other_precision}",
                lambda w: project_case(w, other_precision, True, args, device),
            )
        )
    if ablation and not args.no_ablation:
        variants.append(
            (
                "project-nchw",
                "unet-train, trainer.channels_last=false",
                lambda w: project_case(w, "32", False, args, device),
            )
        )
        if bf16_available(device) and not args.no_bf16:
            variants.append(
                (
                    "project-bf16-nchw",
                    "unet-train, precision=bf16, channels_last=false",
                    lambda w: project_case(w, "bf16", False, args, device),
                )
            )
    if args.compile:
        variants.append(
            (
                "project-compile",
                "unet-train defaults + trainer.compile=true",
                lambda w: project_case(w, default_precision, True, args, device, compiled=True),
            )
        )
    if monai_version() and args.depth == 4 and not args.no_monai:
        variants.append(
            ("monai", "MONAI BasicUNet, same widths, BN+ReLU, NCHW fp32", lambda w: monai_case(w, args, device))
        )
    return variants


def build_model_cases(args: argparse.Namespace, device: torch.device) -> tuple[list[Case], dict[str, nn.Module]]:
    cases: list[Case] = []
    models: dict[str, nn.Module] = {}
    small = torch.rand(1, 1, 2**args.depth * 2, 2**args.depth * 2, device=device)  # for counting FLOPs
    for width in args.widths:
        for name, description, builder in model_variants(args, device, width == max(args.widths)):
            model, train_step, infer_step, settings = builder(width)
            models[f"{name}/{width}"] = model
            x = small.contiguous(memory_format=torch.channels_last) if settings.get("channels_last") else small
            flops_train = count_flops(model, x, train=True, size=args.size)
            flops_infer = count_flops(model, x, train=False, size=args.size)
            for mode, fn, flops in (("train", train_step, flops_train), ("infer", infer_step, flops_infer)):
                case = Case(f"{name}/{width}/{mode}", "model", description, args.batch, fn)
                case.info = {
                    "name": name,
                    "width": width,
                    "mode": mode,
                    "params": sum(p.numel() for p in model.parameters()),
                    "gflop_per_image": flops / 1e9,
                    **settings,
                }
                if "auto" in settings:  # channels_last/precision=auto: each phase its own choice
                    phase = settings["auto"]["training" if mode == "train" else "inference"]
                    case.info |= {"channels_last": phase["channels_last"], "precision": phase["precision"]}
                cases.append(case)
    return cases, models
