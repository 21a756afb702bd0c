"""unet-eval's extras: overlay colours and the per-image challenge metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_train.engine.evaluate import EvalResult
from unet_train.engine.report import FN, FP, TP, EvalReport, overlay


def test_overlay_colours_errors():
    image = torch.full((1, 2, 2), 0.5)
    truth = torch.tensor([[1, 1], [0, 0]])
    pred = torch.tensor([[1, 0], [1, 0]])
    panel = overlay(image, truth, pred, num_classes=2)
    assert panel.shape == (2, 8, 3) and panel.dtype == np.uint8
    assert (panel[:, :2] == 127).all()  # grey image
    assert panel[0, 2:4].tolist() == [[255] * 3] * 2 and panel[1, 2:4].tolist() == [[0] * 3] * 2
    errors = panel[:, 6:8]
    assert errors[0, 0].tolist() == list(TP)  # predicted and true
    assert errors[0, 1].tolist() == list(FN)  # missed
    assert errors[1, 0].tolist() == list(FP)  # predicted, not true
    assert errors[1, 1].tolist() == [0, 0, 0]


def test_report_adds_vrand_vinfo_and_hd95_per_image(tmp_path):
    # Membrane (positive class) is column 3; the prediction is perfect on image a, a merge on image b.
    truth = torch.zeros(2, 3, 7, dtype=torch.long)
    truth[:, :, 3] = 1
    logits = torch.full((2, 1, 3, 7), -5.0)
    logits[0, 0, :, 3] = 5.0
    batch = {"image": torch.rand(2, 1, 3, 7), "mask": truth, "name": ["a", "b"]}
    report = EvalReport(num_classes=2, overlay_dir=tmp_path / "overlays")
    report.on_batch(batch, logits)
    result = EvalResult(metrics={"dice": 0.5}, per_image=[{"name": "a"}, {"name": "b"}])
    added = report.finish(result)
    # Image b merges the two 9-pixel cells: V-Rand 0.64 and V-Info 0 (see tests/metrics/test_isbi.py).
    assert result.per_image[0]["vrand"] == 1.0 and result.per_image[1]["vrand"] == pytest.approx(0.64)
    assert added["vrand"] == pytest.approx((1 + 0.64) / 2) and added["vinfo"] == pytest.approx(0.5)
    # Perfect image: HD95 0; empty prediction against a membrane: the image diagonal.
    assert result.per_image[0]["hd95"] == 0.0
    assert result.per_image[1]["hd95"] == pytest.approx(np.hypot(3, 7))
    assert result.metrics["hd95"] == pytest.approx(np.hypot(3, 7) / 2)
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["a.png", "b.png"]


def test_cell_foreground_flips_the_border_class():
    # Same images with the cell as the positive class: the border is the negative class.
    truth = torch.ones(1, 3, 7, dtype=torch.long)
    truth[:, :, 3] = 0
    logits = torch.full((1, 1, 3, 7), 5.0)
    logits[0, 0, :, 3] = -5.0
    report = EvalReport(num_classes=2, boundary_positive=False)
    report.on_batch({"image": torch.rand(1, 1, 3, 7), "mask": truth, "name": ["a"]}, logits)
    assert report.finish(EvalResult(metrics={}, per_image=[{"name": "a"}]))["vrand"] == 1.0


def test_object_foreground_scores_the_objects_as_segments():
    # Two nuclei (columns 1-2 and 6-7): found apart, V-Rand 1; merged by the prediction into one blob, below 1.
    truth = torch.zeros(2, 5, 9, dtype=torch.long)
    truth[:, :, 1:3] = 1
    truth[:, :, 6:8] = 1
    logits = torch.full((2, 1, 5, 9), -5.0)
    logits[0, 0][truth[0] == 1] = 5.0
    logits[1, 0, :, 1:8] = 5.0
    report = EvalReport(num_classes=2, boundary_positive=False)
    report.on_batch({"image": torch.rand(2, 1, 5, 9), "mask": truth, "name": ["apart", "merged"]}, logits)
    result = EvalResult(metrics={}, per_image=[{"name": "apart"}, {"name": "merged"}])
    report.finish(result)
    assert result.per_image[0]["vrand"] == 1.0 and result.per_image[1]["vrand"] < 0.75


def test_folder_data_says_what_its_positive_class_is(tmp_path):
    from unet_train.data import ImageFolder
    from unet_train.errors import ConfigError

    from ..conftest import compose_config

    assert compose_config(["data=folder", "data.root=x"]).data.foreground == "object"
    assert ImageFolder(root=str(tmp_path), foreground="membrane").foreground == "membrane"
    with pytest.raises(ConfigError, match=r"data.foreground='cell' must be object \(the positive class"):
        ImageFolder(root=str(tmp_path), foreground="cell")


def test_multiclass_problems_get_no_challenge_metrics():
    report = EvalReport(num_classes=3)
    batch = {"image": torch.rand(1, 1, 4, 4), "mask": torch.zeros(1, 4, 4, dtype=torch.long), "name": ["a"]}
    report.on_batch(batch, torch.randn(1, 3, 4, 4))
    assert report.finish(EvalResult(metrics={}, per_image=[{"name": "a"}])) == {}


def _without_foreground(overrides):
    from omegaconf import open_dict

    from ..conftest import compose_config

    cfg = compose_config(overrides)
    with open_dict(cfg.data):
        cfg.data.pop("foreground", None)  # as a checkpoint written before data.foreground existed
    return cfg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data=folder", "data.root=x"], "object"),  # ImageFolder's default, as unet-eval builds it
        (["data=isbi"], "membrane"),
        (["data=synthetic"], "membrane"),  # SyntheticMembranes: the positive class is the membrane
    ],
)
def test_eval_validation_and_predict_agree_on_a_config_without_foreground(monkeypatch, overrides, expected):
    """A checkpoint from before data.foreground: validation (on resume), unet-eval and instance_method=auto
    decide alike, as the data class built from that config does."""
    from hydra.utils import instantiate

    from unet_train.engine import validation
    from unet_train.inference.instances import resolve_method

    cfg = _without_foreground([*overrides, "monitor=val/vrand"])
    built = getattr(instantiate(cfg.data) if overrides[0] == "data=folder" else object(), "foreground", "membrane")
    assert built == expected  # what unet-eval decides (it reads the built data module)
    seen = {}

    class Recorder(EvalReport):
        def __init__(self, num_classes, boundary_positive=True, **kwargs):
            seen["boundary_positive"] = boundary_positive
            super().__init__(num_classes, boundary_positive=boundary_positive, **kwargs)

    monkeypatch.setattr(validation, "EvalReport", Recorder)
    monkeypatch.setattr(validation, "evaluate", lambda *a, **k: EvalResult(metrics={}, per_image=[]))

    class Writer:
        def add_scalar(self, *args):
            pass

    class State:
        step = 0

    validation.validate(cfg, None, [], None, None, 2, Writer(), State())
    assert seen["boundary_positive"] == (expected == "membrane")
    assert resolve_method("auto", cfg.data) == ("membrane" if expected == "membrane" else "components")
