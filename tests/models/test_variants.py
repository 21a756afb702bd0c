"""Every encoder x skip x deep-supervision combination, and the blocks that make them."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from unet_train.build import build_loss, build_model
from unet_train.config import config_dir
from unet_train.engine.fit import fit
from unet_train.errors import ConfigError
from unet_train.evaluate import run_eval
from unet_train.losses import BCELoss, DeepSupervisionLoss
from unet_train.models import UNet
from unet_train.models.skips import AttentionGateSkip, DenseSkip, PlainSkip, SpatialAttentionSkip
from unet_train.models.unet import ENCODERS, default_dilation_rates

from ..conftest import TINY, compose_config

SKIP_TYPES = {
    "concat": PlainSkip,
    "attention": SpatialAttentionSkip,
    "attention_gate": AttentionGateSkip,
    "dense": DenseSkip,
}
COMBOS = list(itertools.product(ENCODERS, SKIP_TYPES, (False, True)))
IDS = [f"{enc}-{skip}-{'ds' if ds else 'nods'}" for enc, skip, ds in COMBOS]


def tiny_unet(encoder: str, skip: str, deep_supervision: bool, **kwargs) -> UNet:
    options = {"encoder": encoder, "skip": skip, "deep_supervision": deep_supervision, "dense_growth": 4}
    return UNet(base_channels=4, depth=3, **options, **kwargs)


@pytest.mark.parametrize(("encoder", "skip", "deep_supervision"), COMBOS, ids=IDS)
def test_combination_trains_one_step_on_an_odd_input(encoder, skip, deep_supervision):
    torch.manual_seed(0)
    model = tiny_unet(encoder, skip, deep_supervision).train()
    assert all(isinstance(s, SKIP_TYPES[skip]) for s in model.skips)
    images = torch.randn(2, 1, 37, 45)
    target = (torch.rand(2, 37, 45) > 0.5).long()

    outputs = model(images)
    if deep_supervision:
        # Full resolution first, then 1/2 and 1/4 of it, cropped to ceil(size / 2**k).
        assert [tuple(o.shape) for o in outputs] == [(2, 1, 37, 45), (2, 1, 19, 23), (2, 1, 10, 12)]
    else:
        assert outputs.shape == (2, 1, 37, 45)
    loss = DeepSupervisionLoss(BCELoss())(outputs, target)
    assert torch.isfinite(loss)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.zero_grad()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []  # every block, auxiliary heads included, is in the graph
    optimizer.step()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []

    model.eval()
    with torch.inference_mode():
        single = model(images)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 1, 37, 45)


def eval_in_process(ckpt: Path, out_dir: Path) -> dict[str, float]:
    """Run ``unet-eval ckpt=... split=val`` in this process, with the Hydra state the CLI would set."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(
            config_name="eval",
            overrides=[f"ckpt={ckpt}", "split=val", "trainer.device=cpu", "save_predictions=false"],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
    out_dir.mkdir(parents=True)
    HydraConfig.instance().set_config(cfg)
    try:
        return run_eval(cfg)
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.slow
@pytest.mark.parametrize(("encoder", "skip", "deep_supervision"), COMBOS, ids=IDS)
def test_combination_round_trips_through_a_checkpoint_into_eval(encoder, skip, deep_supervision, tmp_path):
    overrides = [
        *TINY,
        "trainer.max_epochs=1",
        f"model.encoder={encoder}",
        f"model.skip={skip}",
        f"model.deep_supervision={str(deep_supervision).lower()}",
        "data.image_size=45",  # odd: the model pads and crops
        "data.patch_size=24",
        "data.num_train=4",  # one optimizer step
        "model.dense_growth=4",
        # Channels-last batch norm is slow on CPU for such tiny maps; the format does not change the weights.
        "trainer.channels_last=false",
    ]
    cfg = compose_config(overrides)
    trained = fit(cfg, tmp_path / "train")
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"

    scores = eval_in_process(ckpt, tmp_path / "eval")

    # last.pt holds the weights of the last validation: evaluating it reproduces that validation.
    for key in ("val/dice", "val/iou", "val/pixel_error"):
        assert scores[key] == pytest.approx(trained[key], abs=1e-6), key
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["val/dice"] == scores["val/dice"] and written["details"]["images"] == 2


