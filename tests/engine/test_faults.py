"""Fault injection, for real: kills, signals, hostile and broken files, bad configs and data, NaN losses.

Most cases run the console script in a subprocess, as a user would, and check the exit
status, the one-line message on stderr and what is left on disk.
"""

from __future__ import annotations

import os
import pickle
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unet_train.engine.checkpoint import (
    FORMAT,
    discard_partial_writes,
    load_checkpoint,
    load_model_state,
)
from unet_train.engine.fit import fit
from unet_train.errors import CheckpointError, RunInterrupted, TrainingDiverged
from unet_train.models import UNet

from ..conftest import REPO, TINY, compose_config, progress

BIN = Path(sys.executable).parent
# The test-only loss is not a unet-train component: its checkpoints open only when trusted.
TRUST = ["tests.engine.faulty_loss"]
TRUST_ARG = "trust_config=[tests.engine.faulty_loss]"
FAULTY_LOSS = ["loss=bce", "loss._target_=tests.engine.faulty_loss.FaultyLoss", TRUST_ARG]
# Deterministic CPU run with dropout (so the global RNG matters), 3 epochs of 3 batches.
EXACT = [
    *TINY,
    *FAULTY_LOSS,
    "trainer.deterministic=true",
    "trainer.max_epochs=3",
    "data.num_train=12",
    "data.num_workers=0",
    "model.dropout=0.2",
]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # lets the CLI import the test-only faulty loss


def start(args: list[str], cwd: Path, log_name: str = "cli") -> subprocess.Popen:
    """Start a console script with stdout/stderr going to files (pipes could fill up and block it)."""
    out = (cwd / f"{log_name}.out").open("w")
    err = (cwd / f"{log_name}.err").open("w")
    # A session of its own: a signal to its process group reaches the workers too, as a Ctrl-C would.
    return subprocess.Popen(args, cwd=cwd, stdout=out, stderr=err, env=ENV, start_new_session=True)


def finish(proc: subprocess.Popen, cwd: Path, log_name: str = "cli", timeout: float = 300) -> tuple[int, str]:
    code = proc.wait(timeout=timeout)
    return code, (cwd / f"{log_name}.err").read_text()


def cli(args: list[str], cwd: Path, log_name: str = "cli") -> tuple[int, str]:
    return finish(start(args, cwd, log_name), cwd, log_name)


def train_args(run_dir: Path, *extra: str) -> list[str]:
    return [str(BIN / "unet-train"), *EXACT, f"hydra.run.dir={run_dir}", *extra]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.01)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt", trust=TRUST)["model"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run that every killed-and-resumed run must reproduce."""
    work = tmp_path_factory.mktemp("reference")
    code, err = cli(train_args(work / "run"), work)
    assert code == 0, err
    return work / "run"


