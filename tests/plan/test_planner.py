"""unet-plan end to end on a small folder: the files it writes, loading a plan, the trust rule, plan=auto."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import compose_config
from unet_train.errors import ConfigError
from unet_train.plan.planner import (
    apply_plan,
    fingerprint_path,
    load_plan,
    make_plan,
    parse_budget,
    warn_if_made_for_other_data,
)
from unet_train.trust import UntrustedConfigError

BIN = Path(sys.executable).parent


@pytest.fixture
def folder(tmp_path):
    """Six 16-bit 48x64 images with a sparse square of class 1 (2% of the pixels)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        image = rng.integers(1000, 1040, (48, 64)).astype(np.uint16)
        mask = np.zeros((48, 64), np.uint8)
        mask[10:18, 20:28] = 255
        image[mask > 0] += 50
        tifffile.imwrite(root / "images" / f"{i}.tif", image)
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def test_parse_budget():
    assert [parse_budget(v) for v in (600, "90s", "10m", "1.5h")] == [600.0, 90.0, 600.0, 5400.0]
    with pytest.raises(ConfigError, match=r"budget='ten' must be a positive time such as 600, 90s, 10m or 1.5h\."):
        parse_budget("ten")


def test_fingerprint_goes_beside_a_plan_of_ones_own(tmp_path):
    # The default layout keeps <run>/fingerprint.json; a path of one's own never writes into its grandparent.
    default = tmp_path / "run" / "experiment" / "plan.yaml"
    assert fingerprint_path(default) == tmp_path / "run" / "fingerprint.json"
    assert fingerprint_path(tmp_path / "plans" / "mine.yaml") == tmp_path / "plans" / "mine.fingerprint.json"
    # A plan of one's own in a folder that happens to be called experiment: still beside it, one per plan.
    own = tmp_path / "runs" / "experiment"
    assert fingerprint_path(own / "a.yaml") == own / "a.fingerprint.json"
    assert fingerprint_path(own / "b.yaml") != fingerprint_path(own / "a.yaml")


