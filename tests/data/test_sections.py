"""2.5D sections: the neighbouring sections as channels, in order, mirrored at the ends, augmented alike."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from unet_train.build import build_data, build_model, resolve_data_config
from unet_train.data import ImageFolder, VolumeFolder
from unet_train.data.augment3d import Compose3D, RandomFlip3D, RandomRotate90InPlane
from unet_train.data.sections import SectionDataset, context_indices, raw_sections, section_spec
from unet_train.data.volume_data import VolumeCase
from unet_train.errors import ConfigError
from unet_train.inference.volumes import Volume

from ..conftest import compose_config
from .volume_folder import make_volume_folder

IDENTITY = {"scheme": "scale_linear", "gain": 1.0, "offset": 0.0}


def numbered_case(depth: int = 5, channels: int = 2, side: int = 8) -> VolumeCase:
    """Section z, channel c holds the value 10 z + c everywhere."""
    values = 10 * np.arange(depth, dtype=np.float32)[:, None] + np.arange(channels, dtype=np.float32)
    array = np.broadcast_to(values[:, None, None, :], (depth, side, side, channels)).copy()
    return VolumeCase(Volume(array, "zyxc", "numbered"), None, "numbered", (1.0, 1.0, 1.0), spec=dict(IDENTITY))


@pytest.mark.parametrize(
    ("k", "z", "sections"),
    [
        (1, 0, [1, 0, 1]),  # the first section: z-1 mirrored to 1, the end section not repeated
        (1, 2, [1, 2, 3]),  # the middle: the true neighbours
        (1, 4, [3, 4, 3]),  # the last section: z+1 mirrored to 3
        (2, 0, [2, 1, 0, 1, 2]),
        (2, 1, [1, 0, 1, 2, 3]),
        (2, 4, [2, 3, 4, 3, 2]),
    ],
)
def test_channels_are_the_sections_in_order_section_major_and_mirrored_at_both_ends(k, z, sections):
    dataset = SectionDataset([numbered_case()], k)  # scoring: item z of the one case is section z
    item = dataset[z]
    expected = [10 * s + c for s in sections for c in (0, 1)]  # section-major: z-k c0, z-k c1, ..., z+k c1
    assert item["image"].shape == (2 * len(sections), 8, 8)
    assert item["image"][:, 3, 5].tolist() == expected
    assert (item["image"] == item["image"][:, :1, :1]).all()  # the whole plane, each channel constant
    assert item["name"] == f"numbered-z{z:03d}"


def test_a_context_wider_than_the_volume_bounces_and_a_single_section_repeats():
    assert context_indices(0, 3, 4) == [0, 1, 2, 1, 0, 1, 2, 1, 0]
    assert context_indices(1, 2, 2) == [1, 0, 1, 0, 1]
    assert context_indices(0, 1, 2) == [0, 0, 0, 0, 0]
    raw = raw_sections(numbered_case(depth=3, channels=1).image, 2, 1)
    assert raw.shape == (8, 8, 3) and raw[0, 0].tolist() == [10, 20, 10]


def test_per_channel_statistics_repeat_per_section():
    spec = {"scheme": "zscore", "per": "dataset", "mean": [1.0, 2.0], "std": [3.0, 4.0]}
    out = section_spec(spec, 1)
    assert out["mean"] == [1.0, 2.0] * 3 and out["std"] == [3.0, 4.0] * 3


def offset_sections(depth: int = 5, side: int = 64) -> VolumeCase:
    """Every section is one smooth random image plus its index: a transform applied alike keeps the offsets."""
    rng = np.random.default_rng(0)
    base = rng.random((side, side)).astype(np.float32)
    array = np.stack([base + z for z in range(depth)])
    mask = Volume((array > 2.5).astype(np.uint8), "zyx", "mask")
    return VolumeCase(Volume(array, "zyx", "offsets"), mask, "offsets", (1.0, 1.0, 1.0), spec=dict(IDENTITY))


def test_the_isbi_augmentation_moves_every_stacked_section_alike():
    """The real data=isbi albumentations pipeline (elastic, rotation, crop, flips, brightness/contrast) on 5
    stacked sections: every channel differs from the first by a constant, so the same warp moved them all."""
    cfg = compose_config(["data=isbi", "data.patch_size=32", "data.foreground_oversample=0.5"])
    transform = instantiate(cfg.data.train_transform)
    dataset = SectionDataset([offset_sections()], 2, training=True, transform=transform)
    for seed in range(6):
        image = dataset[(0, seed)]["image"].numpy()
        assert image.shape == (5, 32, 32)
        steps = image[1:] - image[:-1]  # +-1 (mirrored at an end) times this item's contrast gain, at every pixel
        assert np.ptp(steps, axis=(1, 2)).max() < 1e-4
        assert np.ptp(np.abs(steps[:, 0, 0])) < 1e-4 and abs(abs(steps[0, 0, 0]) - 1) < 0.2


def test_the_volume_augmentation_moves_the_block_of_sections_and_keeps_the_centre_mask():
    """data=volumes' 3D transform on the 2k+1 sections: a z flip reverses them, an in-plane turn turns them all
    and the centre section's mask with them."""
    case = offset_sections(side=16)
    base, turns_seen = case.image.array[0], set()
    transform = Compose3D([RandomFlip3D(axes=[0], p=1.0), RandomRotate90InPlane(p=1.0)])
    dataset = SectionDataset([case], 1, training=True, crop=(16, 16), block_transform=transform)
    for seed in range(8):
        item = dataset[(0, seed)]
        image, mask = item["image"].numpy(), item["mask"].numpy()
        z = int(np.floor(image[1].min()))  # the centre section: base + z
        turns = next(t for t in range(4) if np.allclose(np.rot90(base, t), image[1] - z, atol=1e-5))
        turns_seen.add(turns)
        for j, section in enumerate(context_indices(z, 5, 1)[::-1]):  # flipped: z+1, z, z-1
            assert np.allclose(image[j], np.rot90(base, turns) + section, atol=1e-5)
        assert np.array_equal(mask, np.rot90(case.mask.array[z], turns))
    assert len(turns_seen) > 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.context_slices=-1"], "data.context_slices=-1 must be a whole number of sections"),
        (["data.context_slices=1.5"], "data.context_slices=1.5 must be a whole number of sections"),
        (["data.context_slices=two"], "data.context_slices='two' must be a whole number of sections"),
        (["data.context_slices=true"], "data.context_slices=True must be a whole number of sections"),
        (["data.spatial_dims=3", "data.context_slices=1"], "data.context_slices=1 stacks neighbouring sections"),
    ],
)
def test_a_bad_context_is_refused_in_one_line_naming_the_key(tmp_path, overrides, message):
    cfg = compose_config(["data=volumes", f"data.root={tmp_path}", *overrides])
    with pytest.raises(ConfigError) as caught:
        build_data(cfg.data)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_context_with_a_3d_model_is_refused_before_the_model_is_built(tmp_path):
    root = make_volume_folder(tmp_path, count=2)
    cfg = compose_config(["data=volumes", f"data.root={root}", "data.context_slices=1", "model.spatial_dims=3"])
    with pytest.raises(ConfigError, match=r"^data.context_slices=1 stacks .* a 3D model sees them already"):
        resolve_data_config(cfg, build_data(cfg.data))


