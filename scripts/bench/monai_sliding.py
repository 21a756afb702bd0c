"""3D tiled prediction against MONAI's ``sliding_window_inference``: the same model, volume, tile, overlap and
blending; the largest difference of the outputs and the wall time of each, interleaved, medians over repeats.

MONAI is not a dependency of unet-train (CI does not install it): ``pip install --no-deps monai`` into a
virtual environment that already has torch and numpy (monai 1.6 needs nothing else for this). Run from the
repository root::

    OMP_NUM_THREADS=2 python scripts/bench/monai_sliding.py --shapes 64x192x192 96x256x256 --tile 64 \\
        --overlaps 0.25 0.5 --modes gaussian constant --threads 1 2 --repeats 3 --out monai3d.json

The model is the project's 3D UNet (``--base-channels``, ``--depth``; batch norms given non-trivial running
statistics, so the project's batch-norm folding is part of what is timed), random weights, seeded; the volume
is seeded noise plus smooth blobs. Both sides blend per-tile sigmoid probabilities with ``--batch`` tiles per
forward pass under ``torch.inference_mode``. unet-train's :class:`~unet_train.inference.TiledPredictor` runs
with ``margin=0`` (no mirrored border; MONAI pads nothing when the volume is larger than the tile) and its
defaults otherwise (batch norms folded, tiles channels-last: ``--channels-last``). MONAI gets the model as it
is (NCDHW); ``--monai-channels-last`` also times it with the model and tiles in channels-last order.

Blending modes:

- ``gaussian``: MONAI is given unet-train's own Gaussian (sigma 0.125 x tile, floored at 1e-6) as
  ``roi_weight_map``, so both blend with the same weights. MONAI's own ``mode="gaussian"`` map has the same
  sigma but is floored at 1e-3 (``compute_importance_map``: ``max(min, 1e-3)``), which weighs the far corners
  of tiles 1000x more than unet-train does; that output is compared once too (``difference_monai_own_map``).
- ``constant``: every tile weighs 1 (MONAI's default). unet-train has no such option; its tiler is run with its
  cached weight set to ones (``_weights``, a measurement-only seam), which times the same code path.

Tile corners: unet-train spreads its tiles evenly between the first and the last start on the model's pooling
grid (:func:`~unet_train.inference.tiling.tile_starts`); MONAI steps by ``int(tile * (1 - overlap))`` and moves
the last tile back to end at the border. Where the two lists differ (reported per axis), the outputs differ by
more than rounding wherever a voxel is covered by a tile that the other side places elsewhere; the script
reports per axis the index ranges covered by other tiles, the share of voxels they make and the largest
difference over the voxels that both sides cover with the same tiles (rounding only).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from unet_train.engine.runtime import to_channels_last
from unet_train.inference import TiledPredictor
from unet_train.inference.tiling import gaussian_weights_nd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmark_predict3d import build_model  # scripts/ is not a package


def monai_starts(length: int, tile: int, overlap: float) -> list[int]:
    """MONAI's tile starts along one axis (``_get_scan_interval`` and ``dense_patch_slices``, written out)."""
    if length <= tile:
        return [0]
    step = max(int(tile * (1 - overlap)), 1)
    count = next(d for d in range(length) if d * step + tile >= length) + 1
    return [min(i * step, length - tile) for i in range(count)]


def make_volume(shape: tuple[int, ...]) -> torch.Tensor:
    """A ``(1, D, H, W)`` float32 volume in [0, 1]: smooth blobs plus seeded noise."""
    z, y, x = (torch.arange(n, dtype=torch.float32) for n in shape)
    blobs = 0.5 + 0.3 * torch.sin(z[:, None, None] / 9) * torch.cos(y[None, :, None] / 11) * torch.sin(x / 7)
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    return (0.8 * blobs + 0.2 * noise)[None]


def covering(starts: list[int], tile: int, length: int) -> list[tuple[int, ...]]:
    """Per index along one axis, the starts of the tiles that cover it."""
    return [tuple(s for s in starts if s <= i < s + tile) for i in range(length)]


def where_corners_differ(
    diff: torch.Tensor, ours: list[list[int]], theirs: list[list[int]], tiles: tuple[int, ...], tol: float
) -> dict[str, Any]:
    """Split the voxels by whether the same tiles cover them on both sides (on every axis) or not.

    Where they do, the outputs should agree to rounding (``max_where_same_tiles``); elsewhere a voxel blends
    tiles placed differently (with other context, other weights). Per axis: the index ranges covered by other
    tiles, the share of voxels concerned and of voxels differing by more than ``tol``.
    """
    same = torch.ones(diff.shape, dtype=torch.bool)
    ranges: dict[str, list[list[int]]] = {}
    for axis, (mine, other, tile, length) in enumerate(zip(ours, theirs, tiles, diff.shape)):
        equal = torch.tensor([a == b for a, b in zip(covering(mine, tile, length), covering(other, tile, length))])
        shape = [1, 1, 1]
        shape[axis] = length
        same &= equal.view(shape)
        runs, start = [], None
        for i, e in enumerate([*equal.tolist(), True]):
            if not e and start is None:
                start = i
            elif e and start is not None:
                runs.append([start, i - 1])
                start = None
        ranges["zyx"[axis]] = runs
    return {
        "other_tiles_along": ranges,  # index ranges where the two sides' covering tiles differ
        "share_covered_by_other_tiles": round(float((~same).float().mean()), 4),
        "share_over_tol": round(float((diff > tol).float().mean()), 4),
        "max_where_same_tiles": float(diff[same].max()) if same.any() else None,
    }


