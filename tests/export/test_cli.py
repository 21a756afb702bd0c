"""unet-export as a user runs it: the console script, one-line errors with exit status 2."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import unet_train.export as export_pkg

from ..conftest import compose_config
from .conftest import make_checkpoint

BIN = Path(sys.executable).parent


def run_cfg(*overrides: str):
    from unet_train.export.cli import run_export

    return run_export(compose_config(list(overrides), config_name="export"))


@pytest.mark.slow
def test_console_script_exports_a_verified_torchscript(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.pt", ["model.base_channels=4", "model.depth=2"])
    out = tmp_path / "exported"
    done = subprocess.run(
        [str(BIN / "unet-export"), f"ckpt={ckpt}", "format=torchscript", f"output={out}",
         f"paths.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torchscript: max |exported - PyTorch| = 0.00e+00" in done.stdout
    assert "deprecated" not in done.stderr  # torch.jit.trace's FutureWarning is kept out of the way
    result = json.loads((out / "export.json").read_text())
    assert result["files"] == {"torchscript": str(out / "model.pt")}
    assert result["max_abs_diff"]["torchscript"] <= 1e-4


def test_missing_extra_names_it_and_exits_2(tmp_path, monkeypatch, caplog):
    ckpt = make_checkpoint(tmp_path / "best.pt", ["model.base_channels=4", "model.depth=2"])
    monkeypatch.setattr(export_pkg, "_installed", lambda name: name != "onnxruntime")
    with caplog.at_level(logging.ERROR, logger="unet_train"), pytest.raises(SystemExit) as stop:
        run_cfg(f"ckpt={ckpt}", "format=onnx", f"output={tmp_path / 'out'}")
    assert stop.value.code == 2
    assert (
        caplog.messages[-1] == 'format=onnx needs onnxruntime, which is not installed: pip install "unet-train[export]"'
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("format=tflite", "format=tflite is not known; choose onnx, torchscript, bioimageio or all."),
        ("ckpt=/nowhere/best.pt", "Checkpoint /nowhere/best.pt does not exist"),
        ("output=/dev/null", "output=/dev/null is a file; pass a folder (it is created if missing)."),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, caplog, override, message):
    ckpt = make_checkpoint(tmp_path / "best.pt", ["model.base_channels=4", "model.depth=2"])
    with caplog.at_level(logging.ERROR, logger="unet_train"), pytest.raises(SystemExit) as stop:
        run_cfg(f"ckpt={ckpt}", "format=torchscript", f"output={tmp_path / 'out'}", override)
    assert stop.value.code == 2
    assert caplog.messages[-1].startswith(message) and "\n" not in caplog.messages[-1]


def test_a_checkpoint_refused_by_the_trust_rules_is_refused_by_export(tmp_path, caplog):
    import torch

    ckpt = make_checkpoint(tmp_path / "best.pt", ["model.base_channels=4", "model.depth=2"])
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["config"]["model"]["_target_"] = "os.system"
    torch.save(checkpoint, ckpt)
    with caplog.at_level(logging.ERROR, logger="unet_train"), pytest.raises(SystemExit) as stop:
        run_cfg(f"ckpt={ckpt}", "format=torchscript", f"output={tmp_path / 'out'}")
    assert stop.value.code == 2
    assert "os.system" in caplog.messages[-1]
    assert not (tmp_path / "out" / "model.pt").exists()


def test_export_config_composes_with_its_defaults():
    cfg = compose_config(["ckpt=some.pt", "output=out"], config_name="export")
    assert cfg.format == "all" and cfg.trust_config is False
    assert cfg.verify.batch_sizes == [1, 2]
    assert any(side % 16 for size in cfg.verify.sizes for side in size)  # a size the model must pad
    assert not any("github_user" in author for author in cfg.bioimageio.authors)  # offline validation