def test_isbi_with_context_needs_consecutive_slices(isbi_root):
    cfg = compose_config(["data=isbi", f"data.root={isbi_root}", "data.context_slices=1", "data.train_slices='0,2,4'"])
    with pytest.raises(ConfigError, match=r"^data.context_slices=1 .* the train slices \[0, 2, 4\] are not consec"):
        build_data(cfg.data).split("train")


def test_isbi_with_context_trains_a_2d_model_on_stacked_slices(isbi_root):
    cfg = compose_config(
        ["data=isbi", f"data.root={isbi_root}", "data.context_slices=1", "data.patch_size=64", "model.depth=2",
         "model.base_channels=4", "data.val_slices=25-26"]
    )  # fmt: skip
    data = build_data(cfg.data)
    resolve_data_config(cfg, data)
    assert cfg.model.in_channels == 3 and cfg.data.in_channels == 1
    item = data.dataset("train")[(0, 7)]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (64, 64)
    val = data.dataset("val")
    assert len(val) == 2 and val[1]["name"] == "train-25-26-z001"
    stack = val[1]["image"].numpy()  # slice 26, the last val slice: its neighbours are 25 and 25 mirrored
    assert np.array_equal(stack[0], stack[2]) and not np.array_equal(stack[0], stack[1])
    assert build_model(cfg.model)(item["image"][None]).shape == (1, 1, 64, 64)