# -- kills and signals ------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_after_an_epoch_then_resume_gives_the_same_weights(reference, tmp_path):
    """SIGKILL right after epoch 1's checkpoint (one persistent worker), resume: same weights as never killed."""
    run_dir = tmp_path / "run"
    proc = start(train_args(run_dir, "data.num_workers=1"), tmp_path)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = load_checkpoint(run_dir / "checkpoints" / "last.pt", trust=TRUST)["state"]
    assert killed_at["epoch"] < 3

    resume = [str(BIN / "unet-train"), f"ckpt={run_dir / 'checkpoints' / 'last.pt'}", TRUST_ARG]
    code, err = cli(resume, tmp_path, "resume")
    assert code == 0, err
    assert f"after epoch {killed_at['epoch']}" in err
    assert max_abs_diff(weights(run_dir), weights(reference)) <= 1e-6
    final = load_checkpoint(run_dir / "checkpoints" / "last.pt", trust=TRUST)
    ref_final = load_checkpoint(reference / "checkpoints" / "last.pt", trust=TRUST)
    assert progress(final["state"]) == progress(ref_final["state"])  # step, best metric, early-stopping counter
    assert final["scheduler"] == ref_final["scheduler"]


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_last_and_its_resume_command_continues_exactly(reference, tmp_path):
    """SIGTERM during step 5 (epoch 2, batch 2): the step finishes, last.pt is saved, exit 143 with the
    command that resumes; running it (without the fault) gives the uninterrupted run's weights."""
    run_dir = tmp_path / "run"
    code, err = cli(train_args(run_dir, "+loss.signal_calls=[5]"), tmp_path)
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    last = run_dir.resolve() / "checkpoints" / "last.pt"
    assert "SIGTERM: stopping after this step, saving last.pt." in err  # acknowledged at once
    line = next(line for line in err.splitlines() if "Stopped by" in line)
    assert "[INFO]" in line and "[ERROR]" not in err  # a requested stop is no error
    assert line.endswith(f"Stopped by SIGTERM after step 5; saved {last}. Resume with: unet-train ckpt={last}")
    stopped = load_checkpoint(last, trust=TRUST)["state"]
    assert (stopped["epoch"], stopped["step"], stopped["batch"]) == (1, 5, 2)

    args = shlex.split(line.split("Resume with: ", 1)[1])
    code, err = cli([str(BIN / args[0]), *args[1:], "+loss.signal_calls=[]", TRUST_ARG], tmp_path, "resume")
    assert code == 0, err
    assert "after epoch 1 (step 5, batch 2 of the next epoch)" in err
    assert max_abs_diff(weights(run_dir), weights(reference)) <= 1e-6

    # TensorBoard: one value per step and per epoch, as in the uninterrupted run (no duplicates, no gaps).
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    ref = EventAccumulator(str(reference / "tensorboard"))
    ref.Reload()
    assert [e.step for e in acc.Scalars("val/dice")] == [e.step for e in ref.Scalars("val/dice")] == [3, 6, 9]
    assert [e.step for e in acc.Scalars("train/lr")] == list(range(1, 10))


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_with_workers_stops_cleanly(tmp_path):
    """SIGINT to the whole process group (what Ctrl-C does) also reaches the DataLoader workers."""
    run_dir = tmp_path / "run"
    proc = start(train_args(run_dir, "data.num_workers=2"), tmp_path)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    os.killpg(proc.pid, signal.SIGINT)
    code, err = finish(proc, tmp_path)
    assert code == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "exited unexpectedly" not in err
    assert "SIGINT: stopping after this step, saving last.pt (Ctrl-C again to stop at once)." in err
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt", trust=TRUST)["state"]
    assert f"Stopped by SIGINT after step {state['step']}; saved" in err
    assert "[ERROR]" not in err  # a requested stop is logged at INFO


@pytest.mark.slow
def test_a_signal_in_the_last_epoch_lets_the_run_finish(tmp_path):
    """Nothing is lost by finishing: the last epoch's signal is honoured by ending normally."""
    metrics = fit(compose_config([*TINY, *FAULTY_LOSS, "+loss.signal_calls=[4]"]), tmp_path)  # 2 epochs x 2 steps
    assert metrics["epochs"] == 2 and (tmp_path / "metrics.json").is_file()


def test_a_signal_in_the_first_step_stops_after_it(tmp_path):
    with pytest.raises(RunInterrupted) as info:
        fit(compose_config([*TINY, *FAULTY_LOSS, "+loss.signal_calls=[1]"]), tmp_path)
    assert info.value.exit_code == 143
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt", trust=TRUST)["state"]
    assert (state["epoch"], state["step"], state["batch"]) == (0, 1, 1)
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


SAVE_LOOP = textwrap.dedent(
    """
    import sys, torch
    from unet_train.engine.checkpoint import FORMAT, save_atomic
    i = 0
    CONFIG = {"model": {"_target_": "unet_train.models.UNet"}, "data": {}}
    while True:
        i += 1
        x = torch.full((4_000_000,), float(i))
        save_atomic({"format": FORMAT, "config": CONFIG, "model": {}, "i": i, "x": x}, sys.argv[1])
        print(i, flush=True)
    """
)


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_file(tmp_path):
    """SIGKILL a process that rewrites a 16 MB checkpoint in a loop: the file always loads whole.

    The loop is writing almost all the time, so a kill lands mid-write; the test goes on until
    it has seen that happen (a temporary file left behind) and checked the checkpoint after it.
    """
    target = tmp_path / "last.pt"
    cut_writes = 0
    for attempt, delay in enumerate((0.05, 0.13, 0.29, 0.07, 0.19, 0.41)):
        log = tmp_path / f"saves{attempt}.txt"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(target)], stdout=out, env=ENV)
            while not log.read_text().strip():
                assert proc.poll() is None
                time.sleep(0.01)
            time.sleep(delay)
            proc.kill()
            proc.wait()
        checkpoint = load_checkpoint(target)
        assert torch.equal(checkpoint["x"], torch.full((4_000_000,), float(checkpoint["i"])))
        assert checkpoint["i"] >= int(log.read_text().split()[-1])  # at least the last save it reported
        leftovers = discard_partial_writes(tmp_path)
        assert all(p.name.startswith(".last.pt.") for p in leftovers)
        cut_writes += len(leftovers)
        if cut_writes and attempt >= 2:
            break
    assert cut_writes >= 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".txt") == ["last.pt"]