def test_named_variants_and_a_free_combination_compose_to_the_intended_parts():
    def built(*overrides: str) -> UNet:
        return build_model(compose_config(["data=synthetic", *overrides, "model.base_channels=4"]).model)

    assert all(isinstance(s, PlainSkip) for s in built("model=vanilla").skips)
    assert all(isinstance(s, SpatialAttentionSkip) for s in built("model=attention").skips)
    assert all(isinstance(s, AttentionGateSkip) for s in built("model=attention_gate").skips)
    dense = built("model=dense")
    assert all(isinstance(s, DenseSkip) and len(s.block.layers) == 4 for s in dense.skips)
    dilated = built("model=dilated")
    assert [level[0][0].dilation for level in dilated.encoder.levels] == [(r, r) for r in (1, 1, 1, 3, 5)]

    combo = built("model=attention", "model.encoder=dilated", "model.deep_supervision=true", "model.depth=3")
    assert all(isinstance(s, SpatialAttentionSkip) for s in combo.skips)
    assert [level[1][0].dilation[0] for level in combo.encoder.levels] == [1, 1, 3, 5]
    assert len(combo.aux_heads) == 2


MODEL_OPTIONS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


@pytest.mark.parametrize("depth", [2, 3, 5])
@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_every_model_option_composes_and_builds_at_any_depth(option, depth):
    """No variant file fixes a per-level setting: each follows model.depth (the dilated one its rates)."""
    cfg = compose_config(["data=synthetic", f"model={option}", f"model.depth={depth}", "model.base_channels=2"])
    model = build_model(cfg.model).eval()
    assert len(model.encoder.levels) == depth + 1
    if cfg.model.encoder == "dilated":
        rates = [level[0][0].dilation[0] for level in model.encoder.levels]
        assert rates == default_dilation_rates(depth) == [1] * (depth - 1) + [3, 5]
    with torch.no_grad():
        assert model(torch.rand(1, 1, 2**depth + 3, 2**depth)).shape == (1, 1, 2**depth + 3, 2**depth)


def test_the_quickstart_composes_with_the_dilated_model_at_its_depth():
    cfg = compose_config(["experiment=quickstart", "model=dilated"])
    assert cfg.model.depth == 3
    model = build_model(cfg.model)
    assert [level[0][0].dilation[0] for level in model.encoder.levels] == [1, 1, 3, 5]


def test_dilation_rates_per_level():
    assert default_dilation_rates(1) == [1, 3]
    assert default_dilation_rates(2) == [1, 3, 5]
    assert default_dilation_rates(4) == [1, 1, 1, 3, 5]
    model = UNet(base_channels=4, depth=3, encoder="dilated", dilation_rates=[1, 2, 2, 4])
    assert [level[0][0].dilation[0] for level in model.encoder.levels] == [1, 2, 2, 4]
    # The plain encoder ignores rates; the decoder is never dilated.
    plain = UNet(base_channels=4, depth=3, encoder="double_conv", dilation_rates=[1, 2, 2, 4])
    assert {m.dilation for m in plain.modules() if isinstance(m, torch.nn.Conv2d)} == {(1, 1)}
    with pytest.raises(ConfigError, match=r"model.dilation_rates=\[1, 1, 1, 3, 5\] has 5 entries but model.depth=2"):
        UNet(depth=2, encoder="dilated", dilation_rates=[1, 1, 1, 3, 5])
    with pytest.raises(ConfigError, match="must all be at least 1"):
        UNet(depth=1, encoder="dilated", dilation_rates=[1, 0])


SkipCall = tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]


def skip_calls(model: UNet, images: torch.Tensor) -> list[SkipCall]:
    """Run ``model`` and record, per skip, its module, encoder features, gate and output."""
    calls = []
    hooks = [
        skip.register_forward_hook(lambda module, args, out: calls.append((module, args[0], args[1], out)))
        for skip in model.skips
    ]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return calls


@pytest.mark.parametrize("skip", ["attention", "attention_gate"])
def test_attention_maps_lie_in_zero_one_on_the_skip_grid(skip):
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3, skip=skip).eval()
    calls = skip_calls(model, torch.randn(2, 1, 37, 45))
    assert len(calls) == 3
    for module, features, gate, out in calls:
        weights = module.attention_map(features) if skip == "attention" else module.attention_map(features, gate)
        assert weights.shape == (features.shape[0], 1, *features.shape[-2:])
        assert gate.shape[-1] * 2 == features.shape[-1]  # the gate is the coarser decoder map
        assert weights.min() > 0 and weights.max() < 1
        torch.testing.assert_close(out, features * weights)


def test_spatial_attention_pools_mean_and_max_over_channels():
    skip = SpatialAttentionSkip(channels=3, kernel_size=7)
    with torch.no_grad():
        skip.conv.weight.zero_()
        skip.conv.bias.zero_()
        skip.conv.weight[0, 0, 3, 3] = 1.0  # centre tap of the mean channel
        skip.conv.weight[0, 1, 3, 3] = -2.0  # centre tap of the max channel
    features = torch.tensor([1.0, 2.0, 6.0]).view(1, 3, 1, 1).expand(1, 3, 5, 5)
    expected = torch.sigmoid(torch.tensor(3.0 - 2.0 * 6.0))
    torch.testing.assert_close(skip.attention_map(features), expected.expand(1, 1, 5, 5))


