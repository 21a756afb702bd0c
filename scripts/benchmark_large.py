"""Peak memory and time of ``unet-predict`` on synthetic Zarr images of growing size (README "Large images").

For each ``--sizes`` N, a synthetic N x N uint8 Zarr image (EM-like stripes plus noise, 1024-pixel
chunks, written chunk by chunk) is predicted into an OME-Zarr store with a tiny checkpoint (the
quickstart recipe trained for one epoch at ``--base-channels``, depth ``--depth``). Each prediction
runs in a fresh subprocess, which reports its own peak RSS (``VmHWM``) and wall time; so does
``--whole`` for the in-memory path (TIFF in, TIFF out) on the sizes given there, for comparison.

    python scripts/benchmark_large.py --sizes 2048 8192 32768 --whole 2048 8192 --out large.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_checkpoint(folder: Path, base_channels: int, depth: int) -> Path:
    from hydra import compose, initialize_config_dir

    from unet_train.config import config_dir
    from unet_train.engine.fit import fit

    overrides = [
        "experiment=quickstart",
        "trainer=smoke",
        "trainer.max_epochs=1",
        f"model.base_channels={base_channels}",
        f"model.depth={depth}",
        "data.image_size=64",
        "data.patch_size=64",
        "data.num_train=4",
        "data.num_val=1",
        "data.num_test=1",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=overrides)
    fit(cfg, folder)
    return folder / "checkpoints" / "last.pt"


def synthetic_block(y0: int, x0: int, h: int, w: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    pattern = 128 + 60 * np.sin(yy / 9.0) * np.cos(xx / 13.0)
    noise = np.random.default_rng(seed).normal(0, 8, (h, w))
    return np.clip(pattern + noise, 0, 255).astype(np.uint8)


def make_input(path: Path, size: int, chunk: int = 1024) -> None:
    import zarr

    array = zarr.create_array(str(path), shape=(size, size), chunks=(chunk, chunk), dtype="uint8", overwrite=True)
    for i, y in enumerate(range(0, size, chunk)):
        for j, x in enumerate(range(0, size, chunk)):
            h, w = min(chunk, size - y), min(chunk, size - x)
            array[y : y + h, x : x + w] = synthetic_block(y, x, h, w, i * 1000 + j)


def child(args: list[str], report: Path, blocks: int | None) -> None:
    """Run the unet-predict console script in this process, then write its peak RSS and wall time.

    With ``blocks``, only the first ``blocks`` blocks of chunks are predicted: the others are reported
    as done by the store (the resume path skips them), so a huge input is planned, created and written
    at full size while only part of it is computed.
    """
    from unet_train.inference import large
    from unet_train.predict import main

    if blocks is not None:
        done_of_store = large.ZarrPrediction.done

        def done(self: large.ZarrPrediction) -> np.ndarray:
            marks = done_of_store(self)
            per = large.BLOCK_PIXELS // self.chunk
            skip = np.ones_like(marks)
            nx = -(-marks.shape[2] // per)
            for b in range(blocks):
                by, bx = divmod(b, nx)
                skip[:, by * per : (by + 1) * per, bx * per : (bx + 1) * per] = False
            return marks | skip

        large.ZarrPrediction.done = done  # type: ignore[method-assign]
    before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    sys.argv = ["unet-predict", *args]
    start = time.perf_counter()
    try:
        main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    wall = time.perf_counter() - start
    # VmHWM is this process's own peak; ru_maxrss may carry the RSS of the parent it was forked from.
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report.write_text(
        json.dumps(
            {
                "peak_rss_mib": round(peak, 1),
                "ru_maxrss_mib": round(maxrss, 1),
                "rss_before_mib": round(before, 1),
                "wall_s": round(wall, 1),
            }
        )
    )


def measure(args: list[str], work: Path, blocks: int | None = None) -> dict:
    report = work / "report.json"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(report),
        *(["--blocks", str(blocks)] if blocks else []),
        "--",
        *args,
    ]
    subprocess.run(cmd, check=True, cwd=work)
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[2048, 8192])
    parser.add_argument("--whole", type=int, nargs="*", default=[], help="sizes to run through the in-memory path")
    parser.add_argument("--base-channels", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--partial", type=int, nargs="*", default=[], help="sizes of which only --blocks are computed")
    parser.add_argument("--blocks", type=int, default=2, help="blocks of chunks computed for the --partial sizes")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child is not None:
        child(opts.rest, opts.child, opts.blocks if "--blocks" in sys.argv else None)
        return
    work = Path(tempfile.mkdtemp(prefix="unet-large-", dir=opts.workdir))
    results = []
    try:
        ckpt = make_checkpoint(work / "run", opts.base_channels, opts.depth)
        common = [
            f"ckpt={ckpt}",
            f"tile_size={opts.tile_size}",
            f"batch_size={opts.batch_size}",
            "progress=never",
            f"hydra.run.dir={work / 'logs'}",
        ]
        runs = [(size, None) for size in opts.sizes] + [(size, opts.blocks) for size in opts.partial]
        for size, blocks in runs:
            source = work / f"in_{size}.zarr"
            make_input(source, size)
            out = work / f"out_{size}.zarr"
            args = [*common, f"input={source}", f"output={out}", f"chunk_size={opts.chunk_size}"]
            row = measure(args, work, blocks)
            row.update(path="zarr", size=size, blocks_computed=blocks or "all")
            print(json.dumps(row), flush=True)
            results.append(row)
            shutil.rmtree(source)
            shutil.rmtree(out)
        for size in opts.whole:
            import tifffile

            source = work / f"in_{size}.tif"
            tifffile.imwrite(source, synthetic_block(0, 0, size, size, 0))
            row = measure([*common, f"input={source}", f"output={work / 'tiff_out'}"], work)
            row.update(path="in-memory", size=size)
            print(json.dumps(row), flush=True)
            results.append(row)
            source.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.node()}",
        "settings": vars(opts) | {"workdir": str(opts.workdir), "out": str(opts.out), "child": None},
        "results": results,
    }
    if opts.out:
        opts.out.write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
