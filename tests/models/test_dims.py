"""The UNet in 2D and 3D from one code path: per-axis pooling, kernels that follow it, 2D unchanged."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from unet_train.build import build_model
from unet_train.engine.checkpoint import load_checkpoint, load_model_state
from unet_train.errors import ConfigError
from unet_train.export.model import max_abs_difference
from unet_train.export.torchscript import torchscript_runner, trace_torchscript
from unet_train.models import UNet
from unet_train.models.blocks import NORMS
from unet_train.models.skips import SKIPS
from unet_train.models.unet import ENCODERS, UPSAMPLES, conv_kernel_sizes, pad_to_multiple

from ..conftest import compose_config

DATA = Path(__file__).parent / "data"  # written from main's code by data/generate_main_fixtures.py

# Anisotropic pooling per depth: z (or y in 2D) is pooled later than the other axes.
POOLS = {
    3: {
        2: [[1, 2, 2], [2, 2, 2]],
        3: [[1, 2, 2], [2, 2, 2], [2, 2, 2]],
        4: [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
    },
    2: {2: [[1, 2], [2, 2]], 3: [[1, 2], [2, 2], [2, 2]], 4: [[1, 2], [1, 2], [2, 2], [2, 2]]},
}
SIZES = {3: (5, 37, 29), 2: (37, 29)}

# encoder x skip x deep supervision x spatial dims, all 32; norm, upsample and depth cycle through them
# so that each dimensionality meets every norm, both upsamplings and every depth from 2 to 4.
CASES = [
    (encoder, skip, ds, dims, NORMS[i // 2 % len(NORMS)], UPSAMPLES[i // 8 % 2], 2 + i // 2 % 3)
    for i, (encoder, skip, ds, dims) in enumerate(itertools.product(ENCODERS, SKIPS, (False, True), (2, 3)))
]


def case_id(case: tuple) -> str:
    encoder, skip, ds, dims, norm, upsample, depth = case
    return f"{dims}d-{encoder}-{skip}-{'ds' if ds else 'nods'}-{norm}-{upsample}-depth{depth}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_every_option_builds_trains_and_keeps_odd_sizes_in_2d_and_3d(case):
    encoder, skip, ds, dims, norm, upsample, depth = case
    torch.manual_seed(0)
    pools = POOLS[dims][depth]
    model = UNet(
        base_channels=4, depth=depth, encoder=encoder, skip=skip, deep_supervision=ds, norm=norm,
        upsample=upsample, dense_growth=4, spatial_dims=dims, pool_factors=pools,
    ).train()  # fmt: skip
    size = SIZES[dims]
    images = torch.randn(2, 1, *size)
    outputs = model(images)

    scales = [[math.prod(level[a] for level in pools[:k]) for a in range(dims)] for k in range(depth)]
    expected = [(2, 1, *size)]
    if ds:  # full resolution first, then each auxiliary head at ceil(size / pooling so far)
        expected += [(2, 1, *(-(-s // f) for s, f in zip(size, scales[k], strict=True))) for k in (1, 2)[: depth - 1]]
    got = [tuple(o.shape) for o in outputs] if ds else [tuple(outputs.shape)]
    assert got == expected
    assert model.size_multiple == tuple(math.prod(level[a] for level in pools) for a in range(dims))

    loss = sum(o.float().square().mean() for o in (outputs if ds else [outputs]))
    loss.backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)]
    assert convs and not any(isinstance(m, torch.nn.Conv3d if dims == 2 else torch.nn.Conv2d) for m in model.modules())

    model.eval()
    with torch.no_grad():
        single = model(images)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 1, *size)


def test_kernels_follow_the_pooling():
    """Kernel 1 on an axis not yet pooled at this level or a shallower one while another axis was; else 3."""
    assert conv_kernel_sizes([[1, 2, 2], [1, 2, 2], [2, 2, 2]]) == [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]
    assert conv_kernel_sizes([[1, 2, 2], [2, 2, 2]]) == [(1, 3, 3), (3, 3, 3), (3, 3, 3)]
    assert conv_kernel_sizes([[2, 2, 2]] * 3) == [(3, 3, 3)] * 4
    # An isotropic volume pooled less in z later (a shallow patch) keeps its 3x3x3 kernels.
    assert conv_kernel_sizes([[2, 2, 2], [1, 2, 2]]) == [(3, 3, 3)] * 3
    # z never pooled (thick sections): a 2D network along z, kernel 1 there at every level.
    assert conv_kernel_sizes([[1, 2, 2], [1, 2, 2]]) == [(1, 3, 3)] * 3
    assert conv_kernel_sizes([[2, 2]] * 4) == [(3, 3)] * 5


def test_the_3d_layers_take_the_kernels_and_factors_of_their_level():
    pools = [[1, 2, 2], [1, 2, 2], [2, 2, 2]]
    model = UNet(base_channels=2, depth=3, spatial_dims=3, pool_factors=pools, skip="attention", encoder="dilated")
    first_convs = [level[0][0] for level in model.encoder.levels]
    assert [c.kernel_size for c in first_convs] == [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]
    # Dilation only on the axes the kernel spans; padding keeps every size.
    assert [c.dilation for c in first_convs] == [(1, 1, 1), (1, 1, 1), (3, 3, 3), (5, 5, 5)]
    assert [c.padding for c in first_convs] == [(0, 1, 1), (0, 1, 1), (3, 3, 3), (5, 5, 5)]
    assert [p.kernel_size for p in model.encoder.pools] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    # Decoder levels run deep to shallow.
    assert [u.up.stride for u in model.ups] == [(2, 2, 2), (1, 2, 2), (1, 2, 2)]
    assert [d[0][0].kernel_size for d in model.decoders] == [(3, 3, 3), (1, 3, 3), (1, 3, 3)]
    assert [s.conv.kernel_size for s in model.skips] == [(7, 7, 7), (1, 7, 7), (1, 7, 7)]
    gated = UNet(
        base_channels=2, depth=3, spatial_dims=3, pool_factors=pools, skip="attention_gate", upsample="bilinear"
    )
    assert [s.project_x.stride for s in gated.skips] == [(2, 2, 2), (1, 2, 2), (1, 2, 2)]
    assert [u.up[0].scale_factor for u in gated.ups] == [(2.0, 2.0, 2.0), (1.0, 2.0, 2.0), (1.0, 2.0, 2.0)]
    assert gated.ups[0].up[0].mode == "trilinear" and gated.skips[0].mode == "trilinear"
    assert isinstance(UNet(depth=1, spatial_dims=3, dropout=0.1).dropout, torch.nn.Dropout3d)


def test_a_single_section_goes_through_a_3d_model_that_never_pools_z():
    model = UNet(base_channels=2, depth=2, spatial_dims=3, pool_factors=[[1, 2, 2], [1, 2, 2]], norm="instance").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 1, 37, 29)).shape == (1, 1, 1, 37, 29)


def test_3d_padding_reflects_on_every_axis_or_repeats_the_edges():
    torch.manual_seed(0)
    for size in [(5, 37, 29), (3, 9, 9), (1, 8, 8), (4, 16, 3)]:
        x = torch.randn(1, 2, *size)
        pads = [-s % m for s, m in zip(size, (4, 8, 8), strict=True)]
        mode = "reflect" if all(p < s for p, s in zip(pads, size, strict=True)) else "replicate"
        expected = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode=mode)
        assert torch.equal(pad_to_multiple(x, (4, 8, 8)), expected), size


@pytest.mark.parametrize("name", json.loads((DATA / "state_dict_keys_2d.json").read_text()))
def test_2d_state_dicts_keep_the_names_and_shapes_of_mains_model(name):
    recorded = json.loads((DATA / "state_dict_keys_2d.json").read_text())[name]
    model = UNet(**recorded["options"])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == recorded["state"]
    explicit = UNet(**recorded["options"], spatial_dims=2, pool_factors=[[2, 2]] * recorded["options"]["depth"])
    assert list(explicit.state_dict()) == list(recorded["state"])


def test_a_checkpoint_written_by_mains_code_loads_and_gives_the_same_logits():
    """A run's last.pt from before spatial_dims existed (attention gate + deep supervision, batch norm)."""
    path = DATA / "main_checkpoint.pt"
    checkpoint = load_checkpoint(path)
    assert "spatial_dims" not in checkpoint["config"]["model"]
    model = build_model(OmegaConf.create(checkpoint["config"]["model"]))
    load_model_state(model, checkpoint["model"], path)
    with torch.no_grad():
        logits = model.eval()(torch.linspace(-1, 1, 29 * 37).reshape(1, 1, 29, 37))
    torch.testing.assert_close(logits, torch.load(DATA / "main_checkpoint_output.pt"), rtol=0, atol=1e-6)