def test_unet_plan_writes_fingerprint_and_a_loadable_plan(folder):
    result = subprocess.run(
        [str(BIN / "unet-plan"), f"data.root={folder}", "budget=2m", "measure=false",
         f"paths.output_dir={folder.parent}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The plan is the run's output: in its run folder, nothing written into the data folder.
    (run,) = folder.parent.glob("outputs/plan/*/*")
    assert sorted(p.name for p in folder.iterdir()) == ["images", "masks"]
    plan_path = run / "experiment" / "plan.yaml"
    fingerprint = json.loads((run / "fingerprint.json").read_text())
    assert fingerprint["num_images"] == 5 and fingerprint["num_val_images"] == 1  # val_fraction 0.2 of 6
    assert fingerprint["bit_depth"] == 16 and fingerprint["sizes"] == {"48x64": 5}
    assert fingerprint["classes"]["1"] == pytest.approx(64 / (48 * 64))
    text = plan_path.read_text()
    assert text.startswith("# @package _global_") and text in result.stdout
    assert "budget 120 s on cpu, not timed (measure=false).\n" in text and "~0.0 s" not in text
    assert "from a guessed 0.5 s per step: nothing was timed" in text
    plan = yaml.safe_load(text)
    assert plan["data"]["num_classes"] == 2 and plan["data"]["patch_size"] == 48 and plan["model"]["depth"] == 2
    assert plan["trainer"]["max_time"] == 120.0
    assert plan["data"]["normalize"]["scheme"] == "percentile" and plan["data"]["foreground_oversample"] == 0.33

    cfg = compose_config(["data=folder", f"data.root={folder}", "model.base_channels=8"])
    merged = apply_plan(cfg, load_plan(plan_path), ["data.root=x", "model.base_channels=8", "data=folder"])
    assert merged.data.patch_size == 48 and merged.trainer.max_time == 120.0
    assert merged.model.base_channels == 8  # the command line wins over the plan
    assert merged.loss._target_ == "unet_train.losses.BCEDiceLoss"
    # A loss chosen on the command line wins over the planned one too.
    chosen = compose_config(["data=folder", f"data.root={folder}", "loss=dice"])
    assert apply_plan(chosen, load_plan(plan_path), ["data=folder", "loss=dice"]).loss._target_ == chosen.loss._target_
    # The same file as a Hydra experiment, from a search path added on the command line.
    composed = compose_config(
        ["data=folder", f"data.root={folder}", f"hydra.searchpath=[file://{run}]", "experiment=plan"]
    )
    assert composed.data.patch_size == 48 and composed.trainer.max_time == 120.0 and composed.model.depth == 2
    assert composed.data.normalize.scheme == "percentile" and merged.data.normalize.scheme == "percentile"


def test_a_plan_naming_foreign_code_is_refused(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("# @package _global_\nloss:\n  _target_: os.system\n  command: echo hi\n")
    with pytest.raises(
        UntrustedConfigError, match=r"config\.loss\._target_='os\.system' is not a unet-train component"
    ):
        load_plan(path)
    assert load_plan(path, trusted=True).loss._target_ == "os.system"
    with pytest.raises(ConfigError, match=r"plan=.*missing\.yaml: no such file; write one with unet-plan"):
        load_plan(tmp_path / "missing.yaml")


def test_make_plan_times_the_device(folder, tmp_path):
    cfg = compose_config(["data=folder", f"data.root={folder}"])
    out = tmp_path / "plan" / "experiment" / "plan.yaml"
    make_plan(cfg.data, 60.0, "cpu", out)
    text = out.read_text()
    assert "ms" in text and "base_channels: " in text  # the width's reason quotes the measured step times
    assert yaml.safe_load(text)["model"]["base_channels"] in (8, 16, 32)


@pytest.mark.slow
def test_plan_auto_plans_and_trains(folder, tmp_path):
    result = subprocess.run(
        [str(BIN / "unet-train"), "data=folder", f"data.root={folder}", "plan=auto", "trainer=cpu",
         "trainer.max_time=6", "data.num_workers=0", "trainer.progress=never", f"paths.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = tmp_path.glob("outputs/*/*/metrics.json")
    plan = yaml.safe_load((metrics_file.parent / "experiment" / "plan.yaml").read_text())  # in the run's folder
    assert sorted(p.name for p in folder.iterdir()) == ["images", "masks"]
    resolved = yaml.safe_load((metrics_file.parent / "resolved_config.yaml").read_text())
    assert resolved["data"]["patch_size"] == plan["data"]["patch_size"] == 48
    assert resolved["model"]["base_channels"] == plan["model"]["base_channels"]
    assert resolved["trainer"]["max_time"] == 6.0
    # Validation inside the budget: the run validates (and re-measures) as planned from a timed validation.
    assert resolved["trainer"]["val_share"] == plan["trainer"]["val_share"] == 0.1
    assert "val_subset" in plan["trainer"] and resolved["trainer"]["val_subset"] == plan["trainer"]["val_subset"]
    assert json.loads(metrics_file.read_text())["steps"] >= 1


def test_plan_auto_is_refused_under_torchrun(folder, monkeypatch):
    from unet_train.train import planned_config

    for name, value in (("RANK", "1"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "x"),
                        ("MASTER_PORT", "1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    cfg = compose_config(["data=folder", f"data.root={folder}", "+plan=auto"])
    with pytest.raises(ConfigError, match=r"plan=auto is not run under torchrun: each rank would plan on its own"):
        planned_config(cfg)
    assert not (folder / "unet_plan").exists()


def test_every_group_chosen_on_the_command_line_wins_over_the_plan(tmp_path):
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(
        "# @package _global_\n"
        "data:\n  patch_size: 48\n"
        "  normalize: {scheme: percentile, low: 1.0, high: 99.8, per: image, min_value: null, max_value: null,"
        " clip: false}\n"
        "loss: {_target_: unet_train.losses.BCEDiceLoss, bce_weight: 1.0, dice_weight: 1.0, smooth: 1.0}\n"
        "model:\n  depth: 2\n"
        "seed: 7\n"
    )
    typed = ["data=folder", "data.root=x", "data/normalize=zscore", "loss=dice", "model=attention", "seed=3"]
    cfg = compose_config(typed)
    merged = apply_plan(cfg, load_plan(plan_path), typed)
    # The chosen normalisation whole, with none of the plan's percentile keys left in it.
    assert OmegaConf.to_container(merged.data.normalize) == OmegaConf.to_container(cfg.data.normalize)
    assert merged.data.normalize.scheme == "zscore" and merged.loss._target_ == cfg.loss._target_
    assert merged.seed == 3  # a plain key typed on the command line wins too
    # The plan still tunes the data config and the model it was made for.
    assert merged.data.patch_size == 48 and merged.model.depth == 2 and merged.model._target_ == cfg.model._target_
    # Without those choices on the command line, the plan's options apply.
    plain = compose_config(["data=folder", "data.root=x"])
    planned = apply_plan(plain, load_plan(plan_path), ["data=folder", "data.root=x"])
    assert planned.data.normalize.scheme == "percentile" and planned.loss._target_.endswith("BCEDiceLoss")
    assert planned.seed == 7


@pytest.mark.slow
def test_unet_train_with_a_plan_trains_with_the_normalisation_chosen_on_the_command_line(folder, tmp_path):
    plan_path = tmp_path / "p.yaml"
    plan_path.write_text("# @package _global_\ndata:\n  patch_size: 32\n  normalize: {scheme: percentile, low: 1.0, "
                         "high: 99.8, per: image, min_value: null, max_value: null, clip: false}\n")  # fmt: skip
    result = subprocess.run(
        [str(BIN / "unet-train"), "data=folder", f"data.root={folder}", f"+plan={plan_path}", "data/normalize=zscore",
         "trainer=smoke", "trainer.max_epochs=1", "model.base_channels=4", "model.depth=2", "data.num_workers=0",
         "data.batch_size=2", f"paths.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (resolved,) = tmp_path.glob("outputs/*/*/resolved_config.yaml")
    data = yaml.safe_load(resolved.read_text())["data"]
    assert data["normalize"]["scheme"] == "zscore" and "low" not in data["normalize"] and data["patch_size"] == 32


def test_a_plan_path_that_cannot_be_written_is_refused_before_any_work(folder, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = subprocess.run(
        [str(BIN / "unet-plan"), f"data.root={folder}", f"output={blocker}/plan.yaml", f"paths.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().partition("[ERROR] - ")[2] == (
        f"output={blocker}/plan.yaml: cannot write in {blocker} (a file, not a folder); pass output= a path in a "
        "folder you can write to."
    )
    assert not (tmp_path / "outputs").exists()


def test_a_plan_timed_under_load_says_so(monkeypatch):
    from unet_train.plan import planner

    monkeypatch.setattr(planner.os, "getloadavg", lambda: (12.4, 11.0, 6.0))
    monkeypatch.setattr(planner.os, "sched_getaffinity", lambda pid: {0, 1})
    assert planner.load_note("cpu") == (
        "Timed under load: the load average was 12.4 on 2 cores, so the cpu step times (and the width and steps "
        "chosen from them) are likely slower than on an idle machine; plan again when it is idle."
    )
    monkeypatch.setattr(planner.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert planner.load_note("cpu") is None


def test_a_plan_key_its_group_does_not_take_is_refused(tmp_path):
    """An edited plan's misspelt key (``trainer.max_tim``) was merged and ignored: the run took the plan's budget."""
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(
        "# @package _global_\n"
        "trainer:\n  max_tim: 3.0\n  max_time: 60.0\n"
        "loss: {_target_: unet_train.losses.BCEDiceLoss, bce_weight: 1.0, dice_weight: 1.0, smooth: 1.0}\n"
    )
    typed = ["data=folder", "data.root=x"]
    with pytest.raises(ConfigError) as caught:
        apply_plan(compose_config(typed), load_plan(plan_path), typed, source=f"plan={plan_path}")
    assert str(caught.value) == (
        f"plan={plan_path}: trainer.max_tim: trainer has no key max_tim; did you mean trainer.max_time?"
    )
    # The plan's loss keys are not checked against a loss chosen on the command line (the plan's is dropped).
    plan_path.write_text(
        "# @package _global_\n"
        "loss: {_target_: unet_train.losses.BCEDiceLoss, bce_weight: 1.0, dice_weight: 1.0, smooth: 1.0}\n"
    )
    merged = apply_plan(compose_config([*typed, "loss=dice"]), load_plan(plan_path), [*typed, "loss=dice"])
    assert merged.loss._target_.endswith("DiceLoss") and "bce_weight" not in merged.loss


def test_a_plan_applied_to_other_data_says_so(folder, tmp_path, caplog):
    """A plan carries its data's normalisation, crops and classes: used on another folder, the run warns."""
    cfg = compose_config(["data=folder", f"data.root={folder}"])
    plan = tmp_path / "plans" / "mine.yaml"
    make_plan(cfg.data, 60.0, "cpu", plan, measure=False)
    assert json.loads(fingerprint_path(plan).read_text())["made_for"] == {
        "data": "unet_train.data.ImageFolder", "root": str(folder)}  # fmt: skip
    with caplog.at_level("WARNING", logger="unet_train.plan.planner"):
        warn_if_made_for_other_data(plan, cfg.data)  # its own data: nothing to say
        assert caplog.messages == []
        other = compose_config(["data=folder", f"data.root={tmp_path / 'other'}"]).data
        warn_if_made_for_other_data(plan, other)
        warn_if_made_for_other_data(tmp_path / "hand-written.yaml", other)  # no fingerprint beside it: silent
    assert caplog.messages == [
        f"plan={plan} was made for unet_train.data.ImageFolder at {folder}, but this run trains on "
        f"unet_train.data.ImageFolder at {tmp_path / 'other'}: its normalisation, crop size and classes may not "
        "suit this data; plan this data with unet-plan (or plan=auto)."
    ]


def test_model_depth_typed_over_a_volume_plan_leaves_its_pool_factors_to_the_spacing(tmp_path):
    """The plan's pool factors are one per pooling of its depth: kept, a typed depth was refused in one line."""
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text("# @package _global_\nmodel:\n  depth: 3\n  pool_factors: [[1, 2, 2], [2, 2, 2], [1, 2, 2]]\n")
    typed = ["data=volumes", "data.root=x", "model.depth=1"]
    merged = apply_plan(compose_config(typed), load_plan(plan_path), typed)
    assert merged.model.depth == 1 and merged.model.pool_factors is None  # derived from the spacing at build
    both = [*typed, "model.pool_factors=[[1,2,2]]"]  # typed as well: both as typed
    assert apply_plan(compose_config(both), load_plan(plan_path), both).model.pool_factors == [[1, 2, 2]]
    kept = ["data=volumes", "data.root=x"]
    assert apply_plan(compose_config(kept), load_plan(plan_path), kept).model.pool_factors == [
        [1, 2, 2],
        [2, 2, 2],
        [1, 2, 2],
    ]
