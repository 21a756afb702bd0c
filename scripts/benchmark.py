"""How fast unet-train trains and predicts on this machine, against plain PyTorch and MONAI.

One run measures, with the cases interleaved and repeated (median and min-max reported):

- train and inference images/s of the project's UNet (``model=vanilla``) at each width, in the
  default settings of ``trainer=cpu`` (or ``trainer=gpu`` on CUDA) and in each precision, with
  channels-last on and off; on a CPU the default is ``channels_last: auto``, and the report gives the
  layout it chose for each phase (training step, inference forward) with the timings behind the choice;
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
import json
import sys
from pathlib import Path
from typing import Any

import torch
from bench.common import DEFAULT_ISBI
from bench.conv import conv_cases
from bench.data import data_section
from bench.memory import measure_memory, memory_in_child
from bench.models import build_model_cases
from bench.report import print_table, report
from bench.timing import run_interleaved, warm_up


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
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 model cases (slow where bf16 is emulated)")
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