def test_the_model_configs_are_2d_by_default_and_build_3d_from_overrides():
    for option in ("vanilla", "attention", "attention_gate", "dense", "dilated"):
        cfg = compose_config(["data=synthetic", f"model={option}"])
        assert (cfg.model.spatial_dims, cfg.model.pool_factors) == (2, None)
    overrides = ["model=attention", "model.depth=2", "model.base_channels=2", "model.spatial_dims=3"]
    cfg = compose_config(["data=synthetic", *overrides, "model.pool_factors=[[1,2,2],[2,2,2]]"])
    model = build_model(cfg.model)
    assert model.pool_factors == [(1, 2, 2), (2, 2, 2)] and model.size_multiple == (2, 4, 4)
    assert model.encoder.levels[0][0][0].kernel_size == (1, 3, 3)


def test_bad_dimension_settings_say_which_key_to_fix():
    with pytest.raises(
        ConfigError, match=r"^model.spatial_dims=4 is not supported; use 2 \(images\) or 3 \(volumes\).$"
    ):
        UNet(spatial_dims=4)
    with pytest.raises(ConfigError, match=r"^model.pool_factors has 1 entries but model.depth=2 needs 2 "):
        UNet(depth=2, spatial_dims=3, pool_factors=[[2, 2, 2]])
    with pytest.raises(ConfigError, match=r"^model.pool_factors\[1\]=\[2, 2\] has 2 factors but model.spatial_dims=3"):
        UNet(depth=2, spatial_dims=3, pool_factors=[[2, 2, 2], [2, 2]])
    with pytest.raises(ConfigError, match=r"^model.pool_factors\[0\]=\[0, 2\] must hold integers of at least 1.$"):
        UNet(depth=1, pool_factors=[[0, 2]])
    with pytest.raises(ConfigError, match=r"^model.pool_factors=2 is not a list"):
        UNet(depth=1, pool_factors=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^model.pool_factors='abc' is not a list"):  # was "has 3 entries"
        UNet(depth=3, pool_factors="abc")  # type: ignore[arg-type]
    model = UNet(base_channels=2, depth=1, spatial_dims=3)
    with pytest.raises(ConfigError, match=r"takes \(N, C, D, H, W\) inputs but got shape \(1, 1, 8, 8\)"):
        model(torch.zeros(1, 1, 8, 8))


def test_a_traced_3d_unet_equals_pytorch_at_other_sizes(tmp_path):
    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2, spatial_dims=3, pool_factors=[[1, 2, 2], [2, 2, 2]], skip="attention_gate")
    model.eval()
    path = trace_torchscript(model, tmp_path / "model.pt", in_channels=1, example_size=(5, 13, 11))
    inputs = [torch.rand(1, 1, 5, 13, 11), torch.rand(2, 1, 3, 20, 17), torch.rand(1, 1, 1, 8, 9)]
    assert max_abs_difference(model, torchscript_runner(path), inputs) < 1e-5


