"""Background writes of last.pt and its cadence (trainer.save_every, trainer.background_save)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from unet_train.engine import background_save, checkpointer
from unet_train.engine.background_save import BackgroundWriter, SaveEvery, snapshot
from unet_train.engine.checkpoint import discard_partial_writes, load_checkpoint
from unet_train.engine.fit import fit
from unet_train.errors import ConfigError, OutputError

from ..conftest import TINY, compose_config, progress
from .test_faults import ENV


def test_save_every_reads_epochs_and_seconds():
    assert SaveEvery.parse(1) == SaveEvery(epochs=1)
    assert SaveEvery.parse("3") == SaveEvery(epochs=3)
    assert SaveEvery.parse("300s") == SaveEvery(epochs=None, seconds=300.0)
    assert SaveEvery.parse("2.5s") == SaveEvery(epochs=None, seconds=2.5)
    every_2 = SaveEvery.parse(2)
    assert [every_2.due(epoch, 0.0) for epoch in (1, 2, 3, 4)] == [False, True, False, True]
    every_10s = SaveEvery.parse("10s")
    assert not every_10s.due(1, 9.9) and every_10s.due(1, 10.0)


@pytest.mark.parametrize("value", ["0", "-1", "0s", "5m", "two", "1.5"])
def test_a_bad_save_every_is_one_config_error(value):
    with pytest.raises(ConfigError) as info:
        SaveEvery.parse(value)
    assert str(info.value) == (
        f'trainer.save_every={value!r} must be a number of epochs (1, 2, ...) or of seconds with an s (e.g. "300s").'
    )


def test_a_bad_save_every_stops_fit_before_training(tmp_path):
    with pytest.raises(ConfigError, match="trainer.save_every='5m'"):
        fit(compose_config([*TINY, "trainer.save_every=5m"]), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_the_background_write_is_a_snapshot_of_the_state_at_submit(tmp_path):
    weights = torch.arange(6.0)
    state = {"model": {"w": weights}, "steps": [torch.tensor(3)], "epoch": 1}
    copied = snapshot(state)
    assert copied["model"]["w"].data_ptr() != weights.data_ptr() and copied["epoch"] == 1
    writer = BackgroundWriter()
    writer.submit(state, tmp_path / "last.pt")
    weights.fill_(-1.0)  # the training thread changes the weights in place
    writer.wait()
    written = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(written["model"]["w"], torch.arange(6.0))
    assert torch.equal(written["steps"][0], torch.tensor(3)) and written["epoch"] == 1


def test_a_failed_background_write_raises_at_the_next_wait(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    writer = BackgroundWriter()
    writer.submit({"x": torch.zeros(2)}, tmp_path / "file" / "last.pt")
    with pytest.raises(OutputError, match=r"/file is a file, not a folder: move it away"):
        writer.wait()
    writer.wait()  # the error is raised once


def recorded_writes(monkeypatch) -> list[tuple[str, int, str]]:
    """Record (file, epoch in the checkpoint, thread) of every checkpoint write, then write it."""
    writes: list[tuple[str, int, str]] = []

    def record(save):
        def wrapped(obj, path, root=None):
            import threading

            writes.append((Path(path).name, obj["state"]["epoch"], threading.current_thread().name))
            save(obj, path, root)

        return wrapped

    monkeypatch.setattr(checkpointer, "save_atomic", record(checkpointer.save_atomic))
    monkeypatch.setattr(background_save, "save_atomic", record(background_save.save_atomic))
    return writes


def test_save_every_two_epochs_writes_last_in_the_background_and_the_final_one_in_the_loop(tmp_path, monkeypatch):
    writes = recorded_writes(monkeypatch)
    fit(compose_config([*TINY, "trainer.max_epochs=5", "trainer.save_every=2", "monitor=val/loss"]), tmp_path)
    lasts = [(epoch, thread) for name, epoch, thread in writes if name == "last.pt"]
    assert lasts == [(2, "checkpoint-writer"), (4, "checkpoint-writer"), (5, "MainThread")]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]["epoch"] == 5
    assert all(thread == "MainThread" for name, _, thread in writes if name == "best.pt")


def test_save_every_seconds_and_synchronous_writes(tmp_path, monkeypatch):
    writes = recorded_writes(monkeypatch)
    overrides = [*TINY, "trainer.max_epochs=3", "trainer.save_every=3600s", "trainer.background_save=false"]
    fit(compose_config(overrides), tmp_path)
    assert [(e, t) for name, e, t in writes if name == "last.pt"] == [(3, "MainThread")]  # only the final one


@pytest.mark.slow
def test_the_final_last_pt_equals_the_synchronous_one(tmp_path):
    """Same run with background writes on and off: the same final checkpoint, tensor for tensor."""
    exact = [*TINY, "trainer.deterministic=true", "trainer.max_epochs=3", "data.num_workers=0"]
    fit(compose_config([*exact, "trainer.background_save=true"]), tmp_path / "bg")
    fit(compose_config([*exact, "trainer.background_save=false"]), tmp_path / "sync")
    bg = load_checkpoint(tmp_path / "bg" / "checkpoints" / "last.pt")
    sync = load_checkpoint(tmp_path / "sync" / "checkpoints" / "last.pt")
    assert bg["state"]["elapsed"] > 0 and sync["state"]["elapsed"] > 0  # wall-clock time: never equal
    assert progress(bg["state"]) == progress(sync["state"]) and bg["scheduler"] == sync["scheduler"]
    assert bg["model"].keys() == sync["model"].keys()
    assert all(torch.equal(bg["model"][k], sync["model"][k]) for k in bg["model"])
    for a, b in zip(bg["optimizer"]["state"].values(), sync["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert bg["config"]["trainer"]["background_save"] and not sync["config"]["trainer"]["background_save"]


BACKGROUND_SAVE_LOOP = textwrap.dedent(
    """
    import sys, torch
    from unet_train.engine.background_save import BackgroundWriter
    from unet_train.engine.checkpoint import FORMAT
    writer, x, i = BackgroundWriter(), torch.zeros(4_000_000), 0
    CONFIG = {"model": {"_target_": "unet_train.models.UNet"}, "data": {}}
    while True:
        i += 1
        x.fill_(float(i))  # the "training" changes the tensor while the previous write may still run
        writer.submit({"format": FORMAT, "config": CONFIG, "model": {}, "i": i, "x": x}, sys.argv[1])
        print(i - 1, flush=True)  # submit waited for write i - 1: it is on disk
    """
)


@pytest.mark.slow
def test_a_kill_during_a_background_write_leaves_the_previous_file(tmp_path):
    """SIGKILL a process whose writer thread rewrites a 16 MB checkpoint back to back: the file always loads
    whole, holds a consistent snapshot, and is at least the last write known to be complete."""
    target = tmp_path / "last.pt"
    cut_writes = 0
    for attempt, delay in enumerate((0.05, 0.13, 0.29, 0.07, 0.19, 0.41)):
        log = tmp_path / f"saves{attempt}.txt"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-c", BACKGROUND_SAVE_LOOP, str(target)], stdout=out, env=ENV)
            while len(log.read_text().split()) < 2:
                assert proc.poll() is None
                time.sleep(0.01)
            time.sleep(delay)
            proc.kill()
            proc.wait()
        checkpoint = load_checkpoint(target)
        assert torch.equal(checkpoint["x"], torch.full((4_000_000,), float(checkpoint["i"])))
        assert checkpoint["i"] >= int(log.read_text().split()[-1])
        leftovers = discard_partial_writes(tmp_path)
        assert all(p.name.startswith(".last.pt.") for p in leftovers)
        cut_writes += len(leftovers)
        if cut_writes and attempt >= 2:
            break
    assert cut_writes >= 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".txt") == ["last.pt"]
