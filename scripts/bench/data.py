"""The data path: the ISBI recipe's loader with its workers; augmentation in one process, albumentations vs device."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bench.common import compose, summary, sync


def forever(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def data_section(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The ISBI recipe's loader with its configured workers, and augmentation on CPU: albumentations vs device."""
    from unet_train.build import build_data

    root = Path(args.isbi_root)
    if not (root / "train-volume.tif").is_file():
        return {"skipped": f"ISBI 2012 data not found in {root} (pass --isbi-root)"}
    # The recipe at the benchmark's crop and batch (256 px, 4 by default, as in configs/data/isbi.yaml).
    overrides = ["data=isbi", f"data.root={root}", f"data.patch_size={args.size}", f"data.batch_size={args.batch}"]
    if args.quick:
        overrides += ["data.samples_per_epoch=16"]
    cfg = compose(overrides)
    data = build_data(cfg.data)
    loader = data.dataloader("train", pin_memory=device.type == "cuda")
    batches = forever(loader)
    next(batches)  # start the workers (persistent: they live as long as the loader)
    n_batches = 2 if args.quick else 12  # well above the prefetched 2 per worker
    loader_samples = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(n_batches):
            next(batches)
        loader_samples.append(n_batches * data.batch_size / (time.perf_counter() - start))
    del batches, loader

    # Augmentation alone, in this process: the albumentations recipe item by item, against a crop on
    # the CPU + the batched DeviceAugment on the training device (here: this device).
    device_cfg = compose(["data=isbi_device", f"data.root={root}", *overrides[2:]])
    device_data = build_data(device_cfg.data)
    album_set = data.dataset("train")
    crop_set = device_data.dataset("train")
    augment = device_data.device_augment
    assert augment is not None, "configs/data/isbi_device.yaml sets device_augment"
    bs = data.batch_size
    album_samples, device_samples = [], []
    g = torch.Generator().manual_seed(0)
    for _ in range(args.repeats):
        idx = torch.randint(len(album_set), (bs,), generator=g).tolist()
        start = time.perf_counter()
        for i in idx:
            album_set[i]
        album_samples.append(bs / (time.perf_counter() - start))
        sync(device)
        start = time.perf_counter()
        items = [crop_set[i] for i in idx]
        images = torch.stack([it["image"] for it in items]).to(device)
        masks = torch.stack([it["mask"] for it in items]).to(device)
        augment(images, masks)
        sync(device)
        device_samples.append(bs / (time.perf_counter() - start))
    device_path = None
    if device.type == "cuda":
        # The GPU's whole data path: the isbi_device loader's workers crop, the batch is copied from
        # pinned memory, DeviceAugment runs batched on the GPU.
        device_loader = device_data.dataloader("train", pin_memory=True)
        batches = forever(device_loader)
        next(batches)
        path_samples = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            for _ in range(n_batches):
                b = next(batches)
                augment(b["image"].to(device, non_blocking=True), b["mask"].to(device, non_blocking=True))
            sync(device)
            path_samples.append(n_batches * bs / (time.perf_counter() - start))
        device_path = summary(path_samples)
        del batches, device_loader
    return {
        "recipe": "configs/data/isbi.yaml",
        "num_workers": data.num_workers,
        "batch_size": data.batch_size,
        "patch_size": data.patch_size,
        "loader_images_per_s": summary(loader_samples),
        "device_path_images_per_s": device_path,
        "augment_in_process": {
            "albumentations_images_per_s": summary(album_samples),
            "device_augment_images_per_s": summary(device_samples),
            "device": str(device),
        },
    }


# ----------------------------------------------------------------------------------------------
# Peak memory, in a child process (CPU) or from the CUDA allocator
