"""Validation and unet-eval forward each batch within a memory budget: whole, image by image, or in tiles."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from unet_train.engine.evaluate import BudgetedForward, ForwardCache, evaluate
from unet_train.engine.runtime import make_runtime

from ..inference.test_budget import pointwise_unet
from ..inference.test_tiling import smooth_image


def batch_of_images(count: int = 2, height: int = 150, width: int = 170) -> list[dict]:
    noise = torch.Generator().manual_seed(0)
    items = []
    for i in range(count):
        image = smooth_image(height, width) + 0.1 * torch.rand(1, height, width, generator=noise)
        items.append({"image": image, "mask": (image[0] > 0.5).long(), "name": f"im{i}"})
    return items


def test_batches_are_forwarded_whole_by_image_or_tiled_as_the_budget_allows():
    model = pointwise_unet(depth=2)
    runtime = make_runtime("cpu", "32", False)
    images = torch.stack([item["image"] for item in batch_of_images()])
    with torch.inference_mode():
        plain = model(images)
    forward = BudgetedForward(model, runtime, memory=None)
    per_pixel = forward.pixels() and forward.per_pixel
    assert per_pixel is not None
    calls: list[tuple[int, ...]] = []
    probe = (1, 1, 64, 64)  # the forward that measures the bytes per pixel

    def record(_: object, args: tuple[torch.Tensor, ...]) -> None:
        if tuple(args[0].shape) != probe:
            calls.append(tuple(args[0].shape))

    handle = model.register_forward_pre_hook(record)
    try:
        for memory, expected_calls in (
            (int(2 * 152 * 172 * per_pixel), [(2, 1, 150, 170)]),  # the batch in one pass
            (int(1.5 * 152 * 172 * per_pixel), [(1, 1, 150, 170)] * 2),  # one image per pass
        ):
            calls.clear()
            forward = BudgetedForward(model, runtime, memory)
            with torch.inference_mode():
                logits = forward(images)
            assert calls == expected_calls
            torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)
        # Tiles: the logits of the blended probabilities, equal where the probabilities are not saturated.
        calls.clear()
        with torch.inference_mode():
            logits = BudgetedForward(model, runtime, int(100 * 100 * per_pixel))(images)
        assert len(calls) > 2 and all(shape[-1] <= 100 for shape in calls)
        torch.testing.assert_close(torch.sigmoid(logits), torch.sigmoid(plain), atol=1e-5, rtol=0)
    finally:
        handle.remove()


def test_evaluate_scores_the_same_in_tiles_as_whole():
    model = pointwise_unet(depth=2)
    runtime = make_runtime("cpu", "32", False)
    loader = DataLoader(batch_of_images(), batch_size=2)
    whole = evaluate(model, loader, runtime, num_classes=2)
    forward = BudgetedForward(model, runtime)
    forward.pixels()
    assert forward.per_pixel is not None
    tiled = evaluate(model, loader, runtime, num_classes=2, memory=int(100 * 100 * forward.per_pixel))
    assert whole.metrics.keys() == tiled.metrics.keys() and whole.metrics["dice"] > 0
    for key, value in whole.metrics.items():
        assert abs(tiled.metrics[key] - value) < 1e-6, key


def count_measurements(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the probes that measure a model's forward bytes per pixel (one per BudgetedForward built)."""
    from unet_train.inference import budget

    measured: list[tuple[int, ...]] = []
    original = budget.forward_bytes_per_pixel

    def counted(forward, batch):
        measured.append(tuple(batch.shape))
        return original(forward, batch)

    monkeypatch.setattr(budget, "forward_bytes_per_pixel", counted)
    return measured


def test_a_forward_cache_measures_once_across_validations_and_again_when_its_inputs_change(monkeypatch):
    measured = count_measurements(monkeypatch)
    model, other = pointwise_unet(depth=2), pointwise_unet(depth=2)
    runtime = make_runtime("cpu", "32", False)
    loader = DataLoader(batch_of_images(height=40, width=40), batch_size=2)
    forwards = ForwardCache()
    first = evaluate(model, loader, runtime, num_classes=2, forwards=forwards)
    kept = forwards.forward
    second = evaluate(model, loader, runtime, num_classes=2, forwards=forwards)
    assert len(measured) == 1 and forwards.forward is kept  # the second validation reuses the first's forward
    assert first.metrics == second.metrics
    evaluate(model, loader, runtime, num_classes=2)  # no cache: a forward of its own, measured again
    assert len(measured) == 2
    for changed in (
        dict(model=other, runtime=runtime, memory=None),  # another model
        dict(model=other, runtime=runtime, memory=10**8),  # another memory budget
        dict(model=other, runtime=make_runtime("cpu", "bf16", False), memory=10**8),  # another precision
    ):
        before = forwards.forward
        evaluate(
            changed["model"], loader, changed["runtime"], num_classes=2, memory=changed["memory"], forwards=forwards
        )
        assert forwards.forward is not before and forwards.forward.model is changed["model"]
    assert len(measured) == 5
    runtime.channels_last = True  # autotuning changed the layout mid-run: measured again
    evaluate(model, loader, runtime, num_classes=2, forwards=forwards)
    assert len(measured) == 6


def test_a_run_measures_its_validation_forward_once(tmp_path, monkeypatch):
    from unet_train.engine.fit import fit

    from ..conftest import TINY, compose_config

    measured = count_measurements(monkeypatch)
    fit(compose_config([*TINY, "trainer.val_every=1"]), tmp_path)  # two epochs
    assert len(measured) == 1  # two validations, one measurement
