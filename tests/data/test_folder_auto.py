"""data=folder: in_channels/num_classes inferred from the files, grey and RGB mixed, small images padded."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet_train.data import ImageFolder
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit
from unet_train.errors import DataError

from ..conftest import compose_config

RNG = np.random.default_rng(0)


def palette_mask(path, indices: np.ndarray) -> None:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0])
    image.save(path)


def write_mixed(root, size=(40, 48), n_grey: int = 3, n_rgb: int = 3) -> None:
    """Grey and RGB PNG images with 3-class palette masks, as the usgra-seg folder has them."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n_grey + n_rgb):
        shape = (*size, 3) if i >= n_grey else size
        Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        indices = np.zeros(size, np.uint8)
        indices[5:15, 5:15], indices[20:30, 20:40] = 1, 2
        palette_mask(root / "masks" / f"im{i}.png", indices)


def test_auto_channels_and_classes_from_mixed_grey_and_rgb(tmp_path):
    write_mixed(tmp_path)
    data = ImageFolder(root=str(tmp_path), in_channels="auto", num_classes="auto", num_workers=0, val_fraction=0)
    assert (data.in_channels, data.num_classes) == (3, 3)
    split = data.split("train")
    assert all(im.shape == (40, 48, 3) for im in split.images)
    grey = split.images[split.names.index("im0")]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 0] == grey[..., 2]).all()  # grey copied
    assert set(np.unique(split.masks[0]).tolist()) == {0, 1, 2}
    # The explicit choice of one channel turns the RGB images grey instead.
    assert all(im.ndim == 2 for im in ImageFolder(root=str(tmp_path), in_channels=1, num_classes=3,
                                                    num_workers=0, val_fraction=0).split("train").images)  # fmt: skip


def test_auto_classes_binary_255_and_refusals(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        Image.fromarray(RNG.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "images" / f"a{i}.png")
        Image.fromarray(np.where(np.arange(256).reshape(16, 16) > 100, 255, 0).astype(np.uint8)).save(
            tmp_path / "masks" / f"a{i}.png"
        )
    data = ImageFolder(root=str(tmp_path), in_channels="auto", num_classes="auto", num_workers=0, val_fraction=0)
    assert (data.in_channels, data.num_classes) == (1, 2)
    assert set(np.unique(data.split("train").masks[0]).tolist()) == {0, 1}  # 255 -> 1

    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(tmp_path / "masks" / "a1.png")  # {0, 128, 255}
    with pytest.raises(DataError, match=r"hold the values \[0, 128, 255\], which look like grey levels"):
        ImageFolder(root=str(tmp_path), num_classes="auto", num_workers=0).split("train")

    tifffile.imwrite(tmp_path / "images" / "a2.tif", np.zeros((2, 16, 16), np.uint16), metadata={"axes": "CYX"})
    (tmp_path / "images" / "a2.png").unlink()
    with pytest.raises(DataError, match=r"have 1 and 2 channels; only grey and RGB mix"):
        ImageFolder(root=str(tmp_path), in_channels="auto", num_workers=0).split("train")


@pytest.mark.slow
def test_auto_is_resolved_before_the_model_and_small_images_are_padded(tmp_path):
    """Images of 40x48 with data.patch_size=64: the folder recipe's PadIfNeeded pads them (they used to be
    refused), validation scores the whole small images, and the checkpoint stores the inferred numbers."""
    write_mixed(tmp_path / "data", n_grey=3, n_rgb=5)
    cfg = compose_config(
        ["data=folder", f"data.root={tmp_path / 'data'}", "data.patch_size=64", "data.num_workers=0",
         "data.batch_size=2", "trainer=smoke", "trainer.max_epochs=1", "model.base_channels=4", "model.depth=2"]
    )  # fmt: skip
    assert cfg.data.in_channels == "auto"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and much faster on a shared machine
    try:
        metrics = fit(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    assert 0.0 <= metrics["val/dice"] <= 1.0 and metrics["steps"] == 3  # 6 training images / batch 2
    stored = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]
    assert (stored["data"]["in_channels"], stored["data"]["num_classes"]) == (3, 3)
    assert (stored["model"]["in_channels"], stored["model"]["out_channels"]) == (3, 3)
    assert stored["data"]["normalize"] == {"scheme": "scale_linear", "gain": None, "offset": 0.0}


def test_jpeg_masks_are_named_with_lossy_compression_and_a_cut_list():
    from unet_train.data.folder import infer_num_classes, value_list

    values = {0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255}
    assert value_list(values) == "[0, 1, 2, 3, 4, ..., 251, 252, 253, 254, 255] (12 values)"
    assert value_list({0, 1, 2}) == "[0, 1, 2]"
    with pytest.raises(DataError) as caught:
        infer_num_classes(values, "d/masks", jpeg=True)
    assert str(caught.value) == (
        "Masks in d/masks are JPEG files, whose lossy compression blurs class values at every edge: they hold the "
        "values [0, 1, 2, 3, 4, ..., 251, 252, 253, 254, 255] (12 values); save the masks as PNG or TIFF (lossless)."
    )


def test_masks_of_a_few_large_ids_are_refused_without_listing_every_absent_class():
    """32-bit label volumes of a few objects (labels=auto reads them as classes): the absent classes up to the
    largest id are counted, not listed; listing them took memory in proportion to the id (4e9: killed)."""
    import tracemalloc

    from unet_train.data.folder import infer_num_classes

    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"hold the values \[0, 1, 3000000\], which look like grey levels"):
            infer_num_classes({0, 1, 3_000_000}, "d/masks")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    assert infer_num_classes({0, 1, 2, 3, 4, 5, 6, 7, 8, 10}, "d/masks") == 11  # one absent class: still a warning
    with pytest.raises(DataError, match=r"set data.num_classes, or data.labels=instances if each value is one object"):
        infer_num_classes({0, 1, 3_000_000}, "d/masks", ids=True)  # 16/32-bit masks, labels=auto: maybe ids
