"""unet-predict and unet-eval's additions, run as a user runs them on a tiny trained checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from unet_train.errors import DataError
from unet_train.inference import TiledPredictor
from unet_train.predict import find_inputs, load_model, to_input

from .conftest import compose_config

BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_predict_writes_probabilities_and_masks_for_images_and_stacks(tiny_ckpt, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = rng.integers(0, 256, (100, 77), dtype=np.uint8)  # not a multiple of 16
    skio.imsave(inputs / "odd.png", image, check_contrast=False)
    tifffile.imwrite(inputs / "stack.tif", rng.integers(0, 256, (4, 40, 52), dtype=np.uint8), photometric="minisblack")
    out = tmp_path / "out"
    args = [f"ckpt={tiny_ckpt}", f"input={inputs}", f"output={out}", "tile_size=32", "overlap=0.5", "batch_size=3"]
    result = run([str(BIN / "unet-predict"), *args], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "odd.png",
        "odd_prob.tif",
        "stack_mask.tif",
        "stack_prob.tif",
    ]
    prob = tifffile.imread(out / "odd_prob.tif")
    assert prob.shape == (100, 77) and prob.dtype == np.float32
    assert np.array_equal(skio.imread(out / "odd.png"), (prob > 0.5).astype(np.uint8) * 255)
    # The CLI's probabilities are those of the tiler called in process with the same settings.
    model, _ = load_model(tiny_ckpt)
    expected = TiledPredictor(model, tile_size=32, overlap=0.5, batch_size=3).predict(to_input(image, 1, "odd"))
    np.testing.assert_allclose(prob, expected[0].numpy(), atol=1e-5)
    stack_prob, stack_mask = tifffile.imread(out / "stack_prob.tif"), tifffile.imread(out / "stack_mask.tif")
    assert stack_prob.shape == stack_mask.shape == (4, 40, 52)
    assert stack_prob.dtype == np.float32 and stack_mask.dtype == np.uint8
    assert np.array_equal(stack_mask, (stack_prob > 0.5).astype(np.uint8) * 255)
    # Logs go to the predict run folder, not into the current folder.
    assert list((tmp_path / "outputs" / "predict").glob("*/*/predict.log"))


def test_bad_inputs_get_one_clear_message(tiny_ckpt, tmp_path):
    with pytest.raises(DataError, match=f"input={tmp_path / 'nope.tif'} does not exist"):
        find_inputs(tmp_path / "nope.tif")
    with pytest.raises(DataError, match="is a folder without images"):
        find_inputs(tmp_path)
    with pytest.raises(DataError, match="has 2 channel\\(s\\) but the model takes 1; convert the images to grey"):
        to_input(np.zeros((8, 8, 2), dtype=np.uint8), 1, "two.tif")  # (grey and RGB convert into each other)
    result = run([str(BIN / "unet-predict"), f"ckpt={tiny_ckpt}", f"input={tmp_path / 'nope.png'}"], cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_eval_reports_challenge_metrics_overlays_and_tta(tiny_ckpt, tmp_path):
    result = run([str(BIN / "unet-eval"), f"ckpt={tiny_ckpt}", "tta=true"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for key in ("val/dice", "val/iou", "val/pixel_error", "val/vrand", "val/vinfo", "val/hd95"):
        assert key in result.stdout
    eval_dir = next((tmp_path / "outputs" / "eval").glob("*/*"))
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert 0 <= metrics["val/vrand"] <= 1 and 0 <= metrics["val/vinfo"] <= 1
    assert metrics["val/vrand_threshold"] in [round(0.1 * i, 1) for i in range(11)]
    assert metrics["val/hd95"] >= 0
    rows = metrics["details"]["per_image"]
    assert set(rows[0]) >= {"name", "dice", "vrand", "vinfo", "hd95"}
    assert (eval_dir / "per_image.csv").read_text().splitlines()[0].endswith("vrand,vinfo,hd95,hd95_unit")
    overlays = sorted((eval_dir / "overlays").iterdir())
    assert [p.name for p in overlays] == ["val-000.png", "val-001.png"]
    assert skio.imread(overlays[0]).shape == (64, 256, 3)  # image | truth | prediction | errors
    assert list((eval_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_predict_config_composes_with_its_defaults():
    cfg = compose_config(["ckpt=some.pt", "input=stack.tif", "output=pred", "tta=true"], config_name="predict")
    assert (cfg.ckpt, cfg.input, cfg.output, cfg.tta) == ("some.pt", "stack.tif", "pred", True)
    assert (cfg.tile_size, cfg.tile_memory, cfg.overlap, cfg.batch_size, cfg.margin) == (None, None, 0.25, None, None)
    assert cfg.trainer.device == "auto"


def test_inputs_whose_outputs_collide_are_refused(tiny_ckpt, tmp_path):
    """a.png and a.tif in one folder would both write a_prob.tif and a.png; nor may an output overwrite an input."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    skio.imsave(folder / "a.png", image, check_contrast=False)
    tifffile.imwrite(folder / "a.tif", image)
    done = run(
        [str(BIN / "unet-predict"), f"ckpt={tiny_ckpt}", f"input={folder}", f"output={tmp_path / 'out'}"], tmp_path
    )
    assert done.returncode == 2
    assert f"{folder / 'a.png'} and {folder / 'a.tif'} would both write {tmp_path / 'out' / 'a'}*" in done.stderr
    assert not (tmp_path / "out").exists()
    (folder / "a.tif").unlink()
    done = run([str(BIN / "unet-predict"), f"ckpt={tiny_ckpt}", f"input={folder}", f"output={folder}"], tmp_path)
    assert done.returncode == 2
    assert f"output={folder} would overwrite the input {folder / 'a.png'}" in done.stderr
    np.testing.assert_array_equal(skio.imread(folder / "a.png"), image)  # untouched