def run_case(model: torch.nn.Module, shape: tuple[int, ...], overlap: float, mode: str, args: argparse.Namespace):
    from monai.inferers import sliding_window_inference

    image = make_volume(shape)
    tile = (args.tile,) * 3
    ours = TiledPredictor(
        model, tile_size=args.tile, overlap=overlap, batch_size=args.batch, margin=0, channels_last=args.channels_last
    )
    tiles, our_starts = ours.grid_nd(shape)
    assert tiles == tuple(min(t, n) for t, n in zip(tile, shape)), (tiles, shape)
    if mode == "constant":
        ours._weights[tiles] = torch.ones(tiles)  # measurement-only: unet-train has no constant blending option
        weight_map = None
    else:
        weight_map = gaussian_weights_nd(tiles)

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(x))

    def monai(weights: torch.Tensor | None, monai_mode: str, predictor: Any = probabilities) -> torch.Tensor:
        with torch.inference_mode():
            out = sliding_window_inference(
                image[None], tile, args.batch, predictor, overlap=overlap, mode=monai_mode, roi_weight_map=weights
            )
        return out[0]

    cases = {
        "unet-train": lambda: ours.predict(image),
        "monai": lambda: monai(weight_map, mode),
    }
    if args.monai_channels_last:  # what a MONAI user who knows the layout could do: the same model, channels-last
        fast = to_channels_last(copy.deepcopy(model))

        def fast_probabilities(x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(fast(x.contiguous(memory_format=torch.channels_last_3d)))

        cases["monai channels-last"] = lambda: monai(weight_map, mode, fast_probabilities)
    warm = torch.rand(args.batch, 1, *tiles)  # one full batch each: one-time kernel choices stay out of the times
    ours.forward_tiles(warm)
    with torch.inference_mode():
        probabilities(warm)
        if args.monai_channels_last:
            fast_probabilities(warm)
    times: dict[str, list[float]] = {name: [] for name in cases}
    outputs: dict[str, torch.Tensor] = {}
    for repeat in range(args.repeats):
        order = list(cases) if repeat % 2 == 0 else list(cases)[::-1]  # alternate the order
        for name in order:
            start = time.perf_counter()
            outputs[name] = cases[name]()
            times[name].append(time.perf_counter() - start)
    diff = (outputs["unet-train"] - outputs["monai"]).abs()[0]
    if args.monai_channels_last:
        assert float((outputs["monai channels-last"] - outputs["monai"]).abs().max()) < 1e-5
    theirs = [monai_starts(n, t, overlap) for n, t in zip(shape, tiles)]
    result: dict[str, Any] = {
        "shape": list(shape),
        "tile": args.tile,
        "overlap": overlap,
        "mode": mode,
        "threads": torch.get_num_threads(),
        "tiles": ours.num_tiles(*shape),
        "same_corners": our_starts == theirs,
        "median_s": {name: round(statistics.median(t), 3) for name, t in times.items()},
        "all_s": {name: [round(s, 3) for s in t] for name, t in times.items()},
        "max_abs_difference": float(diff.max()),
    }
    result["ratio"] = round(result["median_s"]["unet-train"] / result["median_s"]["monai"], 3)
    if our_starts != theirs:
        result["corners"] = {"unet-train": our_starts, "monai": theirs}
        result["where_different"] = where_corners_differ(diff, our_starts, theirs, tiles, 1e-5)
    if mode == "gaussian":  # MONAI's own map (floored at 1e-3) against unet-train's default blending
        own = (outputs["unet-train"] - monai(None, "gaussian")).abs()[0]
        result["difference_monai_own_map"] = float(own.max())
        result["share_over_1e-5_monai_own_map"] = round(float((own > 1e-5).float().mean()), 4)
    return result


def parse_shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in text.lower().split("x"))
    if len(shape) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: write a volume shape as DxHxW, e.g. 64x192x192")
    return shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(64, 192, 192), (96, 256, 256)])
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--modes", nargs="+", choices=["gaussian", "constant"], default=["gaussian", "constant"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--channels-last", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                        help="unet-train's tiles in channels-last order (true/false; default true, what "
                        "channels_last=auto measured faster here)")  # fmt: skip
    parser.add_argument("--monai-channels-last", action="store_true",
                        help="also time MONAI with the model and tiles in channels-last order")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    try:
        import monai
    except ImportError:
        sys.exit("MONAI is not installed; it is not a dependency of unet-train. Run: pip install --no-deps monai")

    model = build_model(args.base_channels, args.depth)
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape in args.shapes:
            for overlap in args.overlaps:
                for mode in args.modes:
                    results.append(run_case(model, shape, overlap, mode, args))
                    print(json.dumps(results[-1]), flush=True)
    if args.out:
        machine = {
            "cpu": platform.processor() or platform.machine(),
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
            "monai": monai.__version__,
        }
        args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