@pytest.mark.slow
def test_a_3d_unet_exports_to_onnx_with_dynamic_depth_height_and_width(tmp_path):
    """``torch.onnx.export(dynamo=True)``: about 80 s on a loaded 2-core CPU, hence slow."""
    pytest.importorskip("onnxruntime")
    from unet_train.export.onnx import export_onnx, onnx_runner

    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2, spatial_dims=3, pool_factors=[[1, 2, 2], [2, 2, 2]], skip="attention_gate")
    path = export_onnx(model.eval(), tmp_path / "model.onnx", in_channels=1, example_size=(5, 13, 11))
    inputs = [torch.rand(1, 1, 5, 13, 11), torch.rand(2, 1, 3, 20, 17), torch.rand(1, 1, 1, 8, 9)]
    assert max_abs_difference(model, onnx_runner(path), inputs) < 1e-5


def test_a_3d_checkpoint_rebuilds_its_model_with_the_dimension_settings(tmp_path):
    """The checkpoint's config is all a rebuild needs: spatial_dims and pool_factors pass through build_model."""
    from unet_train.engine.checkpoint import FORMAT
    from unet_train.export.model import load_export_model

    composed = compose_config(["data=synthetic", "model.depth=2", "model.base_channels=2", "model.spatial_dims=3"])
    model_cfg = OmegaConf.to_container(composed.model, resolve=True)
    data_cfg = OmegaConf.to_container(composed.data, resolve=True)  # a checkpoint's config has both (its schema)
    assert isinstance(model_cfg, dict)
    model_cfg["pool_factors"] = [[1, 2, 2], [2, 2, 2]]
    model_cfg["deep_supervision"] = True
    torch.manual_seed(0)
    trained = build_model(OmegaConf.create(model_cfg))
    torch.save(
        {"format": FORMAT, "model": trained.state_dict(), "config": {"model": model_cfg, "data": data_cfg}},
        tmp_path / "3d.pt",
    )

    exported = load_export_model(tmp_path / "3d.pt")
    assert exported.kwargs["spatial_dims"] == 3 and exported.kwargs["pool_factors"] == [[1, 2, 2], [2, 2, 2]]
    assert exported.model.size_multiple == (2, 4, 4) and not exported.model.aux_heads
    x = torch.rand(1, 1, 3, 10, 9)
    with torch.no_grad():
        torch.testing.assert_close(exported.model(x), trained.eval()(x))


