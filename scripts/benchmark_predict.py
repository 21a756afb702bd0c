"""Time unet-predict's tiling against MONAI's ``sliding_window_inference`` on one large image.

Both run the same model (the vanilla UNet, ``--base-channels`` 16, depth 4, batch norm, random
weights with fixed seed), on the same ``--size`` x ``--size`` grey image, with 256-pixel tiles,
overlap 0.25, Gaussian blending (sigma 0.125 x tile) and ``--batch`` tiles per forward pass, under
``torch.inference_mode``. MONAI gets the model as a user would pass it (``sigmoid(model(x))`` as
the predictor); ours is ``TiledPredictor`` with its defaults (mirrored margin, batch norm folded
into the convolutions, channels-last).

Every measurement runs in a fresh subprocess, and the cases are interleaved (ours, MONAI, MONAI,
ours, ...) so that a change in the machine's load hits both. Peak memory is the subprocess's
``resource.getrusage(RUSAGE_SELF).ru_maxrss``: torch allocates outside Python's allocator, so
tracemalloc would not see it, and a fresh process per case keeps one case's peak from hiding
another's. The RSS just before the call (model built, image made, one warm-up tile run) is
reported too, so ``peak - before`` is what the tiling itself added.

MONAI is not a dependency of unet-train; install it to run this: ``pip install monai``.

    python scripts/benchmark_predict.py --repeats 3 --out benchmark_predict.json

``--folder DIR`` instead measures images/s on a folder of (small) images, in one process, with the same
model (``--ckpt``, or the random vanilla UNet above): unet-predict's forward path (``TiledPredictor`` with
``tile_size=null``, the tiles chosen from the memory budget, batch norms folded), a plain whole-image
forward (``sigmoid(model(image))``) and the former default of 256-pixel tiles, interleaved image by image
(the order of the cases rotates), in rounds, reporting the median images/s per case and the load average around the run:

    OMP_NUM_THREADS=1 python scripts/benchmark_predict.py --folder ../shared/data/usgra-seg/test/images --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TILE, OVERLAP = 256, 0.25


def build_model(base_channels: int) -> torch.nn.Module:
    from unet_train.models import UNet

    torch.manual_seed(0)
    model = UNet(in_channels=1, out_channels=1, base_channels=base_channels, depth=4).eval()
    # Non-trivial batch-norm statistics, so folding them is not a no-op.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


def current_rss_mib() -> float:
    """Resident set size now (Linux /proc), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def worker(case: str, size: int, base_channels: int, batch: int) -> dict:
    """Run one case once in this (fresh) process and measure it."""
    model = build_model(base_channels)
    image = torch.rand(1, size, size, generator=torch.Generator().manual_seed(1))
    if case == "ours":
        from unet_train.inference import TiledPredictor

        predictor = TiledPredictor(model, tile_size=TILE, overlap=OVERLAP, batch_size=batch)
        predictor.predict(image[:, :TILE, :TILE])  # warm-up: one tile

        def call() -> torch.Tensor:
            return predictor.predict(image)

        tiles = predictor.num_tiles(size, size)
    else:
        from monai.inferers import sliding_window_inference

        def predictor_fn(x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(model(x))

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return sliding_window_inference(
                    image[None], (TILE, TILE), batch, predictor_fn, overlap=OVERLAP, mode="gaussian"
                )[0]

        with torch.inference_mode():
            predictor_fn(image[None, :, :TILE, :TILE])  # warm-up: one tile
        tiles = None
    before = current_rss_mib()
    cpu_start = time.process_time()
    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "case": case,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mib": peak,
        "rss_before_mib": before,
        "tiles": tiles,
        "mean_prob": float(out.mean()),
    }


def folder_model(args: argparse.Namespace) -> tuple[torch.nn.Module, int, Any]:
    """The model to time, its input channels and its ``data.normalize`` (``--ckpt``, or the random UNet)."""
    if not args.ckpt:
        return build_model(args.base_channels), 1, None
    from unet_train.predict import load_model

    model, stored = load_model(args.ckpt)
    return model, int(stored.data.in_channels), stored.data.get("normalize")


