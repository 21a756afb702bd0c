"""Chunk-wise blending and instance labels: equal to the whole-image versions, any size, known cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_train.inference import TiledPredictor
from unet_train.inference.chunked import ChunkedPredictor, ChunkGrid
from unet_train.inference.instances import instance_labels

from .test_tiling import random_unet, smooth_image


def chunked(predictor: TiledPredictor, image: torch.Tensor, chunk: int, block: int = 4096) -> tuple[torch.Tensor, int]:
    """Blend chunk by chunk into a full array (for comparison); returns it and the tiles computed."""
    _, height, width = image.shape
    planner = ChunkedPredictor(predictor, (height, width), chunk)
    out = torch.full((1, height, width), float("nan"))
    written: list[tuple[int, int]] = []
    counted = []

    def write(c: tuple[int, int], prob: torch.Tensor) -> None:
        y0, y1, x0, x1 = planner.grid.bounds(c)
        assert prob.shape == (1, y1 - y0, x1 - x0)
        out[:, y0:y1, x0:x1] = prob
        written.append(c)

    planner.run(planner.grid.blocks(block), lambda y0, y1, x0, x1: image[:, y0:y1, x0:x1], write, counted.append)
    ny, nx = planner.grid.shape
    assert sorted(written) == [(cy, cx) for cy in range(ny) for cx in range(nx)]  # every chunk once
    return out, sum(counted)


@pytest.mark.parametrize(("shape", "chunk"), [((300, 500), 64), ((37, 129), 64), ((130, 70), 50), ((1, 90), 64)])
def test_chunkwise_blending_equals_whole_image_blending(shape, chunk):
    model = random_unet()
    image = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0))
    predictor = TiledPredictor(model, tile_size=64, overlap=0.25, batch_size=3)
    whole = predictor.predict(image)
    out, tiles = chunked(predictor, image, chunk)
    # The same tiles summed in the same order: equal to float rounding (in practice bit for bit).
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=0)
    assert tiles == predictor.num_tiles(*shape)  # one block: every tile computed exactly once


def test_small_blocks_recompute_edge_tiles_with_the_same_result():
    model = random_unet()
    image = smooth_image(300, 500)
    predictor = TiledPredictor(model, tile_size=64, overlap=0.25, batch_size=4)
    whole = predictor.predict(image)
    out, tiles = chunked(predictor, image, chunk=64, block=128)
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=0)
    assert tiles > predictor.num_tiles(300, 500)  # tiles on block edges are computed by both blocks


def test_chunk_borders_leave_no_seam():
    # Against the model's whole-image forward, the error on the chunk borders is no larger than elsewhere.
    model = random_unet()
    image = smooth_image(256, 256)
    with torch.inference_mode():
        exact = torch.sigmoid(model(image[None]))[0]
    out, _ = chunked(TiledPredictor(model, tile_size=64, overlap=0.5, margin=0), image, chunk=64)
    error = (out - exact).abs()[0]
    borders = [63, 64, 127, 128, 191, 192]
    assert error[:, borders].max() <= error.max() and error.max() < 0.01
    assert (out[0, :, 63] - out[0, :, 64]).abs().max() <= (exact[0, :, 63] - exact[0, :, 64]).abs().max() + 0.01


def test_chunk_grid_covers_the_plane_in_blocks():
    grid = ChunkGrid((300, 500), 64)
    assert grid.shape == (5, 8)
    assert grid.bounds((4, 7)) == (256, 300, 448, 500)
    blocks = grid.blocks(128)
    assert blocks[0] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(c for b in blocks for c in b) == [(y, x) for y in range(5) for x in range(8)]


def test_ensemble_is_the_mean_of_its_models_probabilities():
    a, b = random_unet(), random_unet()
    with torch.no_grad():
        b.head.bias += 1.0  # a different second model
    image = torch.rand(1, 90, 70, generator=torch.Generator().manual_seed(2))
    pa = TiledPredictor(a, tile_size=32).predict(image)
    pb = TiledPredictor(b, tile_size=32).predict(image)
    both = TiledPredictor([a, b], tile_size=32).predict(image)
    assert (pa - pb).abs().max() > 0.05
    torch.testing.assert_close(both, (pa + pb) / 2, atol=1e-6, rtol=0)


def cells_image() -> tuple[np.ndarray, np.ndarray]:
    """A 3x4 grid of 20x20 cells separated by 2-pixel membranes; the truth labels each cell."""
    boundary = np.ones((3 * 22 + 2, 4 * 22 + 2), dtype=np.float32)
    truth = np.zeros(boundary.shape, dtype=np.int64)
    for i in range(3):
        for j in range(4):
            y, x = 2 + 22 * i, 2 + 22 * j
            boundary[y : y + 20, x : x + 20] = 0.1
            truth[y : y + 20, x : x + 20] = 1 + 4 * i + j
    return boundary, truth


def test_membrane_watershed_finds_the_known_cells():
    boundary, truth = cells_image()
    labels = instance_labels(boundary[None], "membrane", threshold=0.5)
    assert labels.dtype == np.uint32
    # Every cell is one segment of its own; the cells' segments are all different.
    segments = [np.unique(labels[truth == k]) for k in range(1, 13)]
    assert all(len(s) == 1 and s[0] > 0 for s in segments)
    assert len({int(s[0]) for s in segments}) == 12
    assert labels.max() == 12 and (labels == 0).any()  # watershed lines between cells


def test_components_and_distance_watershed_on_known_objects():
    prob = np.zeros((1, 40, 60), dtype=np.float32)
    prob[0, 2:8, 35:45] = 0.9  # a rectangle
    prob[0, 25:35, 40:55] = 0.9  # another one
    yy, xx = np.mgrid[:40, :60]
    # Two discs of radius 7 that overlap a little: one component, two objects by distance.
    disc = ((yy - 20) ** 2 + (xx - 12) ** 2 <= 49) | ((yy - 20) ** 2 + (xx - 24) ** 2 <= 49)
    prob[0][disc] = 0.8
    components = instance_labels(prob, "components", threshold=0.5)
    assert components.max() == 3
    assert len(np.unique(components[2:8, 35:45])) == 1 and components[2, 35] > 0
    # The distance watershed splits the two overlapping discs (and leaves their foreground as it is).
    discs = np.where(disc, 0.8, 0.0).astype(np.float32)[None]
    split = instance_labels(discs, "distance", threshold=0.5, min_distance=5)
    assert instance_labels(discs, "components", threshold=0.5).max() == 1
    assert split.max() == 2 and {int(split[20, 12]), int(split[20, 24])} == {1, 2}
    assert np.array_equal(split > 0, disc)
