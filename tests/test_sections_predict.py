"""unet-predict with a 2.5D model (data.context_slices=k): the volume's sections read once, chunk by chunk into
OME-Zarr over slabs of planes (equal to the whole-volume path, with the spacing, resumable, shared), and the
inputs it refuses (a 2D image, a volume of other channels)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet_train.data.volume_data import VolumeCase
from unet_train.engine.distributed import Distributed
from unet_train.inference import TiledPredictor, large
from unet_train.inference.volumes import open_volume
from unet_train.inference.zarr_output import ZarrPrediction, read_scale_of
from unet_train.predict import load_model, run_predict
from unet_train.volume_predict import predict_sections_store

from .conftest import compose_config
from .export.conftest import make_checkpoint

zarr = pytest.importorskip("zarr")

K = 2  # sections on each side: 5 in all
SHAPE = (7, 32, 40)  # z, y, x
SCALE = [2.0, 0.5, 0.5]  # micrometres
SECTIONS_MODEL = [
    "data=volumes",
    "data.in_channels=1",
    "data.num_classes=2",
    f"data.context_slices={K}",
    f"model.in_channels={2 * K + 1}",
    "model.spatial_dims=2",
    "model.base_channels=4",
    "model.depth=2",
]
SETTINGS = [
    "tile_size=32",  # tiles across the chunks' borders
    "overlap=0.25",
    "batch_size=3",
    "chunk_size=16",
    "prob_dtype=float32",
    "progress=never",
    "trainer.channels_last=false",  # no layout measurement
]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A smooth random uint8 volume as an OME-Zarr image with its voxel size."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (7, 8, 10)).astype(np.float32)
    volume = np.kron(coarse, np.ones((1, 4, 4))) + rng.normal(0, 20, SHAPE)
    path = tmp_path_factory.mktemp("vol25") / "vol.ome.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=SHAPE, chunks=(4, 16, 16), dtype="uint8")[...] = np.clip(volume, 0, 255)
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    transforms = [{"type": "scale", "scale": SCALE}]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}],
    }
    return path


def stacked_sections(source: Path) -> np.ndarray:
    """Each section with its K neighbours on each side (mirrored at the ends) as channels, by hand: ``(Z, 2K + 1,
    Y, X)``, scaled as data.normalize (scale_linear, gain null) scales uint8."""
    scaled = zarr.open_group(str(source), mode="r")["0"][...].astype(np.float32) / 255
    padded = np.concatenate([scaled[1 : K + 1][::-1], scaled, scaled[-K - 1 : -1][::-1]])
    return np.stack([padded[z : z + 2 * K + 1] for z in range(SHAPE[0])])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, source) -> Path:
    """A tiny 2.5D checkpoint whose logits on ``source`` spread about 1 around 0 (masks with both classes)."""
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt25") / "sections.pt", seed=5, base=SECTIONS_MODEL)
    model, _ = load_model(path)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(stacked_sections(source)))
        model.head.weight /= logits.std()
        model.head.bias.copy_((model.head.bias - logits.mean()) / logits.std())
    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, "model": model.state_dict()}, path)
    return path


def predict(ckpt: Path, source: Path, output: Path, *extra: str) -> list[Path]:
    cfg = compose_config([f"ckpt={ckpt}", f"input={source}", f"output={output}", *SETTINGS, *extra], "predict")
    return run_predict(cfg)


@pytest.fixture(scope="module")
def expected(ckpt, source, tmp_path_factory) -> np.ndarray:
    """The whole-volume path (the volume read whole, section by section, a TIFF stack out)."""
    files = predict(ckpt, source, tmp_path_factory.mktemp("whole"))
    return tifffile.imread(files[0])


def by_hand(ckpt: Path, source: Path) -> np.ndarray:
    """The model over each section with its neighbours (:func:`stacked_sections`), tiled as unet-predict tiles an
    image."""
    model, _ = load_model(ckpt)
    predictor = TiledPredictor(model, tile_size=32, overlap=0.25, batch_size=3, channels_last=False)
    return torch.stack([predictor.predict(torch.from_numpy(image))[0] for image in stacked_sections(source)]).numpy()


def record_reads(monkeypatch) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (origin, size) of every block of sections read and scaled."""
    reads: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    original = VolumeCase.read_image

    def recorded(self, origin, size):
        reads.append((tuple(origin), tuple(size)))
        return original(self, origin, size)

    monkeypatch.setattr(VolumeCase, "read_image", recorded)
    return reads


def test_the_whole_volume_path_reads_the_volume_once_and_equals_the_sections_by_hand(
    ckpt, source, tmp_path, monkeypatch
):
    reads = record_reads(monkeypatch)
    files = predict(ckpt, source, tmp_path / "out")
    assert reads == [((0, 0, 0), SHAPE)]  # not each plane 2k + 1 times
    prob = tifffile.imread(files[0])
    hand = by_hand(ckpt, source)
    assert prob.shape == SHAPE and hand.std() > 0.01
    np.testing.assert_allclose(prob, hand, atol=1e-5, rtol=0)


