"""Each target representation round-trips: labels -> target -> post-processing gives the labels back."""

from __future__ import annotations

import numpy as np
import pytest

from unet_train.metrics.objects import object_scores
from unet_train.objects.postprocess import from_affinities, from_boundary, from_distance, remove_small
from unet_train.objects.targets import (
    BOUNDARY,
    INTERIOR,
    affinity_target,
    boundary_target,
    distance_target,
    nearest_offsets,
)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the numbering of the objects."""
    s = object_scores(a, b)
    return s["sq"] == 1.0 and s["fp"] == 0 and s["fn"] == 0


def scene_2d() -> np.ndarray:
    """Touching boxes, a disc touching a box, a one-pixel object, a thin line, an object at the border."""
    labels = np.zeros((40, 48), dtype=np.int32)
    labels[2:12, 2:12] = 1
    labels[2:12, 12:20] = 2  # touches 1 along a whole side
    yy, xx = np.mgrid[:40, :48]
    labels[(yy - 24) ** 2 + (xx - 10) ** 2 <= 36] = 3
    labels[18:30, 17:25] = 4  # touches the disc
    labels[35, 40] = 5  # one pixel
    labels[33:38, 30] = 6  # a line one pixel wide
    labels[0:6, 42:48] = 7  # in the corner of the image
    return labels


def scene_3d() -> np.ndarray:
    labels = np.zeros((6, 16, 16), dtype=np.int32)
    labels[1:5, 2:8, 2:8] = 1
    labels[1:5, 2:8, 8:14] = 2  # touching
    labels[3, 12, 3] = 3  # one voxel
    return labels


@pytest.mark.parametrize("make", [scene_2d, scene_3d])
def test_boundary_target_round_trips(make):
    labels = make()
    target = boundary_target(labels)
    interior = (target == INTERIOR).astype(np.float32)
    boundary = (target == BOUNDARY).astype(np.float32)
    assert same_partition(labels, from_boundary(interior, boundary))


@pytest.mark.parametrize("make", [scene_2d, scene_3d])
def test_distance_target_round_trips(make):
    labels = make()
    distance = distance_target(labels)
    assert distance.max() == pytest.approx(1.0) and distance[labels == 0].max() == 0
    # every object peaks at 1, however thin
    assert all(distance[labels == i].max() == pytest.approx(1.0) for i in np.unique(labels) if i)
    assert same_partition(labels, from_distance((labels > 0).astype(np.float32), distance))


@pytest.mark.parametrize("make", [scene_2d, scene_3d])
def test_affinity_target_round_trips(make):
    labels = make()
    offsets = nearest_offsets(labels.ndim)
    affs, valid = affinity_target(labels, offsets)
    assert affs.shape == (labels.ndim, *labels.shape)
    assert not valid[0][0].any()  # offset -1 on the first axis has no neighbour in the first row/plane
    assert same_partition(labels, from_affinities(affs.astype(np.float32), offsets, labels > 0))


@pytest.mark.parametrize("make", [scene_2d, scene_3d])
def test_affinity_target_with_long_offsets_and_unlabelled_pixels_round_trips(make):
    """The default offsets (long ones too) and an unlabelled band: the post-processing of the item's maps (via the
    channels it keeps, outputs_of) gives back the labels outside the band, touching and one-pixel objects too."""
    from unet_train.data.instances import InstanceTarget
    from unet_train.labels import IGNORE_INDEX
    from unet_train.objects import params as pp

    labels = make()
    # the last offset points into the band from the labelled pixels before it
    offsets = [(-1, 0), (0, -1), (-3, 0), (0, 2)] if labels.ndim == 2 else [*nearest_offsets(3), (0, 0, 2)]
    ids = labels.astype(np.float32)
    ids[..., -2:] = IGNORE_INDEX  # an unlabelled band along the last axis
    classes, kept, extras = InstanceTarget("affinities", offsets)(ids)
    affs = extras["affinities"]
    band = ids == IGNORE_INDEX
    assert (affs[:, band] == IGNORE_INDEX).all() and (classes[band] == IGNORE_INDEX).all()
    # pairs that reach into the band are left out, the others (inside the image) counted
    assert (affs[-1][..., -4:-2] == IGNORE_INDEX).all() and (affs[-1][..., :-4] != IGNORE_INDEX).all()
    prob = np.concatenate([(kept > 0)[None], np.where(affs == IGNORE_INDEX, 0, affs)]).astype(np.float32)
    labels_back = pp.instances("affinities", prob, {"threshold": 0.5, "min_size": 1}, offsets)
    assert same_partition(np.where(band, 0, labels), labels_back)


def test_boundary_classes_on_a_hand_built_case():
    labels = np.zeros((5, 8), dtype=np.int32)
    labels[1:4, 1:4] = 1
    labels[1:4, 4:7] = 2
    target = boundary_target(labels)
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 2, 2, 2, 2, 2, 2, 0],
            [0, 2, 1, 2, 2, 1, 2, 0],
            [0, 2, 2, 2, 2, 2, 2, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(target, expected)


def test_distance_is_zero_where_objects_touch():
    labels = np.zeros((5, 8), dtype=np.int32)
    labels[1:4, 1:4] = 1
    labels[1:4, 4:7] = 2
    labels[0, 7] = 3  # a lone pixel keeps its peak
    distance = distance_target(labels)
    assert distance[1:4, 3].max() == 0 and distance[1:4, 4].max() == 0
    # object 1: edge pixels are one step (1/2 of the centre's two), its centre peaks at 1
    assert distance[2, 2] == 1.0 and distance[1, 1] == 0.5 and distance[0, 7] == 1.0


def test_thin_objects_keep_a_seed():
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[2, 1:5] = 1  # a line: no interior by the boundary rule
    labels[4, 4] = 2  # one pixel
    target = boundary_target(labels)
    assert (target[labels == 1] == INTERIOR).all() and target[4, 4] == INTERIOR


def test_affinities_by_hand():
    labels = np.array([[1, 1, 2], [0, 2, 2]])
    affs, valid = affinity_target(labels, [(-1, 0), (0, -1)])
    # (-1, 0): the pixel above; (0, -1): the pixel to the left
    np.testing.assert_array_equal(affs[0], [[0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(affs[1], [[0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(valid[1], [[False, True, True], [False, True, True]])


def test_remove_small_and_renumber():
    labels = np.array([[1, 1, 0, 5], [1, 0, 0, 0], [0, 0, 9, 9]])
    np.testing.assert_array_equal(remove_small(labels, 2), [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 2, 2]])


def test_noisy_probabilities_still_separate_touching_objects():
    rng = np.random.default_rng(0)
    labels = scene_2d()
    target = boundary_target(labels)
    interior = np.clip((target == INTERIOR) * 0.8 + rng.normal(0, 0.1, labels.shape), 0, 1)
    boundary = np.clip((target == BOUNDARY) * 0.8 + rng.normal(0, 0.1, labels.shape), 0, 1)
    scores = object_scores(labels, from_boundary(interior, boundary, min_size=1))
    assert scores["f1_50"] == 1.0  # every object found once at IoU > 0.5


def test_targets_take_ids_near_2_32_and_negative_ids_as_objects():
    labels = scene_2d()
    odd = np.where(labels > 0, labels.astype(np.int64) * -1, 0)  # negative ids
    odd[labels == 2] = 2**32 - 1  # and one near the top of uint32 (distance_target allocated 32 GB for it)
    assert np.array_equal(boundary_target(odd), boundary_target(labels))
    assert np.array_equal(distance_target(odd), distance_target(labels))
    huge = np.where(labels > 0, labels.astype(np.uint32) + np.uint32(4_000_000_000), 0).astype(np.uint32)
    assert np.array_equal(distance_target(huge), distance_target(labels))
    offsets = nearest_offsets(2)
    assert np.array_equal(affinity_target(odd, offsets)[0], affinity_target(labels, offsets)[0])


@pytest.mark.parametrize("offset", [(-7, 0), (0, 6), (-5, 0), (9, -9)])
def test_offsets_as_long_as_the_image_have_no_neighbours(offset):
    labels = np.zeros((5, 5), dtype=np.int32)
    labels[1:4, 1:4] = 1
    affs, valid = affinity_target(labels, [offset])  # raised a broadcasting error past the image's side
    assert not valid.any() and not affs.any()
    offsets = [*nearest_offsets(2), offset]
    affs, _ = affinity_target(labels, offsets)
    assert same_partition(labels, from_affinities(affs.astype(np.float32), offsets, labels > 0))


def test_an_offset_of_the_wrong_rank_is_refused_by_the_post_processing_too():
    with pytest.raises(ValueError, match=r"offset \(1, 0, 0\) has 3 axes; the labels have 2"):
        from_affinities(np.ones((1, 5, 5)), [(1, 0, 0)], np.ones((5, 5)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.0, 1.0, 1.0), (5.0, -1.0, 1.0)])
def test_a_spacing_that_does_not_fit_the_labels_is_refused(spacing):
    with pytest.raises(ValueError, match=r"needs 3 positive sizes, one per axis"):
        distance_target(scene_3d(), spacing)  # was scipy's RuntimeError, or distances from a negative size


def test_anisotropic_spacing_still_round_trips():
    labels = scene_3d()
    distance = distance_target(labels, spacing=(5.0, 1.0, 1.0))
    assert same_partition(labels, from_distance((labels > 0).astype(np.float32), distance))


def test_a_ring_two_pixels_wide_stays_one_object_through_the_boundary_target():
    labels = np.zeros((12, 12), dtype=np.int32)
    labels[1:11, 1:11] = 1
    labels[3:9, 3:9] = 0  # a ring two pixels wide: its interior was four corner pixels, four seeds, four objects
    labels[5:7, 5:7] = 2  # and an object in its hole
    target = boundary_target(labels)
    interior = (target == INTERIOR).astype(np.float32)
    boundary = (target == BOUNDARY).astype(np.float32)
    assert same_partition(labels, from_boundary(interior, boundary))


def test_the_distance_item_and_model_outputs_round_trip_touching_discs_and_one_pixel_objects():
    """The training item of data.target=distance (foreground classes, distance map) read back as the model's
    probabilities ``(foreground, distance)`` gives the ids back with the default parameters, and unlabelled
    pixels (255) are left out of both maps."""
    from unet_train.data.instances import InstanceTarget
    from unet_train.objects import params as pp

    from .discs import touching_discs

    _, labels = touching_discs(np.random.default_rng(3))
    labels = labels.astype(np.int64)
    labels[60, 1] = labels.max() + 1  # a one-pixel object next to nothing
    labels[0, 0] = labels.max() + 1  # and one in the corner
    encoded = labels.astype(np.float32)
    encoded[40:44, 40:44] = 255  # unlabelled
    mask, ids, extras = InstanceTarget("distance")(encoded)
    assert set(np.unique(mask)) == {0, 1, 255} and (mask[40:44, 40:44] == 255).all()
    assert (extras["distance"][40:44, 40:44] == 0).all()
    clean = np.where(encoded == 255, 0, labels)
    np.testing.assert_array_equal(ids, clean)  # the ids kept for the object metrics: unlabelled pixels are 0
    probabilities = np.stack([(mask == 1).astype(np.float32), extras["distance"]])
    found = pp.instances("distance", probabilities, pp.defaults("distance"))
    assert same_partition(clean, found) and found.max() == len(np.unique(clean)) - 1


def test_the_affinity_post_processing_joins_face_neighbours_only():
    """A long offset that wrongly says 'same object' across the seam of two touching boxes does not merge them."""
    from unet_train.objects import params as pp

    labels = np.zeros((6, 8), dtype=np.int32)
    labels[1:5, 1:4], labels[1:5, 4:7] = 1, 2
    offsets = [(-1, 0), (0, -1), (0, -3)]
    affs, _ = affinity_target(labels, offsets)
    affs[2] = 1  # the long-range map is all wrong
    prob = np.concatenate([(labels > 0)[None], affs]).astype(np.float32)
    assert pp.outputs_of("affinities", prob, offsets)["offsets"] == offsets[:2]
    assert same_partition(labels, pp.instances("affinities", prob, {"threshold": 0.5, "min_size": 1}, offsets))
