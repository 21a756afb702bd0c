"""3D prediction: peak memory of the chunked OME-Zarr path against the volume size, and tiled speed/output.

``memory`` predicts synthetic uint8 Zarr volumes of ``--sizes`` voxels a side (written slab by slab, never
held whole) with a random 3D UNet (``--base-channels``, ``--depth``, batch norm with non-trivial
statistics) chunk by chunk into an OME-Zarr store, as ``unet-predict output=NAME.zarr`` does
(:func:`~unet_train.volume_predict.predict_volume_store`'s pieces: ``volume_reader``, ``TiledPredictor``,
``predict_volume_to_zarr``), each size in a fresh subprocess. It reports the peak RSS
(the process's ``VmHWM``; not ``ru_maxrss``, which a process started by ``subprocess`` inherits from its
parent's peak: writing the 1024^3 volume raised it to 1877 MiB for a prediction that peaked at 596), the RSS
before the prediction (model built, store opened, one warm-up tile run), seconds and tiles/s. Flat memory
means the peak does not grow with the volume:

    OMP_NUM_THREADS=2 python scripts/benchmark_predict3d.py memory --sizes 64 256
    # 1024^3 (1 GiB of uint8 input, ~2 GiB of float16 output on disk): on a GPU machine with 4 GB free disk
    python scripts/benchmark_predict3d.py memory --sizes 128 1024 --tile 128 --chunk 128 --device cuda

``compare`` times ``TiledPredictor.predict`` on one in-memory volume against a hand-written sliding window
with Gaussian blending (the same tile corners, tile, overlap, sigma = 0.125 x tile and batch of tiles, no
batch-norm folding, no mirrored margin: what a user would write, or MONAI's ``sliding_window_inference``
with ``mode="gaussian"`` does with its own corner placement), interleaved over ``--repeats``, and reports
the largest difference of their outputs:

    OMP_NUM_THREADS=2 python scripts/benchmark_predict3d.py compare --size 96 --tile 48 --repeats 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def build_model(base_channels: int, depth: int) -> torch.nn.Module:
    """A random 3D UNet (seeded) whose batch norms are not the identity, so folding them is measured, and whose
    probabilities on noise spread over (0, 1)."""
    from unet_train.models import UNet

    torch.manual_seed(0)
    model = UNet(1, 1, base_channels=base_channels, depth=depth, spatial_dims=3).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():  # logits of spread ~1 on noise, so that outputs compared are not all 0.5
        logits = model(torch.rand(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(2)))
        head: Any = model.head
        head.weight /= logits.std()
        head.bias.copy_((head.bias - logits.mean()) / logits.std())
    return model


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """This process's peak RSS: ``VmHWM``, the high-water mark of its own memory map since its ``exec``.

    ``ru_maxrss`` would be wrong here: Linux carries a parent's peak over into a child started by fork and exec
    (``subprocess.run``), so a child of the parent that wrote a large volume reports the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: KiB on Linux, bytes on macOS


def write_volume(path: Path, size: int, slab: int = 64) -> None:
    """A ``size``^3 uint8 Zarr array of smooth blobs plus noise, written ``slab`` planes at a time."""
    import zarr

    array = zarr.create_array(str(path), shape=(size,) * 3, chunks=(min(64, size),) * 3, dtype="uint8")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for z0 in range(0, size, slab):
        z = np.arange(z0, min(z0 + slab, size))[:, None, None]
        blobs = 100 + 60 * np.sin(z / 9.0) * np.cos(yy / 11.0) * np.sin(xx / 7.0)
        array[z0 : z0 + len(z)] = np.clip(blobs + rng.normal(0, 20, blobs.shape), 0, 255).astype(np.uint8)


