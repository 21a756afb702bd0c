"""What a user trips over, through the console scripts: a misspelt ``+key``, a resume that repeats the run's
own command, a resume from ``best.pt``, misleading messages and left-over folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import TINY

BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / args[0]), *args[1:]]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one message of a refused command (exit status 2), without the log's time and level prefix."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0].partition("[ERROR] - ")[2] or lines[0]


def run_folders(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / "outputs").glob("*/*") if p.is_dir()) if (cwd / "outputs").exists() else []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch run of the tiny quickstart; returns its run folder."""
    work = tmp_path_factory.mktemp("slips")
    result = run(["unet-train", *TINY], cwd=work)
    assert result.returncode == 0, result.stderr
    (folder,) = run_folders(work)
    return folder


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "+trainer.max_epoch=1",
            "+trainer.max_epoch=1: trainer has no key max_epoch; did you mean trainer.max_epochs?",
        ),
        (
            "+optim.learning_rate=1e-3",
            "+optim.learning_rate=1e-3: optim (torch.optim.Adam) takes no argument learning_rate; "
            "did you mean optim.lr?",
        ),
        (
            "+model.base_channel=8",
            "+model.base_channel=8: model (unet_train.models.UNet) takes no argument base_channel; "
            "did you mean model.base_channels?",
        ),
    ],
    ids=["trainer", "optim", "model"],
)
def test_a_misspelt_added_key_is_refused_in_one_line(tmp_path, override, expected):
    assert refusal(run(["unet-train", *TINY, override], cwd=tmp_path)) == expected
    assert run_folders(tmp_path) == []


def test_an_added_key_the_target_takes_is_accepted(tmp_path):
    result = run(["unet-train", *TINY, "trainer.max_epochs=1", "+optim.amsgrad=true"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (folder,) = run_folders(tmp_path)
    assert "amsgrad: true" in (folder / "resolved_config.yaml").read_text()


def test_rerunning_the_runs_own_command_with_ckpt_resumes(finished_run, tmp_path):
    last = finished_run / "checkpoints" / "last.pt"
    result = run(["unet-train", *TINY, f"ckpt={last}", "trainer.max_epochs=3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert torch.load(last, weights_only=True)["state"]["epoch"] == 3

    other = run(["unet-train", "experiment=isbi_cpu", f"ckpt={last}"], cwd=tmp_path)
    assert refusal(other) == (
        "experiment=isbi_cpu: this run used experiment=quickstart, and a resume cannot choose another experiment "
        "option; drop experiment=..., or override its keys."
    )
    model = run(["unet-train", "model=attention", f"ckpt={last}"], cwd=tmp_path)
    assert refusal(model) == (
        "model=attention: the checkpoint fixes the model (this run used model=vanilla); start a new run to train "
        "another model."
    )


def test_resuming_from_a_checkpoint_behind_last_pt_is_refused(finished_run, tmp_path):
    checkpoints = finished_run / "checkpoints"
    last = checkpoints / "last.pt"
    earlier = torch.load(last, weights_only=True)
    step, epoch = earlier["state"]["step"], earlier["state"]["epoch"]
    earlier["state"].update(step=step - 1, epoch=epoch - 1)
    torch.save(earlier, tmp_path / "best.pt")
    shutil.copy(checkpoints / "best.pt", tmp_path / "best.orig.pt")
    shutil.copy(tmp_path / "best.pt", checkpoints / "best.pt")
    before = last.read_bytes()
    try:
        result = run(["unet-train", f"ckpt={checkpoints / 'best.pt'}"], cwd=tmp_path)
    finally:
        shutil.copy(tmp_path / "best.orig.pt", checkpoints / "best.pt")
    assert refusal(result) == (
        f"ckpt={checkpoints / 'best.pt'} is behind its run's {last} (epoch {epoch}): resuming from it would train "
        f"those epochs again and overwrite last.pt. Resume with ckpt={last}; to start another run from these "
        "weights, copy best.pt out of the run folder and pass that copy."
    )
    assert last.read_bytes() == before


def test_a_bare_or_refused_eval_leaves_no_folder(tmp_path):
    bare = run(["unet-eval"], cwd=tmp_path)
    assert bare.returncode == 2 and bare.stderr.startswith("unet-eval needs ckpt")
    assert not (tmp_path / "outputs").exists()

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.pt").write_bytes(b"")
    folder = run(["unet-eval", f"ckpt={tmp_path / 'run'}"], cwd=tmp_path)
    assert refusal(folder) == (
        f"Checkpoint {tmp_path / 'run'} is a folder; pass the checkpoint file, "
        f"e.g. ckpt={tmp_path / 'run' / 'checkpoints' / 'best.pt'}."
    )
    assert not (tmp_path / "outputs").exists()


def test_a_training_run_refused_after_taking_its_lock_leaves_no_folder(tmp_path):
    # The run folder's lock file is part of the record: a run that fails before its first step leaves nothing.
    result = run(["unet-train", *TINY, "model.spatial_dims=3", "trainer.channels_last=false"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "[ERROR] - model.spatial_dims=3 takes (N, C, D, H, W) inputs but got shape (4, 1, 32, 32): "
            "set model.spatial_dims to the data's dimensions."
        )
    )
    assert not (tmp_path / "outputs").exists()


def test_a_text_file_is_named_as_one(tmp_path):
    from unet_train.engine.checkpoint import load_checkpoint
    from unet_train.errors import CheckpointError

    notes = tmp_path / "notes.pt"
    notes.write_text("epoch 3: looks good\n")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(notes)
    assert str(caught.value) == (
        f"{notes} is not a readable checkpoint (truncated, corrupted or not a torch file): it is a text file, not a "
        "torch file"
    )


# Imported at start-up from PYTHONPATH: the Optuna sweeper plugin then cannot be found, as without the extra.
BLOCK_OPTUNA = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("hydra_plugins.hydra_optuna_sweeper"):
            raise ModuleNotFoundError(name)

sys.meta_path.insert(0, Block())
"""


def test_a_missing_sweep_extra_is_named_in_one_line(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCK_OPTUNA)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = run(["unet-train", "hparams_search=optuna", "experiment=quickstart"], cwd=tmp_path, env=env)
    assert result.returncode == 2 and result.stdout == ""
    expected = 'hparams_search=optuna needs the sweep extra, which is not installed: pip install "unet-train[sweep]"'
    assert result.stderr == expected + "\n"
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        (["unet-train", *TINY], ""),
        (["unet-eval", "ckpt=x.pt"], "eval/"),
        (["unet-plan", "data=folder", "data.root=."], "plan/"),
        (["unet-train", "-m", *TINY], "multirun"),
    ],
)
def test_a_run_folder_that_cannot_be_made_is_one_line_not_hydras_traceback(command, kind, tmp_path):
    """``paths.output_dir`` under a file: Hydra's own mkdir ended in its traceback (exit 1)."""
    (tmp_path / "afile").write_text("")
    message = refusal(run([*command, f"paths.output_dir={tmp_path / 'afile' / 'x'}"], cwd=tmp_path))
    where = "multirun/" if kind == "multirun" else f"outputs/{kind}"
    assert message.startswith(f"Cannot make the run folder {tmp_path / 'afile' / 'x'}/{where}20")
    assert message.endswith(
        f": {tmp_path / 'afile'} is a file, not a folder. Run from a folder you can write to, or set "
        "paths.output_dir=<a folder of yours>."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing written