# -- hostile and broken checkpoint files ------------------------------------------------------


class WritesAFile:
    """Unpickling this runs code: it would create the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    inside_torch_file = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": {}, "payload": WritesAFile(marker)}, inside_torch_file)
    plain_pickle = tmp_path / "evil.pkl"
    plain_pickle.write_bytes(pickle.dumps({"format": FORMAT, "payload": WritesAFile(marker)}, protocol=4))

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(inside_torch_file)
    assert str(info.value).startswith(f"Refused to load {inside_torch_file}: it holds pickled objects")
    assert "(it refers to exec)" in str(info.value)
    with pytest.raises(CheckpointError, match="evil.pkl is not a readable checkpoint"):
        load_checkpoint(plain_pickle)  # a raw pickle, not a torch file: refused all the same
    assert not marker.exists()

    # Through the CLI, where resuming reads the checkpoint before anything else.
    code, err = cli([str(BIN / "unet-train"), f"ckpt={inside_torch_file}"], tmp_path)
    assert code == 2 and f"Refused to load {inside_torch_file}" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.slow
def test_truncated_and_foreign_files_each_get_one_message(reference, tmp_path):
    whole = (reference / "checkpoints" / "last.pt").read_bytes()
    unreadable = "is not a readable checkpoint (truncated, corrupted or not a torch file)"
    cases = {
        "half.pt": (whole[: len(whole) // 2], unreadable),
        "head.pt": (whole[:100], unreadable),
        "tail-cut.pt": (whole[:-1], unreadable),
        "empty.pt": (b"", unreadable),
        "notes.txt": (b"epoch 3: dice 0.9\n", unreadable),
    }
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(info.value).startswith(f"{path} {expected}: "), str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tensor_file)
    expected = f"{tensor_file} is a torch file but not a unet-train checkpoint (no format='{FORMAT}' entry)."
    assert str(info.value) == expected

    code, err = cli([str(BIN / "unet-train"), f"ckpt={tmp_path / 'half.pt'}"], tmp_path)
    assert code == 2 and f"{tmp_path / 'half.pt'} {unreadable}" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused_in_one_message(reference, tmp_path):
    checkpoint = load_checkpoint(reference / "checkpoints" / "last.pt", trust=TRUST)
    wider = UNet(in_channels=1, out_channels=1, base_channels=8, depth=2)
    with pytest.raises(CheckpointError) as info:
        load_model_state(wider, checkpoint["model"], "last.pt")
    assert str(info.value).startswith("last.pt does not fit the model asked for: ")
    assert "in the checkpoint but (8, 1, 3, 3) in the model asked for" in str(info.value)

    # Through the CLI: resuming a copy with a wider model.
    copy = tmp_path / "run" / "checkpoints" / "last.pt"
    copy.parent.mkdir(parents=True)
    copy.write_bytes((reference / "checkpoints" / "last.pt").read_bytes())
    code, err = cli([str(BIN / "unet-train"), f"ckpt={copy}", "model.base_channels=8", TRUST_ARG], tmp_path)
    assert code == 2 and "Traceback" not in err
    assert f"{copy} does not fit the model asked for: " in err
    assert "Keep the checkpoint's model settings" in err


# -- bad configs and bad data, through the CLI --------------------------------------------------


def write_folder(root: Path, masks: dict[str, np.ndarray], images: dict[str, np.ndarray] | None = None) -> Path:
    """``root/images/<stem>.tif`` and ``root/masks/<stem>.tif``; images default to a 64x64 ramp."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, mask in masks.items():
        image = (images or {}).get(stem, np.tile(np.arange(64, dtype=np.uint8), (64, 1)))
        tifffile.imwrite(root / "images" / f"{stem}.tif", image)
        tifffile.imwrite(root / "masks" / f"{stem}.tif", mask)
    return root