def memory_case(args: argparse.Namespace) -> dict[str, Any]:
    """One volume (``--source``, written by the parent) predicted chunk by chunk into a store, in this fresh
    process: its peak RSS is the prediction's alone."""
    from omegaconf import OmegaConf

    from unet_train.engine.distributed import Distributed
    from unet_train.inference import TiledPredictor
    from unet_train.inference.large import predict_volume_to_zarr
    from unet_train.inference.volumes import open_volume
    from unet_train.volume_predict import volume_reader

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        volume = open_volume(args.source, None, "zyx", 1)
        model = build_model(args.base_channels, args.depth)
        predictor = TiledPredictor(
            model,
            tile_size=args.tile,
            overlap=args.overlap,
            batch_size=args.batch,
            device=args.device,
            channels_last=False,
        )
        read = volume_reader(volume, [OmegaConf.create({"in_channels": 1, "normalize": {"scheme": "zscore"}})])
        predictor.forward_tiles(torch.rand(1, 1, *(args.tile,) * 3))  # warm-up: one tile
        before = rss_mib()
        start = time.perf_counter()
        chunk = (min(args.chunk, args.size),) * 3
        store = Path(tmp) / "out.zarr"
        predict_volume_to_zarr(predictor, volume, read, store, 1, chunk, "float16", 0.5, {}, Distributed())
        seconds = time.perf_counter() - start
        peak = peak_rss_mib()
        tiles = predictor.num_tiles(*(args.size,) * 3)
    return {
        "size": args.size,
        "voxels": args.size**3,
        "seconds": round(seconds, 2),
        "tiles": tiles,
        "tiles_per_s": round(tiles / seconds, 2),
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
    }


def reference_sliding_window(
    model: torch.nn.Module, image: torch.Tensor, tile: int, overlap: float, batch: int, align: int
) -> torch.Tensor:
    """A plain sliding window over ``image`` ``(C, D, H, W)``: Gaussian-weighted sum of the tiles' sigmoid,
    divided by the summed weights; the corners are those of :func:`~unet_train.inference.tiling.tile_starts`."""
    from unet_train.inference.tiling import gaussian_weights_nd, tile_starts

    shape = image.shape[1:]
    starts = [tile_starts(n, min(tile, n), overlap, align) for n in shape]
    size = [min(tile, n) for n in shape]
    weight = gaussian_weights_nd(size)
    out, weight_sum = torch.zeros(1, *shape), torch.zeros(shape)
    corners = list(itertools.product(*starts))
    with torch.inference_mode():
        for i in range(0, len(corners), batch):
            group = corners[i : i + batch]
            windows = [tuple(slice(c, c + s) for c, s in zip(corner, size)) for corner in group]
            tiles = torch.stack([image[(slice(None), *w)] for w in windows])
            prob = torch.sigmoid(model(tiles))
            for w, p in zip(windows, prob):
                out[(slice(None), *w)] += p * weight
                weight_sum[w] += weight
    return out / weight_sum


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Ours against the plain sliding window on one volume, interleaved; medians and the largest difference."""
    from unet_train.inference import TiledPredictor

    model = build_model(args.base_channels, args.depth)
    image = torch.rand(1, *(args.size,) * 3, generator=torch.Generator().manual_seed(1))
    ours = TiledPredictor(model, tile_size=args.tile, overlap=args.overlap, batch_size=args.batch, margin=0)
    cases = {
        "unet-train": lambda: ours.predict(image),
        "plain sliding window": lambda: reference_sliding_window(
            model, image, args.tile, args.overlap, args.batch, 2**args.depth
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    outputs: dict[str, torch.Tensor] = {}
    for r in range(args.repeats):
        for name in list(cases)[r % 2 :] + list(cases)[: r % 2]:  # alternate which runs first
            start = time.perf_counter()
            outputs[name] = cases[name]()
            times[name].append(time.perf_counter() - start)
    diff = float((outputs["unet-train"] - outputs["plain sliding window"]).abs().max())
    medians = {name: round(statistics.median(t), 3) for name, t in times.items()}
    return {
        "size": args.size,
        "tile": args.tile,
        "median_s": medians,
        "max_abs_difference": diff,
        "tiles": ours.num_tiles(*(args.size,) * 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["memory", "compare", "_case"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--base-channels", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", type=Path, default=None, help=argparse.SUPPRESS)  # _case: the volume
    parser.add_argument("--tmp", default=None, help="folder for the temporary volumes (default: the system's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.mode == "_case":
        print(json.dumps(memory_case(args)))
        return
    if args.mode == "compare":
        results: Any = compare(args)
        print(json.dumps(results, indent=1))
    else:
        results = []
        for size in args.sizes:  # each size in a fresh process: one size's peak cannot hide another's
            with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                source = Path(tmp) / "in.zarr"
                write_volume(source, size)  # here, so the writing's memory is not the prediction's
                argv = [sys.executable, __file__, "_case", "--size", str(size), "--source", str(source)]
                for key in ("tile", "chunk", "overlap", "batch", "base_channels", "depth", "device"):
                    argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
                argv += ["--tmp", args.tmp] if args.tmp else []
                out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