def folder_cases(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Callable[[torch.Tensor], Any]]:
    """The forward paths compared on a folder, each image ``(C, H, W)`` -> probabilities ``(K, H, W)``."""
    from unet_train.inference import TiledPredictor

    auto = TiledPredictor(model, tile_size=None, channels_last=args.channels_last)
    tiled = TiledPredictor(model, tile_size=TILE, overlap=OVERLAP, batch_size=args.batch, channels_last=False)

    def plain(image: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.sigmoid(model(image[None]))[0]

    return {"unet-predict": auto.predict, "plain": plain, "tiles 256": tiled.predict}


def folder_benchmark(args: argparse.Namespace) -> dict:
    """Images/s of each forward path over the folder's images, interleaved rounds, medians."""
    from unet_train.data.folder import IMAGE_SUFFIXES, read_image
    from unet_train.predict import to_input

    model, in_channels, normalize = folder_model(args)
    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    images = [to_input(read_image(path), in_channels, path.name, normalize) for path in files]
    cases = folder_cases(model, args)
    for run in cases.values():  # warm-up: the first image, and the memory probe of unet-predict's path
        run(images[0])
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for round_ in range(args.rounds):
        # Interleaved image by image (the order of the cases rotating), so a change in load hits every case.
        seconds = dict.fromkeys(names, 0.0)
        for index, image in enumerate(images):
            shift = (round_ + index) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                cases[name](image)
                seconds[name] += time.perf_counter() - start
        for name in names:
            rates[name].append(len(images) / seconds[name])
        print(f"round {round_}: " + ", ".join(f"{n} {rates[n][-1]:.2f} img/s" for n in names))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    shapes = sorted({tuple(i.shape[1:]) for i in images})
    return {
        "folder": str(args.folder),
        "images": len(images),
        "sizes": [list(s) for s in shapes[:5]] + ([["..."]] if len(shapes) > 5 else []),
        "model": args.ckpt or f"vanilla UNet, base_channels={args.base_channels}, depth=4, random weights",
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "images_per_s": {name: {"median": medians[name], "runs": rates[name]} for name in names},
        "ratio_predict_over_plain": medians["unet-predict"] / medians["plain"],
        "ratio_tiles256_over_plain": medians["tiles 256"] / medians["plain"],
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
    }


def summarize(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("--worker", choices=("ours", "monai"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help="images/s on this folder's images instead (see above)")
    parser.add_argument("--ckpt", help="--folder: the checkpoint to run (default: the random vanilla UNet)")
    parser.add_argument("--limit", type=int, default=None, help="--folder: the first N images (by name)")
    parser.add_argument("--rounds", type=int, default=5, help="--folder: interleaved rounds")
    parser.add_argument("--channels-last", action="store_true", help="--folder: unet-predict's path channels-last")
    args = parser.parse_args()

    if args.folder:
        report = folder_benchmark(args)
        print(json.dumps({k: v for k, v in report.items() if k != "images_per_s"}, indent=2))
        for name, rate in report["images_per_s"].items():
            print(f"{name:13s} median {rate['median']:.2f} images/s")
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        return

    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.base_channels, args.batch)))
        return
    try:
        import monai
    except ImportError:
        sys.exit("MONAI is not installed; it is not a dependency of unet-train. Run: pip install monai")

    runs: dict[str, list[dict]] = {"ours": [], "monai": []}
    for repeat in range(args.repeats):
        # Alternate which case goes first, so drifting load does not favour one.
        order = ("ours", "monai") if repeat % 2 == 0 else ("monai", "ours")
        for case in order:
            command = [sys.executable, __file__, "--worker", case, "--size", str(args.size)]
            command += ["--base-channels", str(args.base_channels), "--batch", str(args.batch)]
            result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
            run = json.loads(result.stdout.strip().splitlines()[-1])
            runs[case].append(run)
            print(f"repeat {repeat} {case:5s} {run['seconds']:7.2f} s  peak RSS {run['peak_rss_mib']:7.0f} MiB")

    import monai

    report = {
        "image": [args.size, args.size],
        "model": f"vanilla UNet, base_channels={args.base_channels}, depth=4, batch norm",
        "tile": TILE,
        "overlap": OVERLAP,
        "blending": "gaussian, sigma_scale=0.125",
        "tile_batch": args.batch,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cases": {},
    }
    for case, case_runs in runs.items():
        report["cases"][case] = {
            "seconds": summarize(case_runs, "seconds"),
            "cpu_seconds": summarize(case_runs, "cpu_seconds"),
            "peak_rss_mib": summarize(case_runs, "peak_rss_mib"),
            "added_rss_mib": summarize([{"v": r["peak_rss_mib"] - r["rss_before_mib"]} for r in case_runs], "v"),
            "runs": case_runs,
        }
    ours, theirs = report["cases"]["ours"], report["cases"]["monai"]
    report["time_ratio_ours_over_monai"] = ours["seconds"]["median"] / theirs["seconds"]["median"]
    report["cpu_time_ratio_ours_over_monai"] = ours["cpu_seconds"]["median"] / theirs["cpu_seconds"]["median"]
    report["peak_ratio_ours_over_monai"] = ours["peak_rss_mib"]["median"] / theirs["peak_rss_mib"]["median"]
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}, indent=2))
    for case in ("ours", "monai"):
        c = report["cases"][case]
        print(
            f"{case:5s} time median {c['seconds']['median']:.2f} s (min {c['seconds']['min']:.2f}, "
            f"max {c['seconds']['max']:.2f}; CPU {c['cpu_seconds']['median']:.2f} s); "
            f"peak RSS median {c['peak_rss_mib']['median']:.0f} MiB "
            f"(+{c['added_rss_mib']['median']:.0f} MiB over the RSS before the call)"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
