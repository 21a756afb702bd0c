"""Peak memory and time of ``unet-predict`` on synthetic Zarr images of growing size (README "Large images").

For each ``--sizes`` N, a synthetic N x N uint8 Zarr image (EM-like stripes plus noise, 1024-pixel
chunks, written chunk by chunk) is predicted into an OME-Zarr store with a tiny checkpoint (the
quickstart recipe trained for one epoch at ``--base-channels``, depth ``--depth``). Each prediction
runs in a fresh subprocess, which reports its own peak RSS (``VmHWM``) and wall time; so does
``--whole`` for the in-memory path (TIFF in, TIFF out) on the sizes given there, for comparison.

    python scripts/benchmark_large.py --sizes 2048 8192 32768 --whole 2048 8192 --out large.json

``--resume-check N`` (one of ``--sizes``) keeps that size's one-process store, then predicts the
same input again with ``torchrun --nproc_per_node=2`` (gloo, one thread per rank), kills the whole
process group with SIGKILL after ``--kill-after`` seconds, starts the same command again (it
resumes from the store's ``done`` marks) and compares the two stores array by array, a band of
chunks at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_checkpoint(folder: Path, base_channels: int, depth: int) -> Path:
    from bench.common import compose

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
    cfg = compose(overrides)
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


def same_arrays(a_path: Path, b_path: Path) -> dict[str, bool]:
    """Array-by-array equality of two prediction stores, read in bands of 4096 rows (bounded memory)."""
    import zarr

    a: Any = zarr.open_group(str(a_path), mode="r")
    b: Any = zarr.open_group(str(b_path), mode="r")
    out = {}
    for key in ("0", "labels/mask/0", "done"):
        x, y = a[key], b[key]
        same = x.shape == y.shape and x.dtype == y.dtype
        band = 4096 if key != "done" else max(x.shape[0], 1)
        for start in range(0, x.shape[0], band):
            same = same and bool(np.array_equal(x[start : start + band], y[start : start + band]))
        out[key] = same
    return out


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def state_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def resume_check(args: list[str], one: Path, work: Path, kill_after: float) -> dict:
    """Two gloo ranks, SIGKILLed after ``kill_after`` s, then restarted; their store against ``one``."""
    import zarr

    out = work / "two_ranks.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29761",
           "-m", "unet_train.predict", *args, f"output={out}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    first = subprocess.Popen(cmd, cwd=work, env=env)
    try:
        first.wait(timeout=kill_after)
        raise SystemExit(f"the two-rank run ended before the kill at {kill_after:g} s; raise --kill-after")
    except subprocess.TimeoutExpired:
        # torchrun starts its workers in sessions of their own: kill them all by ancestry, at once.
        victims = [first.pid, *descendants(first.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):  # it ended between the listing and the kill
                os.kill(pid, signal.SIGKILL)
        first.wait()
        time.sleep(1.0)
        alive = [pid for pid in victims if Path(f"/proc/{pid}").exists() and "Z" not in state_of(pid)]
        if alive:
            raise SystemExit(f"processes {alive} survived the kill") from None
    store: Any = zarr.open_group(str(out), mode="r")
    done = store["done"][...]
    killed_at = {"processes_killed": len(victims), "chunks_done_at_kill": int(done.sum()), "chunks": int(done.size)}
    resumed = time.perf_counter()
    subprocess.run(cmd, cwd=work, env=env, check=True)
    end = time.perf_counter()
    return {
        "path": "2 gloo ranks, killed and resumed",
        "killed_after_s": kill_after,
        **killed_at,
        "resumed_run_s": round(end - resumed, 1),
        "total_s": round(end - start, 1),
        "equal_to_one_process": same_arrays(one, out),
    }


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
    parser.add_argument("--resume-check", type=int, default=None, help="a size of --sizes: 2 ranks, kill, resume")
    parser.add_argument("--kill-after", type=float, default=120.0, help="seconds before the two-rank run is killed")
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
            if size == opts.resume_check and blocks is None:
                check = resume_check([a for a in args if not a.startswith("output=")], out, work, opts.kill_after)
                check.update(size=size)
                print(json.dumps(check), flush=True)
                results.append(check)
                shutil.rmtree(work / "two_ranks.zarr")
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
