"""The convolution ceiling: a large 3x3 convolution's throughput, which the model's FLOP rate is compared with."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from bench.common import Case, bf16_available


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
