"""A page of plain PyTorch 3D UNet, and its training step timed side by side with unet-train's 3D UNet.

The plain network is what one writes by hand: ``2x[conv3x3x3-BN-ReLU]`` per level, 2x2x2 max-pool,
2x2x2 transposed conv, concatenated skips, a 1x1x1 head. unet-train's UNet with ``spatial_dims=3``,
batch norm, transposed upsampling and concatenated skips has the same layers and parameter count, plus
its pad-to-a-multiple gather and crop; it is timed in NCDHW order and in ``channels_last_3d`` (what
``trainer.channels_last: auto`` takes where that measures faster). Each takes a forward, a BCE-with-logits
loss, a backward and an Adam step per round; rounds alternate (the order flips every round) so a slow phase
of a shared machine hits both, and the medians are compared.

    OMP_NUM_THREADS=1 python scripts/bench/plain3d.py --base 8 --depth 3 --size 32 64 64 --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class PlainUNet3D(nn.Module):
    """3D UNet (Cicek et al. 2016 layout, with BN), widths ``base * 2**level``; inputs a multiple of ``2**depth``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 8, depth: int = 3) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.downs = nn.ModuleList(block(c_in, c) for c_in, c in zip([in_channels, *widths[:-1]], widths))
        self.pool = nn.MaxPool3d(2)
        self.ups = nn.ModuleList(nn.ConvTranspose3d(2 * w, w, 2, stride=2) for w in reversed(widths[:-1]))
        self.decs = nn.ModuleList(block(2 * w, w) for w in reversed(widths[:-1]))
        self.out = nn.Conv3d(base, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.downs):
            x = down(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decs):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.out(x)


def train_step(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    """One forward + BCE-with-logits + backward + Adam step of ``model`` on the fixed batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    model.train()

    def step() -> None:
        loss = criterion(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=3, default=[32, 64, 64], metavar=("D", "H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2, help="training steps per timed round")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from unet_train.models import UNet

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, *args.size, generator=generator).to(device)
    target = (torch.rand(args.batch, 1, *args.size, generator=generator) > 0.5).float().to(device)
    torch.manual_seed(0)
    models = {
        "plain": PlainUNet3D(base=args.base, depth=args.depth),
        "unet-train": UNet(base_channels=args.base, depth=args.depth, spatial_dims=3),
        # what trainer.channels_last=auto takes where it measures faster (engine/autotune.py)
        "unet-train-cl": UNet(base_channels=args.base, depth=args.depth, spatial_dims=3),
    }
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    layout = {"unet-train-cl": torch.channels_last_3d}
    steps = {
        name: train_step(
            m.to(device).to(memory_format=layout.get(name, torch.contiguous_format)),  # type: ignore[call-overload]
            images.contiguous(memory_format=layout.get(name, torch.contiguous_format)),
            target,
        )
        for name, m in models.items()
    }
    for step in steps.values():  # warm-up: allocator, oneDNN primitive caches
        step()
        step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.rounds):
        order = list(steps) if round_ % 2 == 0 else list(reversed(steps))
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name].append((time.perf_counter() - start) / args.steps)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": [args.batch, 1, *args.size],
        "base": args.base,
        "depth": args.depth,
        "params": params,
        "median_step_s": {name: round(m, 4) for name, m in medians.items()},
        "samples_s": {name: [round(x, 4) for x in s] for name, s in seconds.items()},
        "plain_over_unet_train": round(medians["plain"] / medians["unet-train"], 3),
        "plain_over_unet_train_channels_last": round(medians["plain"] / medians["unet-train-cl"], 3),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