def test_predict_reads_grey_alpha_and_rgba_tiffs_as_training_does(tiny_ckpt, tmp_path):
    """Issue 24, item 8: a TIFF's alpha sample is dropped by unet-predict as by training's reader."""
    from unet_train.data.reading import read_image
    from unet_train.predict import run_predict

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 65535, (40, 36), dtype=np.uint16)
    rgb = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    alpha16, alpha8 = np.full_like(grey, 65535), np.full(grey.shape, 255, np.uint8)
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "grey.tif", grey, photometric="minisblack")
    tifffile.imwrite(inputs / "grey_alpha.tif", np.dstack([grey, alpha16]), photometric="minisblack", extrasamples=[2])
    tifffile.imwrite(inputs / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(inputs / "rgba.tif", np.dstack([rgb, alpha8]), photometric="rgb", extrasamples=[2])
    assert np.array_equal(read_image(inputs / "grey_alpha.tif"), grey)  # what training reads
    out = tmp_path / "out"
    settings = ["tile_size=32", "progress=never"]
    run_predict(compose_config([f"ckpt={tiny_ckpt}", f"input={inputs}", f"output={out}", *settings], "predict"))
    for plain, with_alpha in (("grey", "grey_alpha"), ("rgb", "rgba")):
        expected = tifffile.imread(out / f"{plain}_prob.tif")
        assert expected.shape == (40, 36)
        assert np.array_equal(tifffile.imread(out / f"{with_alpha}_prob.tif"), expected), with_alpha


# unet-predict with each plane slowed down (a big model on a CPU), so that a signal lands mid-stack.
SLOW_PREDICT = """
import sys, time
from unet_train.inference import TiledPredictor
fast = TiledPredictor.predict
TiledPredictor.predict = lambda self, *a, **k: (time.sleep(0.25), fast(self, *a, **k))[1]
sys.argv[0] = "unet-predict"
from unet_train.predict import main
main()
"""


@pytest.mark.slow
def test_ctrl_c_leaves_no_partial_output_and_a_rerun_writes_it_whole(tiny_ckpt, tmp_path):
    """Issue 24, item 13: SIGINT mid-stack: one INFO line, exit 130, no traceback, no partial file under a
    final name (nor a temporary one); the same command again writes every slice."""
    import os
    import signal
    import time

    from unet_train.predict import run_predict

    stack = np.random.default_rng(2).integers(0, 256, (30, 40, 52), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    args = [f"ckpt={tiny_ckpt}", f"input={tmp_path / 'stack.tif'}", f"output={out}", "tile_size=32", "progress=never"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", SLOW_PREDICT, *args]
    proc = subprocess.Popen(  # SIGINT as a terminal's foreground job gets it (a background suite's is ignored)
        command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the stack's files are open: the prediction is under way
    time.sleep(1.0)  # a few slices written
    assert proc.poll() is None, "the prediction ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if "Ctrl-C" in line]
    assert len(lines) == 1 and "[INFO]" in lines[0], err
    assert lines[0].endswith("Interrupted by Ctrl-C: unet-predict stopped.")
    assert sorted(p.name for p in out.iterdir()) == []  # nothing half-written, under any name

    run_predict(compose_config(args, "predict"))
    assert sorted(p.name for p in out.iterdir()) == ["stack_mask.tif", "stack_prob.tif"]
    assert tifffile.imread(out / "stack_prob.tif").shape == tifffile.imread(out / "stack_mask.tif").shape == stack.shape


def test_predict_takes_each_image_whole_where_it_fits_the_tile_memory(tiny_ckpt, tmp_path, caplog):
    """Issue 28: with the defaults (tile_size=null) an image that fits tile_memory is one forward pass of the
    plain model; a budget below the smallest tile stops in one line, exit 2, nothing written."""
    import torch

    from unet_train.predict import run_predict

    image = np.random.default_rng(3).integers(0, 256, (100, 77), dtype=np.uint8)
    skio.imsave(tmp_path / "odd.png", image, check_contrast=False)
    out = tmp_path / "out"
    args = [f"ckpt={tiny_ckpt}", f"input={tmp_path / 'odd.png'}", f"output={out}", "progress=never"]
    run_predict(compose_config([*args, "fold_bn=false", "trainer.channels_last=false"], "predict"))
    model, _ = load_model(tiny_ckpt)
    with torch.inference_mode():
        plain = torch.sigmoid(model(to_input(image, 1, "odd")[None]))[0, 0].numpy()
    np.testing.assert_allclose(tifffile.imread(out / "odd_prob.tif"), plain, atol=1e-6)

    small = tmp_path / "small"
    with pytest.raises(SystemExit) as stop:
        run_predict(compose_config([*args[:2], f"output={small}", "tile_memory=0.01"], "predict"))
    assert stop.value.code == 2 and not small.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("A forward pass may take 0.01 MiB (tile_memory): ")
    assert errors[0].endswith("less than one 64x64 tile; raise tile_memory to 1 or more, or set tile_size.")