def test_the_generated_architecture_file_builds_the_same_3d_model():
    """bioimage.io's ``pytorch_state_dict`` rebuilds the model from unet_arch.py alone: it must know 3D too."""
    from unet_train.export.architecture import architecture_source

    namespace: dict = {}
    exec(compile(architecture_source(), "unet_arch.py", "exec"), namespace)  # our own generated source
    kwargs = {
        "base_channels": 2,
        "depth": 2,
        "spatial_dims": 3,
        "pool_factors": [[1, 2, 2], [2, 2, 2]],
        "skip": "dense",
    }
    torch.manual_seed(0)
    ours = UNet(**kwargs, dense_growth=2).eval()
    rebuilt = namespace["UNet"](**kwargs, dense_growth=2).eval()
    rebuilt.load_state_dict(ours.state_dict())
    x = torch.rand(1, 1, 3, 10, 9)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), ours(x), rtol=0, atol=0)


def test_a_3d_model_and_batch_go_channels_last_3d():
    # trainer.channels_last=true on a 3D model: NDHWC weights and inputs (torch.channels_last takes only 4-D)
    from unet_train.engine.runtime import channels_last_format, to_channels_last

    model = to_channels_last(UNet(1, 1, base_channels=4, depth=2, spatial_dims=3))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 1, 5, 12, 12).contiguous(memory_format=channels_last_format(5))
    assert x.is_contiguous(memory_format=torch.channels_last_3d) and model.eval()(x).shape == (1, 1, 5, 12, 12)
    assert channels_last_format(4) is torch.channels_last and channels_last_format(3) is torch.contiguous_format


def test_a_3d_pool_factors_of_the_wrong_length_names_what_null_means_for_volumes():
    """A hand-edited volume plan: null derives the factors from the spacing, not '2 everywhere'."""
    with pytest.raises(ConfigError, match=r"model.pool_factors=null \(derived from the voxel spacing for volumes\)"):
        UNet(depth=3, spatial_dims=3, pool_factors=[[1, 2, 2]])
    with pytest.raises(ConfigError, match=r"model.pool_factors=null for 2 everywhere"):
        UNet(depth=3, spatial_dims=2, pool_factors=[[2, 2]])
