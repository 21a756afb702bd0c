"""Resuming with ``unet-train ckpt=...``: overrides checked against the checkpoint's config, the job's record kept."""

from __future__ import annotations

import csv
import os

import pytest
import yaml
from omegaconf import OmegaConf

from unet_train.errors import ConfigError
from unet_train.overrides import RESUME_ENV, apply_overrides, hold_resume_overrides
from unet_train.summarize import summarize

from .conftest import TINY, compose_config
from .test_cli import BIN, run


@pytest.fixture(scope="module")
def stored():
    """A checkpoint's config: the synthetic data, whose keys (data.num_val) the default data=isbi lacks."""
    return OmegaConf.create(OmegaConf.to_container(compose_config(TINY), resolve=True))


def test_overrides_apply_to_the_checkpoints_config(stored):
    cfg = apply_overrides(
        stored, ["data.num_val=3", "trainer.max_epochs=5", "+extra=[1,2]", "~deep_supervision_weights"]
    )  # (+data.extra would be refused: the data's class takes no such argument, see tests/test_added_keys.py)
    assert (cfg.data.num_val, cfg.trainer.max_epochs, list(cfg.extra)) == (3, 5, [1, 2])
    assert "deep_supervision_weights" not in cfg and stored.data.num_val == 2  # the stored config itself is left alone
    assert apply_overrides(stored, ["++data.num_val=4", "hydra.verbose=true", "ckpt=x.pt"]).data.num_val == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.num_vall=3",
            "data.num_vall=3: the checkpoint's config has no key data.num_vall; check the spelling, "
            "or write +data.num_vall=3 to add it.",
        ),
        (
            "trainer.max_epochs=abc",
            "trainer.max_epochs=abc: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        ("+trainer.nope=1", "+trainer.nope=1: Key 'nope' not in 'TrainerConfig'"),
        ("data=isbi", "data=isbi: choosing another data option is not supported on a resume; override its keys."),
        ("model=attention", "model=attention: the checkpoint fixes the model; start a new run to train another model."),
        ("seed=1,2", "seed=1,2: a sweep over values cannot apply to one checkpoint; give one value."),
        ("~data.nothing", "~data.nothing: the checkpoint's config has no data.nothing to delete."),
    ],
)
def test_wrong_overrides_on_a_resume_get_one_line(stored, override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(stored, [override])
    assert str(info.value) == message


def test_a_resume_holds_its_overrides_back_from_hydra(monkeypatch):
    monkeypatch.setenv(RESUME_ENV, "[]")  # restored (unset) after the test, whatever the calls below set
    argv = ["unet-train", "ckpt=run/checkpoints/last.pt", "data.num_val=2", "hydra.verbose=true", "--cfg", "job"]
    assert hold_resume_overrides(argv) == [
        "unet-train",
        "ckpt=run/checkpoints/last.pt",
        "hydra.verbose=true",
        "--cfg",
        "job",
    ]
    assert yaml.safe_load(os.environ[RESUME_ENV]) == ["data.num_val=2"]
    plain = ["unet-train", "data.num_val=2"]
    assert hold_resume_overrides(plain) == plain and RESUME_ENV not in os.environ
    sweep = ["unet-train", "-m", "ckpt=a.pt", "seed=1,2"]
    assert hold_resume_overrides(sweep) == sweep  # a multirun needs its overrides to sweep


@pytest.mark.slow
def test_resuming_a_sweep_job_keeps_its_record_and_its_place_in_the_summary(tmp_path):
    """A 2-job sweep over seeds, job 1 resumed with an override the default data config lacks: the job keeps
    its .hydra/ (seed column, group), the resume goes to resume_log.yaml and to the summary's resumed column."""
    tiny = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    run([str(BIN / "unet-train"), "-m", *tiny, "trainer.max_epochs=1", "seed=0,1"], cwd=tmp_path)
    (sweep,) = (p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir())
    job = sweep / "1"
    record = {name: (job / ".hydra" / name).read_text() for name in ("overrides.yaml", "config.yaml", "hydra.yaml")}

    ckpt = job / "checkpoints" / "last.pt"
    run([str(BIN / "unet-train"), f"ckpt={ckpt}", "trainer.max_epochs=2", "data.num_val=3"], cwd=tmp_path)
    assert not (tmp_path / "outputs").exists()
    assert {name: (job / ".hydra" / name).read_text() for name in record} == record
    (entry,) = yaml.safe_load((job / "resume_log.yaml").read_text())
    assert entry["ckpt"] == str(ckpt) and entry["overrides"] == ["trainer.max_epochs=2", "data.num_val=3"]
    assert yaml.safe_load((job / "resolved_config.yaml").read_text())["data"]["num_val"] == 3

    summarize(sweep, plot=False)
    with (sweep / "summary.csv").open() as handle:
        rows = {row["job"]: row for row in csv.DictReader(handle)}
    assert (rows["0"]["seed"], rows["1"]["seed"]) == ("0", "1")
    assert (rows["0"]["resumed"], rows["1"]["resumed"]) == ("", "trainer.max_epochs=2 data.num_val=3")
    assert (rows["0"]["epochs"], rows["1"]["epochs"]) == ("1", "2")
    with (sweep / "summary_grouped.csv").open() as handle:
        (group,) = csv.DictReader(handle)  # one group over both seeds, not one per job
    assert (group["n"], group["seeds"]) == ("2", "0 1")


def test_a_deletion_on_a_resume_is_held_back_from_hydra_too(monkeypatch):
    # ``~key`` has no "=": Hydra got it and refused it against the default config (exit 1, its own message).
    monkeypatch.setenv(RESUME_ENV, "[]")
    argv = ["unet-train", "ckpt=run/checkpoints/last.pt", "~data.num_test", "~x", "trainer.max_epochs=3"]
    assert hold_resume_overrides(argv) == ["unet-train", "ckpt=run/checkpoints/last.pt"]
    assert yaml.safe_load(os.environ[RESUME_ENV]) == ["~data.num_test", "~x", "trainer.max_epochs=3"]
    stored = compose_config(TINY)
    assert "num_test" not in apply_overrides(stored, ["~data.num_test"]).data
    with pytest.raises(ConfigError, match=r"^~x: the checkpoint's config has no x to delete\.$"):
        apply_overrides(stored, ["~x"])


@pytest.mark.slow
def test_resuming_a_finished_run_with_overrides_leaves_its_config_and_record_alone(tmp_path):
    # resolved_config.yaml (what unet-summarize reads) said data.num_val=5 for metrics of 2 images.
    run([str(BIN / "unet-train"), *TINY, "trainer.max_epochs=1", "hydra.run.dir=job"], cwd=tmp_path)
    job = tmp_path / "job"
    before = {name: (job / name).read_bytes() for name in ("resolved_config.yaml", "metrics.json")}
    ckpt = job / "checkpoints" / "last.pt"
    run([str(BIN / "unet-train"), f"ckpt={ckpt}", "data.num_val=5"], cwd=tmp_path)
    assert {name: (job / name).read_bytes() for name in before} == before
    assert not (job / "resume_log.yaml").exists()
    assert "Nothing to train" in (job / "train.log").read_text()


def test_a_resume_that_moves_the_split_says_so(stored, caplog):
    from unet_train.train import warn_if_the_split_moves

    with caplog.at_level("WARNING"):
        warn_if_the_split_moves(stored, apply_overrides(stored, ["trainer.max_epochs=5"]))
        assert not caplog.records  # other settings leave the split alone
        warn_if_the_split_moves(stored, apply_overrides(stored, ["data.num_val=3"]))
    assert [r.getMessage() for r in caplog.records] == [
        "Resumed with data.num_val=3 (was 2): the training/validation split moves, so images the run trained on may "
        "now validate, and best.pt's earlier scores came from other images; resume without these overrides to keep "
        "the split."
    ]


def test_a_split_key_added_to_a_config_saved_before_it_warns_against_its_default(tmp_path, caplog):
    """A checkpoint's config from before data.val_pick split at random (the argument's default): resuming with
    +data.val_pick=typical moves the split, and said nothing because the stored config lacked the key."""
    from unet_train.train import warn_if_the_split_moves

    stored = OmegaConf.create(OmegaConf.to_container(compose_config(["data=volumes", f"data.root={tmp_path}"])))
    del stored.data.val_pick  # saved before the key
    with caplog.at_level("WARNING"):
        warn_if_the_split_moves(stored, apply_overrides(stored, ["+data.val_pick=random"]))
        assert not caplog.records  # the split it had
        warn_if_the_split_moves(stored, apply_overrides(stored, ["+data.val_pick=typical"]))
    assert [r.getMessage().partition(":")[0] for r in caplog.records] == [
        "Resumed with data.val_pick=typical (was random)"
    ]