def test_a_2_5d_model_writes_ome_zarr_equal_to_the_whole_volume_with_its_spacing(
    ckpt, source, expected, tmp_path, monkeypatch
):
    # Slabs of 2 planes (2 + 2k sections in a block's window) and blocks of 2 x 2 chunks: several of each.
    monkeypatch.setattr(large, "BLOCK_PIXELS", 32)
    monkeypatch.setattr(large, "SLAB_VALUES", (2 + 2 * K) * 32 * 40)  # a block's window: the whole plane
    reads = record_reads(monkeypatch)
    predict(ckpt, source, tmp_path / "out.zarr")
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    prob = group["0"]
    assert prob.shape == SHAPE and prob.chunks == (1, 16, 16)  # plane by plane
    assert 0.05 < (expected > 0.5).mean() < 0.95  # an output that says something
    np.testing.assert_allclose(prob[...], expected, atol=1e-5, rtol=0)
    assert np.array_equal(group["labels/mask/0"][...], (prob[...] > 0.5).astype(np.uint8))
    assert group["done"].shape == (7, 2, 3) and group["done"][...].all()
    assert read_scale_of(tmp_path / "out.zarr") == SCALE
    assert read_scale_of(tmp_path / "out.zarr" / "labels" / "mask") == SCALE
    axes = group.attrs["ome"]["multiscales"][0]["axes"]
    assert [(a["name"], a.get("unit")) for a in axes] == [(a, "micrometer") for a in "zyx"]
    settings = group.attrs["unet_predict"]
    assert settings["complete"] is True and settings["context_slices"] == K
    # One read per (slab, block): slabs z 0-1, 2-3, 4-5, 6 with their sections 2 either side (mirrored at the
    # ends), times 2 blocks; not 5 sections for each plane.
    planes = sorted({(o[0], o[0] + s[0]) for o, s in reads})
    assert planes == [(0, 4), (0, 6), (2, 7), (4, 7)] and len(reads) == 4 * 2


def test_a_killed_2_5d_prediction_resumes_without_recomputing_the_written_chunks(
    ckpt, source, expected, tmp_path, monkeypatch
):
    original = ZarrPrediction.write_chunk
    written: list[tuple[int, ...]] = []

    def dying(self, z, chunk, bounds, prob):
        if len(written) == 15:  # killed while writing the 16th chunk: half its data, no done marker
            self.prob[z, bounds[0] : bounds[1], bounds[2] : bounds[3]] = 0.123
            raise KeyboardInterrupt
        written.append((z, *chunk))
        original(self, z, chunk, bounds, prob)

    monkeypatch.setattr(ZarrPrediction, "write_chunk", dying)
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C: one line and exit status 130
        predict(ckpt, source, tmp_path / "resumed.zarr")
    assert stopped.value.code == 130
    first = list(written)
    written.clear()
    monkeypatch.setattr(
        ZarrPrediction, "write_chunk", lambda s, z, c, b, p: (written.append((z, *c)), original(s, z, c, b, p))
    )
    predict(ckpt, source, tmp_path / "resumed.zarr")
    assert len(first) == 15 and not set(first) & set(written)  # the written chunks are not computed again
    assert sorted(first + written) == [(z, y, x) for z in range(7) for y in range(2) for x in range(3)]
    resumed = zarr.open_group(str(tmp_path / "resumed.zarr"), mode="r")
    np.testing.assert_allclose(resumed["0"][...], expected, atol=1e-5, rtol=0)  # the half-written chunk redone
    assert resumed["done"][...].all() and resumed.attrs["unet_predict"]["complete"] is True


def test_two_ranks_write_disjoint_slabs_and_blocks_that_make_the_whole(ckpt, source, expected, tmp_path, monkeypatch):
    # torchrun's sharing without processes: rank r of 2 takes (slab, block) pairs r, r + 2, ... (no-op barriers).
    monkeypatch.setattr(large, "BLOCK_PIXELS", 32)  # 2 blocks, one for each rank
    model, stored = load_model(ckpt)
    volume = open_volume(source, None, None, 1)
    predictor = TiledPredictor(model, tile_size=32, overlap=0.25, batch_size=3, channels_last=False)
    cfg = compose_config([f"ckpt={ckpt}", "input=x", "output=y", *SETTINGS], "predict")
    store, done = tmp_path / "shared.zarr", []
    for rank in (0, 1):
        dist = Distributed(rank=rank, world_size=2)
        predict_sections_store(cfg, predictor, volume, store, 16, 1, [stored.data], dist)
        done.append(zarr.open_group(str(store), mode="r")["done"][...].copy())
    assert 0 < done[0].sum() < done[0].size and done[1].all()  # rank 0 wrote part, rank 1 the rest
    np.testing.assert_allclose(zarr.open_group(str(store), mode="r")["0"][...], expected, atol=1e-5, rtol=0)


def test_a_2d_image_is_refused_in_one_line_not_predicted_from_copies_of_its_plane(ckpt, tmp_path, caplog):
    image = tmp_path / "section.tif"
    tifffile.imwrite(image, np.zeros((32, 40), np.uint8))
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
        predict(ckpt, image, tmp_path / "out")
    assert stopped.value.code == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"{image} is a 2D image (axes yx) but the model is 2.5D (data.context_slices={K}): it segments each section "
        f"of a volume with {K} section(s) on each side; give it a volume (a TIFF stack, NIfTI, HDF5 or Zarr with a "
        "z axis; input_axes=zyx where the file does not say)."
    ]
    assert not (tmp_path / "out").exists()
    # What the line suggests works: the file read as a stack of one section, predicted with mirrored neighbours.
    written = predict(ckpt, image, tmp_path / "out", "input_axes=zyx")
    assert written and all(tifffile.imread(path).shape[-2:] == (32, 40) for path in written)


def test_a_volume_of_other_channels_is_refused_in_one_line_naming_the_channels_per_section(ckpt, tmp_path, caplog):
    stack = tmp_path / "rgb.tif"
    tifffile.imwrite(stack, np.zeros((5, 32, 40, 3), np.uint8), photometric="rgb")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
        predict(ckpt, stack, tmp_path / "out")
    assert stopped.value.code == 2
    message = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(message) == 1
    assert message[0].endswith(
        "has 3 channel(s) (axes zyxc) but the model takes 1 per section; set input_axes (e.g. czyx or zyxc)."
    )
    assert not (tmp_path / "out").exists()
