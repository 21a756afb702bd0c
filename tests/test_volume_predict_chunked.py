"""A 3D model chunk by chunk into OME-Zarr: equal to the whole-volume prediction, resumable, shared, with spacing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from unet_train.engine.distributed import Distributed
from unet_train.errors import ConfigError
from unet_train.inference import TiledPredictor, large
from unet_train.inference.chunked import ChunkedPredictor
from unet_train.inference.volumes import open_volume
from unet_train.inference.zarr_output import ZarrPrediction, read_scale_of
from unet_train.models import UNet
from unet_train.predict import load_model, run_predict
from unet_train.volume_predict import model_input, volume_reader

from .conftest import compose_config
from .export.conftest import make_checkpoint

zarr = pytest.importorskip("zarr")

SHAPE = (24, 40, 40)  # z, y, x
SCALE = [2.0, 0.5, 0.5]  # micrometres: anisotropic, as thick sections
TILE, CHUNK = [8, 16, 16], [8, 16, 16]
SETTINGS = [
    f"tile_size=[{TILE[0]},{TILE[1]},{TILE[2]}]",
    "overlap=0.5",  # mirrored margins of 4 px in y and x (z pools twice: its grid is 4, its margin 0)
    "batch_size=3",
    f"chunk_size=[{CHUNK[0]},{CHUNK[1]},{CHUNK[2]}]",
    "prob_dtype=float32",
    "progress=never",
    "trainer.channels_last=false",  # no layout measurement
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, source) -> Path:
    """A tiny 3D checkpoint: batch norms that are not the identity, logits of spread ~1 on ``source``."""
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt3d") / "tiny3d.pt", ["model.spatial_dims=3"], seed=3)
    model, stored = load_model(path)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        logits = model(model_input(open_volume(source, None, None, 1), [stored.data])[None])
        model.head.weight /= logits.std()
        model.head.bias.copy_((model.head.bias - logits.mean()) / logits.std())
    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A smooth random uint8 volume as an OME-Zarr image with its voxel size."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (6, 10, 10)).astype(np.float32)
    volume = np.kron(coarse, np.ones((4, 4, 4))) + rng.normal(0, 20, SHAPE)
    path = tmp_path_factory.mktemp("vol3d") / "vol.ome.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=SHAPE, chunks=(8, 16, 16), dtype="uint8")[...] = np.clip(volume, 0, 255)
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    transforms = [{"type": "scale", "scale": SCALE}]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}],
    }
    return path


@pytest.fixture(scope="module")
def expected(ckpt, source) -> np.ndarray:
    """The whole-volume 3D prediction (the volume read whole, tiled and blended in one array)."""
    model, stored = load_model(ckpt)
    volume = open_volume(source, None, None, 1)
    predictor = TiledPredictor(model, tile_size=TILE, overlap=0.5, batch_size=3, channels_last=False)
    return predictor.predict(model_input(volume, [stored.data]))[0].numpy()


def predict(ckpt: Path, source: Path, output: Path, *extra: str) -> None:
    cfg = compose_config([f"ckpt={ckpt}", f"input={source}", f"output={output}", *SETTINGS, *extra], "predict")
    run_predict(cfg)


def test_chunked_3d_prediction_equals_the_whole_volume_and_keeps_the_spacing(ckpt, source, expected, tmp_path):
    predict(ckpt, source, tmp_path / "out.zarr")
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    prob = group["0"]
    assert prob.shape == SHAPE and prob.chunks == tuple(CHUNK)  # 3D chunks, not one z plane each
    assert expected.std() > 0.01 and 0.05 < (expected > 0.5).mean() < 0.95  # outputs that say something
    np.testing.assert_allclose(prob[...], expected, atol=1e-5, rtol=0)
    assert np.array_equal(group["labels/mask/0"][...], (prob[...] > 0.5).astype(np.uint8))
    assert group["done"].shape == (3, 3, 3) and group["done"][...].all()
    # The input's voxel size is the OME-NGFF scale of the probabilities and of the mask.
    assert read_scale_of(tmp_path / "out.zarr") == SCALE
    assert read_scale_of(tmp_path / "out.zarr" / "labels" / "mask") == SCALE
    axes = group.attrs["ome"]["multiscales"][0]["axes"]
    assert [(a["name"], a.get("unit")) for a in axes] == [(a, "micrometer") for a in "zyx"]
    assert group.attrs["unet_predict"]["complete"] is True


def test_a_large_zarr_input_is_predicted_chunk_by_chunk_into_the_output_folder(
    ckpt, source, expected, tmp_path, caplog
):
    # Over max_pixels a Zarr volume is not read whole: it goes chunk by chunk into FOLDER/<name>.zarr.
    with caplog.at_level(logging.INFO):
        predict(ckpt, source, tmp_path / "pred", f"max_pixels={np.prod(SHAPE) - 1}", "instances=true")
    prob = zarr.open_group(str(tmp_path / "pred" / "vol.zarr"), mode="r")["0"][...]
    np.testing.assert_allclose(prob, expected, atol=1e-5, rtol=0)
    assert "vol.ome.zarr is larger than can be read whole: predicted chunk by chunk into" in caplog.text
    assert "chunk-by-chunk OME-Zarr predictions of volumes get no instance labels yet (vol.ome.zarr:" in caplog.text


def test_a_killed_prediction_resumes_without_recomputing_the_written_chunks(
    ckpt, source, expected, tmp_path, monkeypatch
):
    monkeypatch.setattr(large, "BLOCK_VOXELS", 16)  # several blocks: the unit of skipping and of sharing
    original = ZarrPrediction.write_block
    written: list[tuple[int, ...]] = []

    def dying(self, chunk, bounds, prob):
        if len(written) == 10:  # killed while writing the 11th chunk: half its data, no done marker
            self.prob[bounds[0] : bounds[1], bounds[2] : bounds[3], bounds[4] : bounds[5]] = 0.123
            raise KeyboardInterrupt
        written.append(chunk)
        original(self, chunk, bounds, prob)

    monkeypatch.setattr(ZarrPrediction, "write_block", dying)
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C: one line and exit status 130
        predict(ckpt, source, tmp_path / "resumed.zarr")
    assert stopped.value.code == 130
    first = list(written)
    written.clear()
    monkeypatch.setattr(ZarrPrediction, "write_block", lambda s, c, b, p: (written.append(c), original(s, c, b, p)))
    predict(ckpt, source, tmp_path / "resumed.zarr")
    assert len(first) == 10 and not set(first) & set(written)  # the written chunks are not computed again
    assert sorted(first + written) == [(z, y, x) for z in range(3) for y in range(3) for x in range(3)]
    resumed = zarr.open_group(str(tmp_path / "resumed.zarr"), mode="r")
    np.testing.assert_allclose(resumed["0"][...], expected, atol=1e-5, rtol=0)  # the half-written chunk redone
    assert np.array_equal(resumed["labels/mask/0"][...], (resumed["0"][...] > 0.5).astype(np.uint8))
    assert resumed["done"][...].all() and resumed.attrs["unet_predict"]["complete"] is True


def test_two_ranks_write_disjoint_blocks_of_chunks_that_make_the_whole(ckpt, source, expected, tmp_path, monkeypatch):
    # torchrun's sharing without processes: rank r of 2 takes blocks r, r + 2, ... (the barriers are no-ops here).
    monkeypatch.setattr(large, "BLOCK_VOXELS", 16)
    model, stored = load_model(ckpt)
    volume = open_volume(source, None, None, 1)
    predictor = TiledPredictor(model, tile_size=TILE, overlap=0.5, batch_size=3, channels_last=False)
    read = volume_reader(volume, [stored.data])
    store, chunks = tmp_path / "shared.zarr", tuple(CHUNK)
    done = []
    for rank in (0, 1):
        dist = Distributed(rank=rank, world_size=2)
        large.predict_volume_to_zarr(predictor, volume, read, store, 1, chunks, "float32", 0.5, {}, dist)
        done.append(zarr.open_group(str(store), mode="r")["done"][...].copy())
    assert 0 < done[0].sum() < done[0].size and done[1].all()  # rank 0 wrote part, rank 1 the rest
    np.testing.assert_allclose(zarr.open_group(str(store), mode="r")["0"][...], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", ["[8,16]", "0", "[8,0,16]", "true"])
def test_a_bad_chunk_size_is_refused_in_one_line_and_writes_nothing(ckpt, source, tmp_path, caplog, chunk):
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
        predict(ckpt, source, tmp_path / "out.zarr", f"chunk_size={chunk}")
    assert stopped.value.code == 2
    shown = chunk.replace(",", ", ").replace("true", "True")
    message = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert message == [
        f"chunk_size={shown} must be a whole number of voxels, 1 or more, or three of them [z, y, x] "
        "for a 3D model's chunks."
    ]
    assert not (tmp_path / "out.zarr").exists()


def test_the_chunk_blending_of_a_volume_matches_whole_blending_with_margins_on_every_axis():
    # margin=4 mirrors on z too; chunks of uneven sides and a last partial chunk on every axis; small blocks.
    torch.manual_seed(0)
    model = UNet(1, 1, base_channels=4, depth=2, spatial_dims=3).eval()
    image = torch.rand(1, 13, 30, 27, generator=torch.Generator().manual_seed(1))
    predictor = TiledPredictor(model, tile_size=[8, 16, 16], overlap=0.25, margin=4, batch_size=2)
    whole = predictor.predict(image)
    planner = ChunkedPredictor(predictor, image.shape[1:], (5, 12, 10))
    out = torch.full_like(whole, float("nan"))

    def write(c: tuple[int, ...], prob: torch.Tensor) -> None:
        z0, z1, y0, y1, x0, x1 = planner.grid.bounds(c)
        out[:, z0:z1, y0:y1, x0:x1] = prob

    planner.run(planner.grid.blocks(16), lambda *b: image[:, b[0] : b[1], b[2] : b[3], b[4] : b[5]], write)
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=0)


def test_a_refused_resume_names_the_checkpoints_before_the_batch_size_chosen_with_them(ckpt, source, tmp_path):
    # Another checkpoint can change the batch size chosen for it (batch_size=null): the message names what the user
    # changed, the checkpoints first, then a setting the user gives before one the prediction chose; and every key.
    model, _ = load_model(ckpt)
    volume = open_volume(source, None, None, 1)
    store, first, other = tmp_path / "out.zarr", ["/m/a.pt (sha256 00)"], ["/m/b.pt (sha256 11)"]

    def create(batch: int, ckpts: list[str], overlap: float = 0.5) -> None:
        predictor = TiledPredictor(model, tile_size=TILE, overlap=overlap, batch_size=batch, channels_last=False)
        settings = large.store_settings(predictor, volume, 3, ckpt=ckpts, threshold=0.5)
        ZarrPrediction.create(store, volume, 1, tuple(CHUNK), "float32", settings)

    def refusal(made: str, differ: str) -> str:
        return (f"output={store} holds a prediction made with {made} (settings that differ: {differ}); rerun with the "
                "same settings to resume, or choose another output.")  # fmt: skip

    create(3, first)
    create(3, first)  # the same settings: resumed
    with pytest.raises(ConfigError) as refused:
        create(2, other)
    assert str(refused.value) == refusal(f"ckpt={first}, not {other}", "batch_size, ckpt")
    with pytest.raises(ConfigError) as refused:
        create(2, first, overlap=0.25)
    assert str(refused.value) == refusal("overlap=0.5, not 0.25", "overlap, margin, batch_size")
    with pytest.raises(ConfigError) as refused:
        create(2, first)
    assert str(refused.value) == refusal("batch_size=3, not 2", "batch_size")