class _Logits(torch.nn.Module):
    """Its input as the logit: the prediction shows how the input was scaled."""

    depth = 0

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1, bias=False)
        torch.nn.init.ones_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class LabVolumes(VolumeFolder):
    """A user's dataset of volumes under a name of its own."""


class PlanesNotAVolumeFolder(ImageFolder):
    """2D images, whose name happens to end as the volume dataset's."""


@pytest.mark.parametrize(("target", "per_volume"), [("unet_train.data.VolumeFolder", True),
                                                    ("unet_train.data.ImageFolder", False),
                                                    (f"{__name__}.LabVolumes", True),
                                                    (f"{__name__}.PlanesNotAVolumeFolder", False)])  # fmt: skip
def test_a_plain_2d_model_of_volume_sections_is_fed_sections_scaled_per_volume(tmp_path, target, per_volume):
    """k = 0 trained on data=volumes sections (scaled by the volume's statistics) was predicted with each plane
    scaled on its own, as an image model's stack is; a dim plane then looked as bright as the others. Whether the
    data were volumes is the dataset class's flag (planes_from_volumes), not the end of its name."""
    from unet_train.inference.tiling import TiledPredictor
    from unet_train.inference.volumes import open_volume
    from unet_train.volume_predict import predict_sections

    planes = np.stack([np.full((8, 8), 50 * (z + 1), np.uint8) for z in range(4)])
    planes[:, 0, 0] = 0  # every plane spans 0..its level
    tifffile.imwrite(tmp_path / "v.tif", planes)
    data = OmegaConf.create({"_target_": target, "in_channels": 1, "context_slices": 0,
                             "normalize": {"scheme": "percentile", "low": 0.0, "high": 100.0, "per": "image",
                             "min_value": None, "max_value": None, "clip": False}})  # fmt: skip
    predictor = TiledPredictor(_Logits(), tile_size=8, device=torch.device("cpu"), fold_bn=False)
    prob = predict_sections(predictor, open_volume(tmp_path / "v.tif", None, "zyx", 1), [data])
    levels = torch.logit(prob[0, :, 4, 4]).numpy()
    expected = [0.25, 0.5, 0.75, 1.0] if per_volume else [1.0] * 4
    np.testing.assert_allclose(levels, expected, atol=1e-4)


@pytest.mark.parametrize("context", [10**9, -3, 5, "1", True])
def test_a_checkpoint_whose_context_does_not_make_its_model_inputs_is_refused_in_one_line(tmp_path, context):
    """A crafted context_slices reached the section reader: 10**9 built a list of 2 * 10**9 + 1 indices (a
    MemoryError), -3 an empty one (a ValueError), 5 a forward of 11 channels into a 3-channel model (tracebacks)."""
    from unet_train.engine.checkpoint import load_checkpoint
    from unet_train.engine.fit import fit
    from unet_train.errors import CheckpointError

    from ..test_cli import BIN, run

    root = make_volume_folder(tmp_path / "vols", count=3)
    overrides = ["data=volumes", f"data.root={root}", "data.context_slices=1", "data.num_workers=0",
                 "data.patch_size=32", "data.batch_size=2", "trainer=smoke", "trainer.max_epochs=1",
                 "data.samples_per_epoch=2", "model.base_channels=4", "model.depth=2"]  # fmt: skip
    fit(compose_config(overrides), tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    checkpoint["config"]["data"]["context_slices"] = context
    crafted = tmp_path / "crafted.pt"
    torch.save(checkpoint, crafted)
    said = f"its data.context_slices={context!r} of data.in_channels=1 each do not make its model's model.in_channels=3"
    with pytest.raises(CheckpointError, match=re.escape(said)):
        load_checkpoint(crafted)
    if context == 10**9:
        args = [str(BIN / "unet-predict"), f"ckpt={crafted}", f"input={root / 'test' / 'images'}", "output=out"]
        result = run(args, cwd=tmp_path, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr and said in result.stderr
        assert not (tmp_path / "out").exists()