def test_attention_gate_is_additive_and_driven_by_the_coarse_gate():
    """Oktay et al.: alpha = sigmoid(psi(ReLU(W_x x + W_g g + b_g)) + b_psi), computed on g's grid."""
    gate_skip = AttentionGateSkip(channels=2, gate_channels=1, inter_channels=1)
    with torch.no_grad():
        gate_skip.project_x.weight.fill_(0.25)  # 2x2 stride 2 over 2 channels: twice the local mean
        gate_skip.project_g.weight.fill_(1.0)
        gate_skip.project_g.bias.fill_(0.5)
        gate_skip.psi.weight.fill_(2.0)
        gate_skip.psi.bias.fill_(-1.0)
    features = torch.ones(1, 2, 8, 6)
    for g, expected in [(-3.0, 1 / (1 + torch.e)), (0.0, torch.sigmoid(torch.tensor(2 * 2.5 - 1)).item())]:
        gate = torch.full((1, 1, 4, 3), g)  # relu(2 + g + 0.5): 0 for g=-3, 2.5 for g=0
        alpha = gate_skip.attention_map(features, gate)
        torch.testing.assert_close(alpha, torch.full((1, 1, 8, 6), expected))
    # A gate that differs in one coarse cell changes the coefficients around that cell only.
    gate = torch.full((1, 1, 4, 3), -3.0)
    gate[..., 0, 0] = 0.0
    alpha = gate_skip.attention_map(features, gate)
    assert alpha[0, 0, 0, 0] > alpha[0, 0, 7, 5]
    torch.testing.assert_close(alpha[0, 0, 7, 5], torch.tensor(1 / (1 + torch.e)))


def test_dense_skip_hands_the_decoder_the_channels_it_expects():
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3, skip="dense", dense_layers=3, dense_growth=5).eval()
    calls = skip_calls(model, torch.randn(1, 1, 37, 45))
    for (module, features, _, out), decoder, up in zip(calls, model.decoders, model.ups, strict=True):
        assert module.out_channels == features.shape[1] + 3 * 5 == out.shape[1]
        assert out.shape[-2:] == features.shape[-2:]
        up_channels = up.up.out_channels
        assert decoder[0][0].in_channels == out.shape[1] + up_channels
        torch.testing.assert_close(out[:, : features.shape[1]], features)  # dense: the input is kept


def test_deep_supervision_heads_are_finest_first_and_depth_bounded():
    model = UNet(base_channels=4, depth=4, deep_supervision=True, supervision_levels=3).train()
    outputs = model(torch.randn(1, 1, 64, 48))
    assert [tuple(o.shape[-2:]) for o in outputs] == [(64, 48), (32, 24), (16, 12), (8, 6)]
    assert len(UNet(base_channels=4, depth=2, deep_supervision=True, supervision_levels=3).aux_heads) == 1
    with pytest.raises(ConfigError, match="model.deep_supervision=true needs .* model.depth=1"):
        UNet(base_channels=4, depth=1, deep_supervision=True)
    with pytest.raises(ConfigError, match="model.supervision_levels=0"):
        UNet(base_channels=4, depth=3, deep_supervision=True, supervision_levels=0)


def test_build_loss_wraps_the_loss_with_the_configured_weights():
    cfg = compose_config(["data=synthetic", "model.deep_supervision=true", "deep_supervision_weights=[0.5,0.3,0.2]"])
    loss = build_loss(cfg)
    assert isinstance(loss, DeepSupervisionLoss) and loss.weights == [0.5, 0.3, 0.2]
    assert not isinstance(build_loss(compose_config(["data=synthetic"])), DeepSupervisionLoss)


@pytest.mark.slow
def test_unet_eval_console_script_scores_a_combined_variant(tmp_path):
    """The installed ``unet-eval`` rebuilds dilated + attention gate + deep supervision from the checkpoint alone."""
    overrides = [*TINY, "trainer.max_epochs=1", "trainer.channels_last=false", "data.num_train=4"]
    overrides += ["model.encoder=dilated", "model.skip=attention_gate", "model.deep_supervision=true"]
    trained = fit(compose_config(overrides), tmp_path / "train")
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"
    unet_eval = Path(sys.executable).parent / "unet-eval"
    result = subprocess.run(
        [str(unet_eval), f"ckpt={ckpt}", "split=val", "trainer.device=cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (eval_dir,) = (tmp_path / "outputs" / "eval").glob("*/*")
    scores = json.loads((eval_dir / "metrics.json").read_text())
    assert scores["val/dice"] == pytest.approx(trained["val/dice"], abs=1e-6)
    assert sorted(p.name for p in (eval_dir / "predictions").iterdir()) == ["val-000.png", "val-001.png"]
