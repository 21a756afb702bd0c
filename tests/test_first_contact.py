"""What a newcomer sees first: a command called without its mandatory keys, and ``--help``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from unet_train.cli import MANDATORY, exit_on_user_error, missing_keys

from .conftest import REPO

BIN = Path(sys.executable).parent
CKPT_HELP = "ckpt (a checkpoint written by unet-train)"
CKPT_EXAMPLE = "ckpt=outputs/2026-12-01/10-00-00/checkpoints/best.pt"
INPUT_HELP = "input (an image, a multi-page TIFF stack or a folder of images)"
ROOT_HELP = "data.root (your data folder, with images/ and masks/ inside)"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # five processes that import torch
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["unet-eval"], f"unet-eval needs {CKPT_HELP}.\nExample: unet-eval {CKPT_EXAMPLE}"),
        (
            ["unet-predict"],
            f"unet-predict needs {CKPT_HELP} and {INPUT_HELP}.\nExample: unet-predict {CKPT_EXAMPLE} input=stack.tif",
        ),
        (
            ["unet-predict", "input=x.tif", "tta=true"],
            f"unet-predict needs {CKPT_HELP}.\nExample: unet-predict input=x.tif tta=true {CKPT_EXAMPLE}",
        ),
        (
            ["unet-train", "data=folder", "trainer=cpu"],
            f"unet-train needs {ROOT_HELP}.\nExample: unet-train data=folder trainer=cpu data.root=my_data",
        ),
        (
            ["unet-eval", "ckpt=run/best.pt", "data=folder"],
            f"unet-eval needs {ROOT_HELP}.\nExample: unet-eval ckpt=run/best.pt data=folder data.root=my_data",
        ),
    ],
    ids=["eval", "predict", "predict-input", "train-folder", "eval-folder"],
)
def test_missing_mandatory_keys_print_usage_and_exit_2(tmp_path, args, expected):
    result = run([str(BIN / args[0]), *args[1:]], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == expected
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_usage_names_the_command_under_python_m_and_the_newest_checkpoint(tmp_path):
    for run_name in ("2026-01-01/09-00-00", "2026-01-02/08-00-00", "2025-12-31/23-00-00"):
        (tmp_path / "outputs" / run_name / "checkpoints").mkdir(parents=True)
        (tmp_path / "outputs" / run_name / "checkpoints" / "best.pt").write_bytes(b"")
    result = run([sys.executable, "-m", "unet_train.evaluate"], cwd=tmp_path)
    assert result.returncode == 2
    newest = Path("outputs/2026-01-02/08-00-00/checkpoints/best.pt")
    assert result.stderr.strip() == f"unet-eval needs {CKPT_HELP}.\nExample: unet-eval ckpt={newest}"


def test_missing_keys_reads_the_unresolved_tree():
    cfg = OmegaConf.create({"input": "???", "out": "${hydra:runtime.output_dir}", "data": {"root": "???", "n": 1}})
    assert missing_keys(cfg) == ["input", "data.root"]
    assert missing_keys(OmegaConf.create({"ckpt": "a.pt", "hydra": {"job": {"id": "???"}}})) == []


def test_a_mandatory_value_read_at_run_time_gets_the_same_usage(monkeypatch, capsys):
    built_later = OmegaConf.create({"format": "???"})

    @exit_on_user_error
    def export(cfg):
        return built_later.format

    monkeypatch.setattr(sys, "argv", ["/usr/bin/unet-export"])
    with pytest.raises(SystemExit) as stop:
        export(OmegaConf.create({"ckpt": "a.pt"}))
    assert stop.value.code == 2
    expected = "unet-export needs format (onnx, torchscript or bioimageio).\nExample: unet-export format=onnx\n"
    assert capsys.readouterr().err == expected


def test_every_mandatory_key_in_configs_has_a_usage_entry():
    found = set()
    configs = REPO / "configs"
    for path in configs.rglob("*.yaml"):
        text = path.read_text()
        group = path.relative_to(configs).parent.as_posix()
        prefix = "" if group == "." or "@package _global_" in text else group.replace("/", ".") + "."
        found |= {prefix + key for key in missing_keys(OmegaConf.load(path))}
    assert found >= {"ckpt", "input", "data.root"}
    assert found <= set(MANDATORY), f"add {sorted(found - set(MANDATORY))} to unet_train.cli.MANDATORY"


def test_train_help_lists_groups_and_examples_not_the_whole_config(tmp_path):
    result = run([str(BIN / "unet-train"), "--help"], cwd=tmp_path)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("unet-train: train a UNet segmentation model.")
    assert "  unet-train experiment=quickstart" in result.stdout
    assert "model: attention, attention_gate, dense, dilated, vanilla" in lines
    assert "trainer: cpu, cpu_bf16, ddp, default, gpu, gpu_fp16, smoke" in lines  # no trainer_schema
    assert "paths: default" in lines
    assert "base_channels: 64" not in result.stdout  # the composed config is behind --cfg job
    assert len(lines) < 40
    assert not (tmp_path / "outputs").exists()


def test_eval_help_shows_examples_and_its_keys(tmp_path):
    result = run([str(BIN / "unet-eval"), "--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("unet-eval: score a checkpoint")
    assert "ckpt: ???" in result.stdout.splitlines()


@pytest.mark.parametrize(
    ("command", "first", "example", "key"),
    [
        ("unet-export", "unet-export: a checkpoint as ONNX", "  unet-export ckpt=.../best.pt format=onnx", "format:"),
        ("unet-plan", "unet-plan: fingerprint a dataset", "  unet-plan data=folder data.root=my_data ", "  budget:"),
    ],
)
def test_export_and_plan_help_show_their_own_keys_and_examples(tmp_path, command, first, example, key):
    result = run([str(BIN / command), "--help"], cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(first)
    assert example in result.stdout and any(line.startswith(key) for line in result.stdout.splitlines())
    assert "Compose your configuration" not in result.stdout and "hydra/launcher" not in result.stdout  # Hydra's own
    assert not (tmp_path / "outputs").exists()
