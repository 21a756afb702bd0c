"""Peak memory per model case: in a child process on the CPU (peak resident set), from the allocator on CUDA."""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.common import sync
from bench.models import model_variants

SCRIPT = Path(__file__).resolve().parents[1] / "benchmark.py"  # re-run as ``--memory-probe`` in the child


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
                    # The peak is reset to the resident set now, which can sit a few KiB below ``base`` when the
                    # build freed more than it kept (precision=auto's measurement runs on copies): nothing above it.
                    out[f"{name}/{width}/{mode}"] = None if peak is None else max(0.0, (peak - base) / 1024)
                else:
                    out[f"{name}/{width}/{mode}"] = None
                del model, train_step, infer_step, step
    return out


def memory_in_child(args: argparse.Namespace) -> dict[str, float | None]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    argv = [sys.executable, str(SCRIPT), "--memory-probe", *args.passthrough]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return {}
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Report