def good_masks(n: int = 4) -> dict[str, np.ndarray]:
    return {f"s{i}": (np.arange(64 * 64).reshape(64, 64) % 2).astype(np.uint8) for i in range(n)}


def bad_data_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Each case: its overrides and the message expected on stderr."""
    cases: dict[str, tuple[list[str], str]] = {}
    missing = tmp / "missing"
    cases["missing folder"] = ([f"data.root={missing}"], f"Image folder {missing / 'images'} does not exist")

    root = write_folder(tmp / "unreadable", good_masks())
    (root / "images" / "s1.tif").write_bytes(b"not an image at all")
    cases["unreadable image"] = ([f"data.root={root}"], f"Could not read image {root / 'images' / 's1.tif'}: ")

    masks = good_masks()
    masks["s2"] = masks["s2"][:32]
    root = write_folder(tmp / "sizes", masks)
    cases["size mismatch"] = ([f"data.root={root}"], f"Mask {root / 'masks' / 's2.tif'} is (32, 64) but its image is")

    masks = good_masks()
    masks["s3"] = masks["s3"] * 7
    root = write_folder(tmp / "values", masks)
    cases["mask values"] = (
        [f"data.root={root}", "data.num_classes=2"],
        f"Mask {root / 'masks' / 's3.tif'} has values [0, 7]; expected",
    )

    root = tmp / "empty"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cases["empty folder"] = ([f"data.root={root}"], f"No images (.png, .tif, .tiff, .jpg, .jpeg, .bmp) in {root}")

    root = write_folder(tmp / "nosplit", good_masks())
    cases["empty split"] = (
        [f"data.root={root}", "data.val_fraction=0"],
        f"The 'val' split of ImageFolder in {root} is empty",
    )

    nan_image = np.full((64, 64), 0.5, dtype=np.float32)
    nan_image[10, 10] = np.nan
    root = write_folder(tmp / "nan", good_masks(), images={"s0": nan_image})
    cases["NaN pixels"] = ([f"data.root={root}"], f"{root / 'images' / 's0.tif'} has NaN or infinite pixels")

    masks = good_masks()
    root = write_folder(tmp / "stems", masks)
    (root / "masks" / "s0.tif").rename(root / "masks" / "other.tif")
    cases["unmatched stems"] = ([f"data.root={root}"], "images without a mask: s0; masks without an image: other")
    return cases


BAD_CONFIGS: dict[str, tuple[list[str], str]] = {
    "epochs zero": (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be at least 1."),
    "batch size zero": (["data.batch_size=0"], "data.batch_size=0 must be a positive integer."),
    "batch size text": (["data.batch_size=four"], "data.batch_size='four' must be a positive integer."),
    "lr negative": (["optim.lr=-0.1"], "optim.lr=-0.1 must be a positive number."),
    "precision": (["trainer.precision=8"], "trainer.precision='8' is not known; choose auto, 32, bf16 or 16."),
    "crop too large": (
        ["data.patch_size=100"],
        "data.patch_size=100 is larger than the smallest training image (64 px); choose data.patch_size<=64.",
    ),
}
if not torch.cuda.is_available():
    BAD_CONFIGS["cuda missing"] = (
        ["trainer.device=cuda"],
        "trainer.device=cuda but CUDA is not available here; use trainer.device=cpu (or auto).",
    )
# Caught by Hydra when it composes the config (its own message, exit status 1).
HYDRA_ERRORS: dict[str, tuple[list[str], str]] = {
    "epochs text": (["trainer.max_epochs=ten"], "Value 'ten' of type 'str' could not be converted to Integer"),
    "unknown option": (["model=nope"], "Could not find 'model/nope'"),
}


def run_all(cases: dict[str, tuple[list[str], str]], base: list[str], tmp: Path, parallel: int = 4) -> dict:
    """Run every case's CLI (a few at a time); returns name -> (exit status, stderr)."""
    results, pending = {}, list(cases.items())
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        procs = {}
        for name, (overrides, _) in batch:
            folder = tmp / name.replace(" ", "_")
            folder.mkdir(exist_ok=True)
            procs[name] = (start([str(BIN / "unet-train"), *base, *overrides], folder), folder)
        for name, (proc, folder) in procs.items():
            results[name] = finish(proc, folder)
    return results


