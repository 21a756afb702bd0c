"""Plans for volumes: the fingerprint read lazily from the files (spacing, shapes), the dims rule, the crop and
the pooling per axis for isotropic, anisotropic EM and thick-slice MR volumes, and plan=auto on a folder."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import compose_config
from tests.data.volume_folder import ball_volume, make_volume_folder, write_tiff
from unet_train.build import build_data
from unet_train.data.normalize import resolve_spec
from unet_train.data.volume_data import VolumeCase, VolumeDataset
from unet_train.inference.volumes import Volume
from unet_train.labels import IGNORE_INDEX
from unet_train.plan.derive import DeviceFacts, plan_yaml
from unet_train.plan.planner import make_plan
from unet_train.plan.volume_derive import (
    CROP_VOXELS,
    choose_dims,
    derive_section_plan,
    derive_volume_plan,
    preferred_dims,
    validation_block,
    volume_layout,
)
from unet_train.plan.volume_fingerprint import (
    SAMPLED_PLANES,
    compute_volume_fingerprint,
    sampled_planes,
    volume_fingerprint,
)

BIN = Path(sys.executable).parent
CPU = DeviceFacts(kind="cpu", name="test CPU", step_seconds={8: 0.1, 16: 0.3, 32: 1.0})


def fingerprint(spacing, smallest, median=None, volumes=10, val=2):
    """A volume fingerprint: ``smallest``/``median`` shapes and the median ``spacing``, all z, y, x."""
    median = median or smallest
    return {
        "num_images": volumes, "num_volumes": volumes, "num_val_images": val, "val_pixels": val * math.prod(median),
        "num_planes": volumes * median[0], "num_val_planes": val * median[0],
        "shape": {"min": list(smallest), "median": list(median)}, "spacing": {"median": list(spacing)},
        "anisotropy": max(spacing) / min(spacing),
        "height": {"min": smallest[1], "median": median[1], "max": median[1]},
        "width": {"min": smallest[2], "median": median[2], "max": median[2]},
        "channels": [1], "dtypes": ["i2"], "bit_depth": 16,
        "intensity": [{"min": -1000.0, "max": 3000.0, "percentiles": {"99.8": 1500.0}}],
        "classes": {"0": 0.9, "1": 0.1}, "class_images": {"0": 1.0, "1": 1.0}, "num_classes": 2,
        "foreground_share": {"min": 0.1, "median": 0.1, "max": 0.1, "mean": 0.1},
    }  # fmt: skip


def test_isotropic_volumes_are_planned_3d_with_cubic_crops_pooled_on_every_axis():
    small = fingerprint((1.0, 1.0, 1.0), (64, 64, 64))
    assert preferred_dims(small)[0] == 3
    # A GPU holds the whole 64^3 volume (2^18 <= 2^21 voxels): pooled 4 times to a 4^3 bottleneck (8 // 2 = 4, then
    # 4 // 2 = 2 < 4 stops); the step keeps 2^21 voxels with 8x more crops (16, the cap).
    gpu = volume_layout(small, "cuda")
    assert (gpu.patch, gpu.pool_factors, gpu.batch, gpu.bottleneck) == ((64, 64, 64), [[2, 2, 2]] * 4, 16, [4, 4, 4])
    # A CPU (2^16 voxels): each axis in turn (the longest, z first on ties) 64 -> 57 -> 51 -> 45 -> 40; 40x40x45 =
    # 72,000 is still over 65,536, 40^3 = 64,000 is not. 40 -> 20 -> 10 -> 5: three poolings (5 // 2 = 2 < 4).
    cpu = volume_layout(small, "cpu")
    assert math.prod(cpu.patch) <= CROP_VOXELS["cpu"]
    assert (cpu.patch, cpu.pool_factors, cpu.batch, cpu.bottleneck) == ((40, 40, 40), [[2, 2, 2]] * 3, 2, [5, 5, 5])


def test_anisotropic_em_pools_the_plane_first_and_prefers_2d_for_a_short_stack():
    em = fingerprint((50.0, 4.0, 4.0), (25, 512, 512), (30, 512, 512))  # ISBI-like serial sections, nm
    dims, reason = preferred_dims(em)
    assert dims == 2 and "anisotropy 12.5" in reason and "30 planes per volume" in reason
    layout = volume_layout(em, "cuda")
    # z (50 nm) waits until y, x are pooled to 32 nm (50 <= 2 x 32), then pools with them: 20 -> 10 -> 5.
    assert layout.pool_factors == [[1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert layout.patch == (20, 288, 288) and layout.bottleneck == [5, 9, 9]
    assert "z at pooling 0: voxel side 50 > 2x the finest 4" in layout.not_pooled
    # The crop spans about as much physical length on every axis (z 20 x 50 = 1000 nm, y 288 x 4 = 1152 nm).
    cpu = volume_layout(em, "cpu")
    assert cpu.patch == (7, 80, 80) and cpu.pool_factors == [[1, 2, 2]] * 4 and min(cpu.bottleneck) >= 4
    # A deep stack of the same sections: 3D sees z once its planes are pooled.
    assert preferred_dims(fingerprint((50.0, 4.0, 4.0), (200, 512, 512)))[0] == 3


def test_thick_slice_mr_waits_two_poolings_before_pooling_z():
    mr = fingerprint((5.0, 1.0, 1.0), (24, 256, 256))  # 5 mm slices, 1 mm in-plane
    assert preferred_dims(mr)[0] == 2
    layout = volume_layout(mr, "cuda")  # the whole 24x256x256 volume fits 2^21 voxels
    # z at 5 mm > 2 x 1, > 2 x 2, then <= 2 x 4: pooled at the third level; 6 // 2 = 3 < 4 stops it at the fifth.
    assert layout.patch == (24, 256, 256)
    assert layout.pool_factors == [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert layout.bottleneck == [6, 8, 8] and "z at pooling 4: the patch would keep 3 < 4 voxels" in layout.not_pooled
    # Not a thick z (the coarse axis is x): 3D whatever the planes.
    assert preferred_dims(fingerprint((1.0, 1.0, 5.0), (24, 256, 256)))[0] == 3


def test_the_volume_plan_writes_3d_keys_with_reasons_and_the_schedule():
    em = fingerprint((50.0, 4.0, 4.0), (25, 512, 512))
    layout = volume_layout(em, "cpu")
    plan = {c.key: c for c in derive_volume_plan(em, CPU, 600.0, layout)}
    assert plan["data.patch_size"].value == [7, 80, 80] and plan["data.batch_size"].value == 2
    assert plan["data.patch_size"].reason == (  # no volume smaller than the crop: nothing padded
        "z y x: the median volume (25x512x512) shrunk along its longest physical side to at most 65536 voxels on "
        "cpu, on the pooling grid"
    )
    assert plan["model.spatial_dims"].value == 3 and plan["model.depth"].value == 4
    assert plan["model.pool_factors"].value == [[1, 2, 2]] * 4
    assert "anisotropy 12.5" in plan["model.spatial_dims"].reason
    assert "data.spatial_dims" not in plan  # not asked for: derive_volume_plan is the rule's 3D plan
    # The same time-budgeted schedule as images: width from the timed steps, validation in 10 % of the budget.
    assert plan["model.base_channels"].value == 16 and plan["trainer.val_share"].value == 0.1
    assert plan["trainer.max_time"].value == 600.0 and plan["data.normalize"].value["scheme"] == "percentile"
    isbi = {c.key: c for c in derive_volume_plan(em, CPU, 600.0, layout, dims_key=True)}
    assert isbi["data.spatial_dims"].value == 3
    assert "data.spatial_dims=3 asks for 3D" in isbi["data.spatial_dims"].reason
    written = yaml.safe_load(plan_yaml(list(plan.values()), ["a volume plan"]))
    assert written["model"]["pool_factors"] == [[1, 2, 2]] * 4 and written["data"]["patch_size"] == [7, 80, 80]
    # Validation is timed on at most twice the crop per axis, and scaled to the whole volumes.
    iso = fingerprint((1.0, 1.0, 1.0), (64, 64, 64), (100, 200, 200))
    assert validation_block(iso, layout) == (14, 160, 160)
    assert validation_block({**iso, "val_shape": [5, 512, 100]}, layout) == (5, 160, 100)  # the validation volumes


def test_one_small_volume_does_not_shrink_the_crop_of_the_others():
    """The crop comes from the median volume: one 8x16x16 volume among three 48x64x64 ones is padded to the crop
    (its padding's labels ignored), not the size every crop is cut to."""
    cases = []
    for index, shape in enumerate([(8, 16, 16), (48, 64, 64), (48, 64, 64), (48, 64, 64)]):
        mask = np.zeros(shape, np.uint8)
        mask[:, :4, :4] = 1
        image, labels = Volume(np.zeros(shape, np.uint8), "zyx", f"i{index}"), Volume(mask, "zyx", f"m{index}")
        cases.append(VolumeCase(image, labels, f"v{index}", (1.0, 1.0, 1.0), spec=resolve_spec(None)))
    fp = compute_volume_fingerprint(cases, [], 2)
    assert fp["shape"] == {"median": [48, 64, 64], "min": [8, 16, 16]}
    # A GPU (2^21 voxels) holds the whole median volume: z 48 -> 24 -> 12 -> 6 stops (3 < 4), y and x pool 4 times.
    gpu = volume_layout(fp, "cuda")
    assert (gpu.patch, gpu.batch, gpu.bottleneck) == ((48, 64, 64), 16, [6, 4, 4])
    # A CPU (2^16): y, x 64 -> 57 -> 51 -> 45, z 48 -> 43, y, x -> 40, z -> 38 (60,800 voxels); three poolings of 2
    # put it on a grid of 8: 32x40x40.
    cpu = volume_layout(fp, "cpu")
    assert (cpu.patch, cpu.pool_factors, cpu.batch) == ((32, 40, 40), [[2, 2, 2]] * 3, 2)
    plan = {c.key: c for c in derive_volume_plan(fp, CPU, 600.0, cpu)}
    assert plan["data.patch_size"].value == [32, 40, 40]
    assert plan["data.patch_size"].reason == (
        "z y x: the median volume (48x64x64) shrunk along its longest physical side to at most 65536 voxels on cpu, "
        "on the pooling grid; volumes smaller than it (the smallest 8x16x16) are padded to it in training, the "
        "padding's labels ignored"
    )
    # What training reads of the small volume: a whole crop, the voxels outside the volume ignored by the loss.
    item = VolumeDataset(cases[:1], cpu.patch)[(0, 0)]
    assert tuple(item["image"].shape) == (1, 32, 40, 40) and tuple(item["mask"].shape) == (32, 40, 40)
    assert int((item["mask"] != IGNORE_INDEX).sum()) == 8 * 16 * 16


def test_the_fingerprint_reads_spacing_from_a_nifti_and_a_tiff_and_samples_planes(tmp_path, monkeypatch):
    nibabel = pytest.importorskip("nibabel")
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    image, mask = ball_volume(0, (8, 32, 32))
    for sub, array in (("images", image), ("masks", mask)):  # NIfTI stores (x, y, z): zooms 0.7, 0.8, 3 mm
        volume = nibabel.Nifti1Image(array.transpose(2, 1, 0), np.diag([0.7, 0.8, 3.0, 1.0]))
        nibabel.save(volume, tmp_path / sub / "a.nii.gz")
    deep_image, deep_mask = ball_volume(1, (40, 24, 32))
    write_tiff(tmp_path / "images" / "b.tif", deep_image, (2.0, 0.5, 0.5))
    write_tiff(tmp_path / "masks" / "b.tif", deep_mask, (2.0, 0.5, 0.5))
    read: list[tuple[str, int]] = []
    real = Volume.read_block

    def spy(self, origin, size):
        read.append((Path(self.name).name, size[0]))
        return real(self, origin, size)

    data = build_data(compose_config(["data=volumes", f"data.root={tmp_path}", "data.val_fraction=0"]).data)
    monkeypatch.setattr(Volume, "read_block", spy)
    fp = volume_fingerprint(data)
    assert fp["spacing"]["per_volume"] == {"a": [3.0, pytest.approx(0.8), pytest.approx(0.7)], "b": [2.0, 0.5, 0.5]}
    assert fp["spacing"]["median"] == pytest.approx([2.5, 0.65, 0.6])
    assert fp["anisotropy"] == pytest.approx(2.5 / 0.6)
    assert fp["shape"] == {"median": [24, 28, 32], "min": [8, 24, 32]} and fp["sizes"] == {"8x32x32": 1, "40x24x32": 1}
    # Lazy: masks read plane by plane, every plane of the 8-plane volume, 16 spread planes of the 40-plane one.
    assert all(depth == 1 for _, depth in read)
    assert sorted(read).count(("b.tif", 1)) == SAMPLED_PLANES and sorted(read).count(("a.nii.gz", 1)) == 8
    assert sampled_planes(40) == [0, 3, 5, 8, 10, 13, 16, 18, 21, 23, 26, 29, 31, 34, 36, 39]
    # Class shares over the planes read: all of a, b's sampled planes.
    planes = sampled_planes(40)
    voxels = (mask > 0).sum() + (deep_mask[planes] > 0).sum()
    assert fp["classes"]["1"] == pytest.approx(voxels / (mask.size + deep_mask[planes].size))
    assert fp["num_images"] == 2 and fp["num_val_images"] == 0 and fp["num_classes"] == 2 and fp["val_shape"] is None


def test_a_short_anisotropic_stack_gets_a_2_5d_plan_of_its_sections():
    em = fingerprint((50.0, 4.0, 4.0), (25, 512, 512), (30, 512, 512))  # ISBI-like: 10 stacks, 2 validate
    dims = choose_dims(em)
    assert (dims.dims, dims.context) == (2, 1) and "anisotropy 12.5" in dims.reason
    assert "at an anisotropy of 12.5 (at most 20)" in dims.context_reason
    plan = {c.key: c for c in derive_section_plan(em, CPU, 600.0, dims)}
    assert plan["data.spatial_dims"].value == 2 and plan["data.context_slices"].value == 1
    assert "3 section(s) of 1 channel(s), a 3-channel input" in plan["data.context_slices"].reason
    assert plan["model.spatial_dims"].value == 2 and "data.pool_factors" not in plan
    assert plan["model.spatial_dims"].reason == "a 2D UNet on the 300 training and 60 validation sections"
    # The image planner's geometry of a 512 px section on a CPU: 256 px crops, 5 poolings (8 px bottleneck), 4 per
    # step; the width from the (3-channel) timed steps; the in_channels key stays the sections' own channels.
    assert (plan["data.patch_size"].value, plan["model.depth"].value, plan["data.batch_size"].value) == (256, 5, 4)
    assert plan["data.in_channels"].value == 1 and plan["model.base_channels"].value == 16
    # Validation of whole sections: 60 of them, each scaled from the timed 512x512 one.
    timed = DeviceFacts(kind="cpu", name="t", step_seconds={8: 0.1, 16: 0.3}, val_seconds={16: 0.5},
                        val_pixels=512 * 512)  # fmt: skip
    planned = {c.key: c for c in derive_section_plan(em, timed, 600.0, dims)}
    assert "20 of the 60 validation images" in planned["trainer.val_subset"].reason  # 10 s per validation, 6 of them
    # Extreme anisotropy (a neighbour 25 pixels away) or too few planes: plain 2D on the sections.
    assert (choose_dims(fingerprint((100.0, 4.0, 4.0), (25, 512, 512))).context,
            choose_dims(fingerprint((50.0, 4.0, 4.0), (2, 512, 512))).context) == (0, 0)  # fmt: skip


def test_the_data_configs_dimensions_win_over_the_rule():
    em, iso = fingerprint((50.0, 4.0, 4.0), (25, 512, 512)), fingerprint((1.0, 1.0, 1.0), (64, 64, 64))
    assert choose_dims(iso).dims == 3 and choose_dims(iso).reason.endswith("voxels within 3x of each other, 3D")
    forced = choose_dims(em, spatial_dims=3)
    assert forced.dims == 3
    assert forced.reason.endswith("; data.spatial_dims=3 asks for 3D (data.spatial_dims=2 plans 2D)")
    asked = choose_dims(iso, context_slices=2)  # the rule says 3D; the user's k is kept
    assert (asked.dims, asked.context, asked.context_reason) == (2, 2, "data.context_slices=2 as asked")
    assert (choose_dims(em, spatial_dims=2).dims, choose_dims(em, spatial_dims=2).context) == (2, 0)


def test_on_a_cpu_every_volume_is_planned_2_5d_unless_3d_is_asked_for(tmp_path):
    """In a CPU's budget a 3D net sees too few voxels (the mni and abct cells): isotropic and many-plane
    anisotropic volumes get the 2.5D plan there, and the 3D one on a GPU; data.spatial_dims=3 still plans 3D."""
    iso = fingerprint((1.0, 1.0, 1.0), (64, 64, 64))
    tall = fingerprint((4.0, 1.0, 1.0), (200, 256, 256))  # anisotropic, but 64+ planes: 3D on a GPU
    for fp in (iso, tall):
        cpu, gpu = choose_dims(fp, kind="cpu"), choose_dims(fp, kind="cuda")
        assert (cpu.dims, cpu.context, gpu.dims, gpu.context) == (2, 1, 3, 0)
        assert "on a CPU 2D (2.5D: neighbouring planes as channels) is preferred" in cpu.reason
    forced = choose_dims(iso, spatial_dims=3, kind="cpu")
    assert forced.dims == 3 and forced.reason.endswith(
        "; data.spatial_dims=3 asks for 3D (data.spatial_dims=2 plans 2D)"
    )
    objects = choose_dims({**iso, "labels": "instances"}, kind="cpu")  # object ids are linked along z: 3D
    assert objects.dims == 3 and objects.reason.endswith("; object ids train 3D models only")
    for i in range(3):  # isotropic 1 um voxels
        image, mask = ball_volume(i, (16, 16, 16))
        for sub, array in (("images", image), ("masks", mask)):
            (tmp_path / "data" / sub).mkdir(parents=True, exist_ok=True)
            write_tiff(tmp_path / "data" / sub / f"vol{i}.tif", array, spacing=(1.0, 1.0, 1.0))
    cfg = compose_config(["data=volumes", f"data.root={tmp_path / 'data'}", "data.num_workers=0"])
    make_plan(cfg.data, 60.0, "cpu", tmp_path / "plan.yaml", measure=False)
    planned = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert (planned["data"]["context_slices"], planned["model"]["spatial_dims"]) == (1, 2)


def test_object_ids_of_a_short_anisotropic_stack_get_a_3d_plan():
    """The rule would plan 2.5D; sections' objects are not linked along z, so object ids train a 3D net."""
    em = {**fingerprint((50.0, 4.0, 4.0), (25, 512, 512)), "labels": "instances"}
    dims = choose_dims(em)
    assert (dims.dims, dims.context) == (3, 0) and dims.reason.endswith("; object ids train 3D models only")


def test_a_plan_of_volumes_of_touching_balls_learns_their_ids_with_a_3d_net(tmp_path):
    """Label volumes of object ids: the objects are fingerprinted in 3D (a ball's diameter of the median volume, all
    touching) and the target's classes drawn from them; the plan trains data.labels=instances with that target."""
    import yaml

    from tests.objects.balls import write_balls

    root = write_balls(tmp_path / "balls", 3)
    cfg = compose_config(["data=volumes", f"data.root={root}", "data.labels=instances"])
    out = tmp_path / "plan.yaml"
    fp = make_plan(cfg.data, 60.0, "cpu", out, measure=False)
    objects = fp["objects"]
    assert objects["objects"] == 8 and objects["touching_share"] == 1.0
    assert objects["median_diameter"] == pytest.approx((6 * objects["median_area"] / np.pi) ** (1 / 3))
    assert (
        fp["target"] == "boundary" and "objects under 10 voxels have no room for a distance peak" in fp["target_reason"]
    )
    assert f"median diameter {objects['median_diameter']:.1f} voxels" in fp["target_reason"]
    assert set(fp["classes"]) == {"0", "1", "2"} and fp["num_classes"] == 3  # the boundary target's classes
    planned = yaml.safe_load(out.read_text())
    assert (planned["data"]["labels"], planned["data"]["target"], planned["data"]["num_classes"]) == (
        "instances", "boundary", 3)  # fmt: skip
    assert planned["monitor"] == "val/map" and planned["model"]["spatial_dims"] == 3


def test_make_plan_on_volumes_writes_what_the_config_asks_for(tmp_path):
    root = make_volume_folder(tmp_path / "data", count=3, shape=(8, 16, 16))  # 2 x 0.5 x 0.5: anisotropy 4

    def planned(*overrides):
        output = tmp_path / f"plan{len(list(tmp_path.glob('plan*.yaml')))}.yaml"
        cfg = compose_config(["data=volumes", f"data.root={root}", "data.num_workers=0", *overrides])
        make_plan(cfg.data, 60.0, "cpu", output, measure=False)
        return yaml.safe_load(output.read_text())

    rule = planned()
    assert rule["data"]["spatial_dims"] == 2 and rule["data"]["context_slices"] == 1
    assert rule["model"]["spatial_dims"] == 2 and rule["data"]["patch_size"] == 16
    assert "pool_factors" not in rule["model"]
    forced = planned("data.spatial_dims=3")
    assert forced["data"]["spatial_dims"] == 3 and forced["model"]["spatial_dims"] == 3
    assert forced["model"]["pool_factors"] == [[1, 2, 2], [2, 2, 2]] and forced["data"]["patch_size"] == [8, 16, 16]
    mine = planned("data.context_slices=2")  # once refused: now a 2.5D plan with the user's k
    assert (mine["data"]["spatial_dims"], mine["data"]["context_slices"], mine["model"]["spatial_dims"]) == (2, 2, 2)


@pytest.mark.slow
def test_plan_auto_on_a_short_anisotropic_folder_trains_a_2_5d_model(tmp_path):
    root = make_volume_folder(tmp_path / "data", count=3, shape=(8, 16, 16))
    result = subprocess.run(
        [str(BIN / "unet-train"), "data=volumes", f"data.root={root}", "plan=auto", "trainer=cpu",
         "trainer.max_time=4", "data.num_workers=0", "trainer.progress=never", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    plan = yaml.safe_load((run / "experiment" / "plan.yaml").read_text())
    fp = json.loads((run / "fingerprint.json").read_text())
    assert fp["spacing"]["median"] == [2.0, 0.5, 0.5] and (fp["num_planes"], fp["num_val_planes"]) == (16, 8)
    # Anisotropy 4 > 3 with 8 planes: a 2D net on the sections, one neighbour on each side.
    assert (plan["data"]["spatial_dims"], plan["data"]["context_slices"], plan["data"]["patch_size"]) == (2, 1, 16)
    resolved = yaml.safe_load((run / "resolved_config.yaml").read_text())
    assert resolved["model"]["spatial_dims"] == 2 and resolved["data"]["context_slices"] == 1
    assert resolved["trainer"]["max_time"] == 4.0 and json.loads((run / "metrics.json").read_text())["steps"] >= 1
    trained = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert trained["config"]["model"]["in_channels"] == 3  # the 3 sections of the grey volumes, stacked


def test_a_volume_plan_times_3d_steps_and_a_3d_validation_block_and_stops_at_a_width_out_of_memory(monkeypatch):
    from unet_train.engine import autotune
    from unet_train.engine import evaluate as evaluate_module
    from unet_train.plan.measure import measure_device

    shapes, real_tune, real_evaluate = [], autotune.tune, evaluate_module.evaluate

    def tune(runtime, phase, make_step, what, shape, *args, **kwargs):
        shapes.append(shape)
        if len(shapes) == 3:  # the third width does not fit the device's memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_tune(runtime, phase, make_step, what, shape, *args, **kwargs)

    def evaluate(model, loader, runtime, num_classes, loss_fn=None, on_batch=None):
        (batch,) = loader
        shapes.append(tuple(batch["image"].shape))
        assert model.pool_factors == [(1, 2, 2)]  # the planned pooling per axis, in 3D
        return real_evaluate(model, loader, runtime, num_classes, loss_fn=loss_fn, on_batch=on_batch)

    monkeypatch.setattr(autotune, "tune", tune)
    monkeypatch.setattr(evaluate_module, "evaluate", evaluate)
    facts = measure_device(torch.device("cpu"), 1, 2, patch=(4, 8, 8), depth=1, batch=2, channels_last=False, steps=1,
                           budget_s=1e6, val_size=(6, 12, 12), pool_factors=[[1, 2, 2]])  # fmt: skip
    assert shapes[:3] == [(2, 1, 4, 8, 8)] * 3 and shapes[3] == (1, 1, 6, 12, 12)
    assert sorted(facts.step_seconds) == [8, 16]  # the width out of memory is not planned; the narrower ones are
    assert list(facts.val_seconds) == [16] and facts.val_pixels == 6 * 12 * 12
