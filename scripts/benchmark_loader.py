"""Training-loader throughput of data=folder on 16-bit against 8-bit images of the same size.

Writes synthetic fluorescence-like images (``unet_train.data.synthetic.make_fluorescence_image``)
as 16-bit TIFFs and, scaled to 8 bits, as 8-bit TIFFs, then iterates the ``data=folder``
training loader (its default augmentation, ``data.num_workers`` workers) in interleaved rounds:

- ``uint8``: the 8-bit folder under the default ``scale_linear`` (kept as uint8, / 255 per crop);
- ``uint16 percentile``: the 16-bit folder under ``data/normalize=percentile`` (normalised once on
  load, float32 in memory);
- ``uint16 scale_linear``: the 16-bit folder under ``scale_linear``.

Wall-clock images/s depend on what else the machine runs; the CPU time each item costs (one
process, ``time.process_time``, interleaved rounds too) does much less, so both are reported.
The target (issue 19): 16-bit images/s within 10 % of 8-bit. Example::

    python scripts/benchmark_loader.py --images 40 --height 520 --width 696 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from hydra import compose, initialize_config_dir

from unet_train.build import build_data, resolve_data_config
from unet_train.config import config_dir
from unet_train.data.sampling import set_loader_epoch
from unet_train.data.synthetic import make_fluorescence_image

CASES = {
    "uint8": ("u8", []),
    "uint16 percentile": ("u16", ["data/normalize=percentile"]),
    "uint16 scale_linear": ("u16", []),
}


def write_folders(root: Path, n: int, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    for name in ("u8", "u16"):
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir()
    for i in range(n):
        image, mask = make_fluorescence_image(rng, height, width, num_objects=30, radius=(8.0, 20.0))
        tifffile.imwrite(root / "u16" / "images" / f"{i:03d}.tif", image)
        scaled = np.clip((image.astype(np.float64) - 900.0) * (255.0 / 300.0), 0, 255).astype(np.uint8)
        tifffile.imwrite(root / "u8" / "images" / f"{i:03d}.tif", scaled)
        for name in ("u8", "u16"):
            tifffile.imwrite(root / name / "masks" / f"{i:03d}.tif", mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--height", type=int, default=520)
    parser.add_argument("--width", type=int, default=696)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--samples", type=int, default=400, help="crops per round (data.samples_per_epoch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        root = Path(tmp)
        write_folders(root, args.images, args.height, args.width)
        loaders, datasets, load_s = {}, {}, {}
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            for case, (folder, extra) in CASES.items():
                cfg = compose(
                    "train",
                    [
                        "data=folder",
                        f"data.root={root / folder}",
                        f"data.num_workers={args.workers}",
                        f"data.patch_size={args.patch_size}",
                        f"data.batch_size={args.batch_size}",
                        f"data.samples_per_epoch={args.samples}",
                        *extra,
                    ],
                )
                start = time.perf_counter()
                data = build_data(cfg.data)
                resolve_data_config(cfg, data)  # reads and normalises the training split once
                load_s[case] = time.perf_counter() - start
                loaders[case] = data.dataloader("train", seed=0)
                datasets[case] = data.dataset("train")
        speeds: dict[str, list[float]] = {case: [] for case in CASES}
        cpu: dict[str, list[float]] = {case: [] for case in CASES}
        for round_ in range(args.rounds + 1):  # round 0 starts the persistent workers: not counted
            for case, loader in loaders.items():
                set_loader_epoch(loader, round_)
                start = time.perf_counter()
                count = sum(len(batch["image"]) for batch in loader)
                if round_:
                    speeds[case].append(count / (time.perf_counter() - start))
                dataset, n = datasets[case], max(1, args.samples // 4)
                start = time.process_time()
                for i in range(n):  # the items a worker makes: augmented crop + tensor, per-item seeds
                    dataset[(i % len(dataset), round_ * n + i)]
                if round_:
                    cpu[case].append(n / (time.process_time() - start))

    base, cpu_base = statistics.median(speeds["uint8"]), statistics.median(cpu["uint8"])
    print(f"{args.images} images of {args.height}x{args.width}, {args.workers} workers, crops {args.patch_size}, "
          f"batch {args.batch_size}, {args.rounds} rounds of {args.samples} crops")  # fmt: skip
    print("| case | images/s (median) | min - max | vs uint8 | items / CPU-s | vs uint8 | read + normalise (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for case, samples in speeds.items():
        median = statistics.median(samples)
        per_cpu = statistics.median(cpu[case])
        rows.append({"case": case, "images_per_s": samples, "median": median, "ratio": median / base,
                     "items_per_cpu_s": cpu[case], "cpu_ratio": per_cpu / cpu_base,
                     "load_s": load_s[case]})  # fmt: skip
        print(f"| {case} | {median:.0f} | {min(samples):.0f} - {max(samples):.0f} | {median / base:.2f} | "
              f"{per_cpu:.0f} | {per_cpu / cpu_base:.2f} | {load_s[case]:.1f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