@pytest.mark.slow
def test_bad_configs_stop_before_training_with_one_message(tmp_path):
    results = run_all({**BAD_CONFIGS, **HYDRA_ERRORS}, list(TINY), tmp_path)
    for name, (_, expected) in BAD_CONFIGS.items():
        code, err = results[name]
        assert code == 2, (name, err)
        assert expected in err, (name, err)
        assert "Traceback" not in err and "Training " not in err, (name, err)  # nothing was trained
    for name, (_, expected) in HYDRA_ERRORS.items():
        code, err = results[name]
        assert code == 1 and expected in err and "Traceback" not in err, (name, err)
    assert not list(tmp_path.glob("*/outputs/*/*/checkpoints"))


@pytest.mark.slow
def test_bad_data_stops_with_one_message_naming_the_file(tmp_path):
    base = ["data=folder", "trainer=smoke", "model.base_channels=4", "model.depth=2", "data.patch_size=32"]
    base += ["data.batch_size=2", "data.num_workers=0", "data.val_fraction=0.25"]
    cases = bad_data_cases(tmp_path / "data")
    results = run_all(cases, base, tmp_path)
    for name, (_, expected) in cases.items():
        code, err = results[name]
        assert code == 2, (name, err)
        assert expected in err, (name, err)
        assert "Traceback" not in err, (name, err)
        errors = [line for line in err.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1, (name, err)


# -- non-finite losses --------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_losses_stop_the_run_naming_the_step_and_keep_the_last_good_checkpoint(tmp_path):
    """Training calls 6, 7, 8 are NaN (2 steps per epoch): epoch 3 ends after one NaN, epoch 4 stops."""
    nan_loss = ["loss=bce", "loss._target_=tests.engine.faulty_loss.FaultyLoss", "+loss.nan_calls=[6,7,8]"]
    overrides = [*TINY, "trainer.max_epochs=6", "trainer.max_nonfinite_steps=3", *nan_loss]
    code, err = cli([str(BIN / "unet-train"), *overrides, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert code == 2 and "Traceback" not in err, err
    assert (
        "The loss was NaN/inf for 3 consecutive steps (last at step 5, epoch 4); training stopped and the last "
        f"good checkpoint {last} is kept." in err
    )
    kept = load_checkpoint(last, trust=TRUST)
    assert kept["state"]["epoch"] == 3 and kept["state"]["step"] == 5
    assert all(torch.isfinite(t).all() for t in kept["model"].values() if t.is_floating_point())
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_an_isolated_nan_loss_is_skipped_and_training_goes_on(tmp_path):
    cfg = compose_config([*TINY, *FAULTY_LOSS, "+loss.nan_calls=[2]"])
    metrics = fit(cfg, tmp_path)
    assert metrics["epochs"] == 2 and metrics["steps"] == 3  # 4 batches, one skipped


def test_the_divergence_error_is_a_floating_point_error_too(tmp_path):
    cfg = compose_config(
        [*TINY, "trainer.max_nonfinite_steps=2", "loss=bce", "loss._target_=tests.engine.faulty_loss.FaultyLoss",
         "+loss.nan_calls=[1,2]"]
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"2 consecutive steps \(last at step 0, epoch 1\).*none was saved"):
        fit(cfg, tmp_path)
    assert issubclass(TrainingDiverged, FloatingPointError)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 loss scaling needs a CUDA device")
def test_fp16_gradient_overflow_is_skipped_by_the_grad_scaler(tmp_path, caplog):
    """A loss of 1e30 is finite, but its float16 gradients overflow: the scaler skips that step and halves
    its scale; the non-finite-loss guard is not involved."""
    cfg = compose_config([*TINY, *FAULTY_LOSS, "trainer=gpu_fp16", "trainer.progress=never", "+loss.huge_calls=[2]"])
    metrics = fit(cfg, tmp_path)
    scaler = load_checkpoint(tmp_path / "checkpoints" / "last.pt", trust=TRUST)["scaler"]
    assert scaler["scale"] <= 2.0**15  # 2**16 at the start, halved at least once
    assert metrics["steps"] == 4  # the skipped optimizer step still counts as a step
    assert "Non-finite loss" not in caplog.text
