"""How fast unet-train trains and predicts on this machine, against plain PyTorch and MONAI.

One run measures, with the cases interleaved and repeated (median and min-max reported):

- train and inference images/s of the project's UNet (``model=vanilla``) at each width, in the
  default settings of ``trainer=cpu`` (or ``trainer=gpu`` on CUDA) and in each precision, with
  channels-last on and off;
- the same network written plainly in this file (NCHW, float32, eager, sigmoid + ``nn.BCELoss``,
  as the seed writes it), and MONAI's ``BasicUNet`` of the same widths when MONAI is installed;
- achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) and their fraction of the
  machine's measured 3x3-convolution throughput (a large conv3x3, channels-last, in float32 and
  bfloat16, forward for inference and forward + backward for training);
- the ISBI training recipe's loader (``configs/data/isbi.yaml``, elastic deformation included,
  the configured workers) in images/s, against what the model consumes; and the albumentations
  recipe against the batched device augmentation (``configs/data/isbi_device.yaml``) in one process;
- the peak memory of each case (CPU: peak resident set measured in a child process; CUDA: the
  allocator's peak).

It prints a table and writes JSON. Examples::

    python scripts/benchmark.py                                  # the full CPU run (about 10-20 min on 2 cores)
    python scripts/benchmark.py --quick --json /tmp/bench.json   # a smoke run (seconds)
    python scripts/benchmark.py --device cuda --size 512 --widths 64 --compile   # on a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ISBI = Path(os.environ.get("UNET_TRAIN_ISBI_ROOT", REPO.parent / "shared" / "data" / "isbi2012"))


# ----------------------------------------------------------------------------------------------
# The plain baseline: the seed's UNet as a plain PyTorch user writes it.
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One thing to time: ``run()`` processes ``images_per_run`` images."""

    key: str
    group: str  # model, conv, data
    label: str
    images_per_run: int
    run: Callable[[], None]
    info: dict[str, Any] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)  # images/s (conv: GFLOP/s) per repeat


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose(overrides: list[str]) -> Any:
    """The project's config as the CLI composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from unet_train.config import config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return hydra_compose(config_name="train", overrides=overrides)


def trainer_name(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


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
    width: int, precision: str, channels_last: bool, args: argparse.Namespace, device: torch.device, compiled=False
) -> tuple[nn.Module, Callable[[], None], Callable[[], None], dict[str, Any]]:
    """The project's model, loss, optimizer and step as ``fit`` runs them (trainer=cpu/gpu defaults)."""
    from unet_train.build import build_loss, build_model, build_optimizer
    from unet_train.engine.runtime import eval_mode, make_runtime, to_channels_last
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
    if runtime.channels_last:
        model = to_channels_last(model)
    criterion = build_loss(cfg)
    optimizer = build_optimizer(cfg, model, fused=True)  # as fit() builds it
    scaler = runtime.grad_scaler()
    sync_free = device.type == "cuda" and bool(getattr(optimizer, "_step_supports_amp_scaling", False))
    train_model = torch.compile(model) if compiled else model
    images, masks = batch(args, torch.device("cpu"))
    if device.type == "cuda":
        images, masks = images.pin_memory(), masks.pin_memory()

    def train_step() -> None:
        # The body of fit()'s step loop (engine/fit.py), without logging and the scheduler.
        x = runtime.to_device(images, image=True)
        y = runtime.to_device(masks)
        with runtime.autocast():
            outputs = train_model(x)
        loss = criterion(outputs, y)
        if sync_free:  # CUDA: the non-finite flag goes to the fused optimizer, no host sync
            bad = ~torch.isfinite(loss.detach())
        elif not torch.isfinite(loss):
            raise FloatingPointError("non-finite loss in the benchmark")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if t.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        if sync_free and not scaler.is_enabled():
            optimizer.found_inf = bad.float()  # type: ignore[attr-defined]
        scaler.step(optimizer)
        scaler.update()

    # What unet-eval and unet-predict do: batch norms folded into the convolutions once (fold_batchnorm),
    # then eval mode, inference tensors, autocast, probabilities. (The speed does not depend on the values
    # of the weights, so folding the untrained model is fair.)
    folded = fold_batchnorm(model)
    if runtime.channels_last:
        folded = to_channels_last(folded)

    def infer_step() -> None:
        with eval_mode(folded), runtime.autocast():
            torch.sigmoid(folded(runtime.to_device(images, image=True)).float())

    settings = {"precision": precision, "channels_last": channels_last, "compile": compiled, "loss": cfg.loss._target_}
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


def batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, args.size, args.size, generator=g)
    masks = (torch.rand(args.batch, args.size, args.size, generator=g) > 0.5).long()
    return images.to(device), masks.to(device)


def model_variants(
    args: argparse.Namespace, device: torch.device, ablation: bool = True
) -> list[tuple[str, str, Callable]]:
    """(name, description, builder(width)) of every model case, in the order they are interleaved.

    ``ablation`` adds the channels_last=false cases (the benchmark runs them at the largest width only).
    """
    default_precision = "bf16" if device.type == "cuda" else "32"
    variants: list[tuple[str, str, Callable]] = [
        ("plain", "plain PyTorch (seed): NCHW fp32 eager, sigmoid + BCELoss", lambda w: plain_case(w, args, device)),
        (
            "project",
            f"unet-train defaults (trainer={trainer_name(device)})",
            lambda w: project_case(w, default_precision, True, args, device),
        ),
    ]
    other_precision = "32" if default_precision == "bf16" else "bf16"
    if bf16_available(device):
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
        if bf16_available(device):
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


def bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True  # runs everywhere; fast only with AVX-512 BF16 / AMX (see the machine section)


def monai_version() -> str | None:
    try:
        import monai
    except ImportError:
        return None
    return str(monai.__version__)


# ----------------------------------------------------------------------------------------------
# Convolution throughput: the ceiling the model's FLOP rate is compared with
# ----------------------------------------------------------------------------------------------
def conv_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    """A large 3x3 convolution, channels-last, in float32 and bfloat16; forward and forward + backward."""
    from unet_train.engine.runtime import to_channels_last

    if args.quick:
        n, c, side = 2, 16, 32
    elif device.type == "cuda":
        n, c, side = 16, 256, 128  # enough work to fill a large GPU
    else:
        n, c, side = 4, 128, 128  # as much work as a 64-channel conv of the UNet's first level at 256x256
    flops_fwd = 2.0 * n * c * c * 9 * side * side
    cases = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype is torch.bfloat16 and not bf16_available(device):
            continue
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False).to(device=device, dtype=dtype)
        conv = to_channels_last(conv)
        x = torch.randn(n, c, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        grad = torch.randn_like(x)
        reps = 1 if args.quick else (20 if device.type == "cuda" else 3)

        def fwd(conv=conv, x=x, reps=reps) -> None:
            with torch.no_grad():
                for _ in range(reps):
                    conv(x)

        def fwd_bwd(conv=conv, x=x, grad=grad, reps=reps) -> None:
            for _ in range(reps):
                conv(x).backward(grad)  # input and weight gradients: 3x the forward FLOPs

        shape = f"{n}x{c}x{side}x{side}, {c}->{c}"
        for mode, fn, flops in (("forward", fwd, flops_fwd), ("fwd+bwd", fwd_bwd, 3 * flops_fwd)):
            case = Case(f"conv/{dtype_name}/{mode}", "conv", f"conv3x3 {dtype_name} {mode}", 1, fn)
            case.info = {"dtype": dtype_name, "mode": mode, "shape": shape, "gflop_per_run": flops * reps / 1e9}
            cases.append(case)
    return cases


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def time_case(case: Case, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        case.run()
    sync(device)
    elapsed = time.perf_counter() - start
    if case.group == "conv":
        return case.info["gflop_per_run"] * steps / elapsed
    return case.images_per_run * steps / elapsed


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": [round(s, 4) for s in samples],
    }


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
                cases.append(case)
    return cases, models


def warm_up(cases: list[Case], device: torch.device, steps: int) -> None:
    for case in cases:
        start = time.perf_counter()
        for _ in range(steps):
            case.run()
        sync(device)
        case.info["warmup_s"] = round(time.perf_counter() - start, 3)  # includes compile time when compiled


def run_interleaved(cases: list[Case], args: argparse.Namespace, device: torch.device) -> None:
    """Every repeat runs every case once, in a rotating order, so slow phases of a shared machine hit all cases."""
    for repeat in range(args.repeats):
        shift = repeat % len(cases)
        order = cases[shift:] + cases[:shift]
        for case in order:
            steps = args.steps if case.group == "model" else 1
            case.samples.append(time_case(case, steps, device))
        print(f"  repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Data pipeline
# ----------------------------------------------------------------------------------------------
def forever(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def data_section(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The ISBI recipe's loader with its configured workers, and augmentation on CPU: albumentations vs device."""
    from unet_train.build import build_data

    root = Path(args.isbi_root)
    if not (root / "train-volume.tif").is_file():
        return {"skipped": f"ISBI 2012 data not found in {root} (pass --isbi-root)"}
    # The recipe at the benchmark's crop and batch (256 px, 4 by default, as in configs/data/isbi.yaml).
    overrides = ["data=isbi", f"data.root={root}", f"data.patch_size={args.size}", f"data.batch_size={args.batch}"]
    if args.quick:
        overrides += ["data.samples_per_epoch=16"]
    cfg = compose(overrides)
    data = build_data(cfg.data)
    loader = data.dataloader("train", pin_memory=device.type == "cuda")
    batches = forever(loader)
    next(batches)  # start the workers (persistent: they live as long as the loader)
    n_batches = 2 if args.quick else 12  # well above the prefetched 2 per worker
    loader_samples = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(n_batches):
            next(batches)
        loader_samples.append(n_batches * data.batch_size / (time.perf_counter() - start))
    del batches, loader

    # Augmentation alone, in this process: the albumentations recipe item by item, against a crop on
    # the CPU + the batched DeviceAugment on the training device (here: this device).
    device_cfg = compose(["data=isbi_device", f"data.root={root}", *overrides[2:]])
    device_data = build_data(device_cfg.data)
    album_set = data.dataset("train")
    crop_set = device_data.dataset("train")
    augment = device_data.device_augment
    assert augment is not None, "configs/data/isbi_device.yaml sets device_augment"
    bs = data.batch_size
    album_samples, device_samples = [], []
    g = torch.Generator().manual_seed(0)
    for _ in range(args.repeats):
        idx = torch.randint(len(album_set), (bs,), generator=g).tolist()
        start = time.perf_counter()
        for i in idx:
            album_set[i]
        album_samples.append(bs / (time.perf_counter() - start))
        sync(device)
        start = time.perf_counter()
        items = [crop_set[i] for i in idx]
        images = torch.stack([it["image"] for it in items]).to(device)
        masks = torch.stack([it["mask"] for it in items]).to(device)
        augment(images, masks)
        sync(device)
        device_samples.append(bs / (time.perf_counter() - start))
    device_path = None
    if device.type == "cuda":
        # The GPU's whole data path: the isbi_device loader's workers crop, the batch is copied from
        # pinned memory, DeviceAugment runs batched on the GPU.
        device_loader = device_data.dataloader("train", pin_memory=True)
        batches = forever(device_loader)
        next(batches)
        path_samples = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            for _ in range(n_batches):
                b = next(batches)
                augment(b["image"].to(device, non_blocking=True), b["mask"].to(device, non_blocking=True))
            sync(device)
            path_samples.append(n_batches * bs / (time.perf_counter() - start))
        device_path = summary(path_samples)
        del batches, device_loader
    return {
        "recipe": "configs/data/isbi.yaml",
        "num_workers": data.num_workers,
        "batch_size": data.batch_size,
        "patch_size": data.patch_size,
        "loader_images_per_s": summary(loader_samples),
        "device_path_images_per_s": device_path,
        "augment_in_process": {
            "albumentations_images_per_s": summary(album_samples),
            "device_augment_images_per_s": summary(device_samples),
            "device": str(device),
        },
    }


# ----------------------------------------------------------------------------------------------
# Peak memory, in a child process (CPU) or from the CUDA allocator
# ----------------------------------------------------------------------------------------------
def rss_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure_memory(args: argparse.Namespace, device: torch.device) -> dict[str, float | None]:
    """Peak memory in MiB per model case: weights, gradients, optimizer state and the step's activations.

    CPU: the peak resident set of this process while the case runs, above what it held before the
    case was built; glibc is told to return freed blocks at once (``MALLOC_MMAP_THRESHOLD_``, set
    by the parent), so earlier cases' memory does not hide this one's.
    """
    out: dict[str, float | None] = {}
    # One throwaway case first: lazy library initialisation (oneDNN, autocast caches) is nobody's peak.
    _, first_train, first_infer, _ = model_variants(args, device)[0][2](args.widths[0])
    first_train(), first_infer()
    del first_train, first_infer
    for width in args.widths:
        for name, _, builder in model_variants(args, device, width == max(args.widths)):
            for mode in ("infer", "train"):
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    base = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                else:
                    base = rss_kib("VmRSS") or 0
                model, train_step, infer_step, _ = builder(width)
                step = train_step if mode == "train" else infer_step
                step()  # first step: optimizer state, workspace
                if device.type == "cuda":
                    step()
                    sync(device)
                    out[f"{name}/{width}/{mode}"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
                elif reset_peak_rss():
                    step()
                    peak = rss_kib("VmHWM")
                    out[f"{name}/{width}/{mode}"] = None if peak is None else (peak - base) / 1024
                else:
                    out[f"{name}/{width}/{mode}"] = None
                del model, train_step, infer_step, step
    return out


def memory_in_child(args: argparse.Namespace) -> dict[str, float | None]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    argv = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", *args.passthrough]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return {}
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def machine(device: torch.device) -> dict[str, Any]:
    from unet_train.engine.runtime import cpu_has_fast_bf16

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "device": str(device),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fmt(s: dict[str, Any], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def report(
    model_cases: list[Case], conv: list[Case], data: dict[str, Any], memory: dict[str, Any], args, device
) -> dict[str, Any]:
    conv_peak = {c.key: summary(c.samples) | c.info for c in conv}

    def peak_for(precision: str, mode: str) -> float | None:
        key = f"conv/{'bf16' if precision == 'bf16' else 'fp32'}/{'fwd+bwd' if mode == 'train' else 'forward'}"
        return conv_peak[key]["median"] if key in conv_peak else None

    rows = []
    by_key = {c.key: c for c in model_cases}
    for case in model_cases:
        s = summary(case.samples)
        info = case.info
        gflops = s["median"] * info["gflop_per_image"]
        ceiling = peak_for(str(info.get("precision", "32")), info["mode"])
        plain = by_key.get(f"plain/{info['width']}/{info['mode']}")
        rows.append(
            {
                "case": case.key,
                "description": case.label,
                **info,
                "images_per_s": s,
                "gflop_per_s": gflops,
                "fraction_of_conv_peak": gflops / ceiling if ceiling else None,
                "vs_plain": s["median"] / statistics.median(plain.samples) if plain else None,
                "peak_memory_mib": memory.get(case.key),
            }
        )

    def median(key: str) -> float | None:
        c = by_key.get(key)
        return statistics.median(c.samples) if c and c.samples else None

    def ratio(a: str, b: str) -> float | None:
        x, y = median(a), median(b)
        return x / y if x and y else None

    w = 32 if 32 in args.widths and device.type != "cuda" else max(args.widths)
    targets = []

    def target(name: str, value: float | None, goal: float, how: str) -> None:
        targets.append(
            {"target": name, "value": value, "goal": goal, "met": None if value is None else value >= goal, "how": how}
        )

    default_key = "project" if device.type != "cuda" else "project-fp32"
    bf16_key = "project-bf16" if device.type != "cuda" else "project"
    target(
        f"train fp32 default vs plain, base {w}",
        ratio(f"{default_key}/{w}/train", f"plain/{w}/train"),
        1.3,
        "median ratio",
    )
    target(f"train bf16 vs plain, base {w}", ratio(f"{bf16_key}/{w}/train", f"plain/{w}/train"), 2.0, "median ratio")
    target(f"train default vs MONAI, base {w}", ratio(f"{default_key}/{w}/train", f"monai/{w}/train"), 1.2, "median")
    target(f"inference fp32 default vs plain, base {w}", ratio(f"{default_key}/{w}/infer", f"plain/{w}/infer"), 1.4, "")
    row = next((r for r in rows if r["case"] == f"{default_key}/{w}/train"), None)
    target(
        f"train fp32 share of conv3x3 fp32 fwd+bwd throughput, base {w}",
        row["fraction_of_conv_peak"] if row else None,
        0.75,
        "median GFLOP/s over median conv GFLOP/s",
    )
    consumption = {
        c.key: statistics.median(c.samples)
        for c in model_cases
        if c.info["mode"] == "train" and c.info["name"].startswith("project")
    }
    if "loader_images_per_s" in data and consumption:
        fastest = max(consumption, key=consumption.__getitem__)
        loader = data["loader_images_per_s"]["median"]
        data["model_consumption_images_per_s"] = consumption
        data["loader_vs_fastest_consumer"] = {"consumer": fastest, "ratio": loader / consumption[fastest]}
        target(
            f"ISBI loader ({data['num_workers']} workers) vs fastest project training ({fastest})",
            loader / consumption[fastest],
            2.0,
            "loader alone, median",
        )
        if data.get("device_path_images_per_s"):
            target(
                f"data=isbi_device path (loader + DeviceAugment on the GPU) vs fastest training ({fastest})",
                data["device_path_images_per_s"]["median"] / consumption[fastest],
                1.0,
                "median; >= 1 keeps the GPU fed",
            )
    if device.type == "cuda":
        for key in (f"project/{w}/train", f"project-compile/{w}/train"):
            row = next((r for r in rows if r["case"] == key), None)
            if row:
                target(
                    f"GPU: {key} (bf16, channels-last) share of conv3x3 bf16 fwd+bwd throughput",
                    row["fraction_of_conv_peak"],
                    0.4,
                    "median GFLOP/s over median conv GFLOP/s",
                )

    return {
        "machine": machine(device),
        "settings": {
            "widths": args.widths,
            "depth": args.depth,
            "batch": args.batch,
            "size": args.size,
            "steps_per_sample": args.steps,
            "repeats": args.repeats,
            "quick": args.quick,
        },
        "conv_peak_gflop_per_s": conv_peak,
        "cases": rows,
        "data": data,
        "targets": targets,
    }


def print_table(result: dict[str, Any]) -> None:
    m = result["machine"]
    s = result["settings"]
    print(
        f"\nMachine: {m.get('cpu_model', '?')}, {m['cpu_count']} cores, {m['cpu_capability']}, torch {m['torch']}, "
        f"device {m['device']}; batch {s['batch']} x {s['size']}x{s['size']}, depth {s['depth']}, "
        f"{s['repeats']} repeats x {s['steps_per_sample']} steps"
    )
    print("\n| case | base | mode | images/s median [min-max] | vs plain | GFLOP/s | of conv peak | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["cases"]:
        vs = f"{r['vs_plain']:.2f}x" if r["vs_plain"] else "-"
        frac = f"{100 * r['fraction_of_conv_peak']:.0f}%" if r["fraction_of_conv_peak"] else "-"
        mem = f"{r['peak_memory_mib']:.0f}" if r.get("peak_memory_mib") is not None else "-"
        print(
            f"| {r['name']} | {r['width']} | {r['mode']} | {fmt(r['images_per_s'])} | {vs} | "
            f"{r['gflop_per_s']:.0f} | {frac} | {mem} |"
        )
    print("\n| conv3x3 (channels-last) | GFLOP/s median [min-max] |")
    print("|---|---|")
    for key, c in result["conv_peak_gflop_per_s"].items():
        print(f"| {key} ({c['shape']}) | {fmt(c, 0)} |")
    d = result["data"]
    if "loader_images_per_s" in d:
        a = d["augment_in_process"]
        print(
            f"\nISBI recipe loader ({d['num_workers']} workers, batch {d['batch_size']}, {d['patch_size']}px): "
            f"{fmt(d['loader_images_per_s'])} images/s"
        )
        print(
            f"Augmentation in one process: albumentations recipe {fmt(a['albumentations_images_per_s'])} images/s, "
            f"crop + DeviceAugment on {a['device']} {fmt(a['device_augment_images_per_s'])} images/s"
        )
        if d.get("device_path_images_per_s"):
            print(
                f"data=isbi_device path ({d['num_workers']} workers crop, DeviceAugment on {a['device']}): "
                f"{fmt(d['device_path_images_per_s'])} images/s"
            )
    else:
        print(f"\nData: {d.get('skipped')}")
    print("\n| target | value | goal | met |")
    print("|---|---|---|---|")
    for t in result["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        met = "-" if t["met"] is None else ("yes" if t["met"] else "no")
        print(f"| {t['target']} | {value} | {t['goal']} | {met} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny widths and crops, one repeat of everything")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="base channels (default 16 32)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=None, help="crop side (default 256)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed sample (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per case (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--compile", action="store_true", help="also time the defaults with trainer.compile=true")
    p.add_argument("--no-monai", action="store_true", help="skip MONAI even when installed")
    p.add_argument("--no-ablation", action="store_true", help="skip the channels_last=false cases")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child process")
    p.add_argument("--isbi-root", default=str(DEFAULT_ISBI))
    p.add_argument("--json", default="benchmark.json", help="where to write the results")
    p.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    raw = list(argv if argv is not None else sys.argv[1:])
    args.passthrough = [a for a in raw if a != "--memory-probe"]
    if args.quick:
        defaults = {"widths": [4], "size": 64, "steps": 1, "repeats": 2}
        args.no_ablation = True
        args.depth = min(args.depth, 4)
        args.batch = min(args.batch, 2)
    else:
        defaults = {"widths": [16, 32], "size": 256, "steps": 1, "repeats": 5}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(measure_memory(args, device)))
        return {}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    print(f"Building cases on {device} ...", file=sys.stderr, flush=True)
    model_cases, _models = build_model_cases(args, device)
    conv = conv_cases(args, device)
    cases = model_cases + conv
    warm_up(cases, device, steps=1)
    print(f"Timing {len(cases)} cases x {args.repeats} repeats ...", file=sys.stderr, flush=True)
    run_interleaved(cases, args, device)
    del _models
    print("Data pipeline ...", file=sys.stderr, flush=True)
    data = data_section(args, device)
    memory: dict[str, Any] = {}
    if not args.no_memory:
        print("Peak memory (child process) ...", file=sys.stderr, flush=True)
        memory = memory_in_child(args) if device.type == "cpu" else measure_memory(args, device)
    result = report(model_cases, conv, data, memory, args, device)
    print_table(result)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nWrote {args.json}")
    return result


if __name__ == "__main__":
    main()
