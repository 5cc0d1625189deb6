"""CNN and Transformer baselines (nnU-Net, SegResNet, UNETR, SwinUNETR, nnFormer) on tiny CPU inputs.

Forward, backward and a gradient on every parameter of every registered model are
tested in test_registry_models.py; here what is particular to these families.
"""

import re
import subprocess
import sys

import pytest
import torch

from baselines.nnformer import relative_position_index, shifted_window_mask, window_partition, window_reverse
from baselines.nnunet import get_pool_and_conv_props, plan_unet
from baselines.transformers import round_up_patch
from logvmamba import create_model

TEST_SIZES = {2: (64, 64), 3: (32, 32, 32)}
DEEP_SUPERVISION = ("nnunet", "nnformer")


def _size(name, dims):
    # SwinUNETR halves the map five times; 32^3 would leave one voxel for instance norm.
    return (32, 32, 64) if name.startswith("swin_unetr") and dims == 3 else TEST_SIZES[dims]


def _build(name, dims, size=None, **kwargs):
    size = _size(name, dims) if size is None else size
    return create_model(name, spatial_dims=dims, in_channels=2, out_channels=3, img_size=size, **kwargs)


def _escaped(value) -> str:
    return re.escape(str(value))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("family", DEEP_SUPERVISION)
def test_deep_supervision_is_full_resolution_first(family, dims):
    net = _build(f"{family}_test", dims, deep_supervision=True)
    size = TEST_SIZES[dims]
    with torch.no_grad():
        outs = net(torch.randn(1, 2, *size))
    assert isinstance(outs, list) and len(outs) >= 3
    for k, o in enumerate(outs):
        assert tuple(o.shape) == (1, 3, *(s // 2**k for s in size))


def test_nnunet_without_deep_supervision_leaves_only_the_low_resolution_heads_unused():
    net = _build("nnunet_test", 2)
    out = net(torch.randn(1, 2, 64, 64))
    assert isinstance(out, torch.Tensor)
    out.mean().backward()
    unused = {n for n, p in net.named_parameters() if p.grad is None}
    n_heads = len(net.decoder.seg_layers)
    assert unused == {f"decoder.seg_layers.{i}.{w}" for i in range(n_heads - 1) for w in ("weight", "bias")}


# nnU-Net v2's own plans: 2D natural images (spacing 1), BraTS-like 3D, ACDC and MSD
# Prostate 3d_fullres (anisotropic; z first as in nnU-Net, and the same with z last).
ACDC_STRIDES = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2))
ACDC_KERNELS = ((1, 3, 3),) + ((3, 3, 3),) * 5
PROSTATE_STRIDES = ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2))
PROSTATE_KERNELS = ((1, 3, 3), (1, 3, 3)) + ((3, 3, 3),) * 5


def _z_last(seq):
    return tuple(tuple(s[1:]) + (s[0],) for s in seq)


@pytest.mark.parametrize(
    "size,spacing,strides,kernels,features",
    [
        ((384, 640), None, ((1, 1),) + ((2, 2),) * 6, ((3, 3),) * 7, (32, 64, 128, 256, 512, 512, 512)),
        ((512, 512), None, ((1, 1),) + ((2, 2),) * 7, ((3, 3),) * 8, (32, 64, 128, 256, 512, 512, 512, 512)),
        ((128, 128, 128), None, ((1, 1, 1),) + ((2, 2, 2),) * 5, ((3, 3, 3),) * 6, (32, 64, 128, 256, 320, 320)),
        ((20, 256, 224), (5.0, 1.5625, 1.5625), ACDC_STRIDES, ACDC_KERNELS, (32, 64, 128, 256, 320, 320)),
        ((256, 224, 20), (1.5625, 1.5625, 5.0), _z_last(ACDC_STRIDES), _z_last(ACDC_KERNELS), (32, 64, 128, 256, 320, 320)),
        ((20, 320, 256), (3.6, 0.625, 0.625), PROSTATE_STRIDES, PROSTATE_KERNELS, (32, 64, 128, 256, 320, 320, 320)),
    ],
)
def test_planner_reproduces_nnunet_plans(size, spacing, strides, kernels, features):
    plan = plan_unet(size, spacing)
    assert plan.strides == strides
    assert plan.kernel_sizes == kernels
    assert plan.features == features
    assert plan.n_stages == len(strides)
    assert plan.n_conv_per_stage == (2,) * len(strides) and plan.n_conv_per_stage_decoder == (2,) * (len(strides) - 1)
    assert plan.patch_size == size  # already divisible: nnU-Net keeps it


def test_planner_pads_the_patch_like_nnunet():
    pools, _, _, padded, divisor = get_pool_and_conv_props((1.0, 1.0), (100, 100))
    assert pools == (4, 4) and divisor == (16, 16) and padded == (112, 112)
    with pytest.raises(ValueError, match=r"\(100, 100\).*\(112, 112\)"):
        _build("nnunet", 2, (100, 100))


def test_nnunet_uses_the_plan_and_spacing():
    net = _build("nnunet_test", 3, (20, 256, 224), spacing=(5.0, 1.5625, 1.5625))
    assert net.plan.strides == ACDC_STRIDES
    first = net.encoder.stages[0][0].convs[0].conv
    assert first.kernel_size == (1, 3, 3) and first.bias is not None
    norm = net.encoder.stages[0][0].convs[0].norm
    assert isinstance(norm, torch.nn.InstanceNorm3d) and norm.affine and norm.eps == 1e-5


@pytest.mark.parametrize(
    "name,size,params",
    [("nnunet", (384, 640), 33.48e6), ("nnunet", (512, 512), 46.33e6), ("segresnet", (384, 640), 6.30e6), ("unetr", (384, 640), 88.27e6), ("swin_unetr", (384, 640), 25.14e6)],
)
def test_paper_configurations_have_the_published_size(name, size, params):
    out = 8 if size == (384, 640) else 3
    net = create_model(name, spatial_dims=2, in_channels=3, out_channels=out, img_size=size)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(params, rel=2e-3)


def test_nnformer_paper_configurations():
    net2d = create_model("nnformer", spatial_dims=2, in_channels=3, out_channels=8, img_size=(384, 640))
    assert net2d.windows == ((7, 7), (7, 7), (24, 40), (12, 20))  # LV-MSA 7, GV-MSA in the two lowest stages
    net3d = create_model("nnformer", spatial_dims=3, in_channels=4, out_channels=3, img_size=(128, 128, 128))
    assert net3d.windows == ((4, 4, 4), (4, 4, 4), (8, 8, 8), (4, 4, 4))  # the release's 4/4/8/4 on 32/16/8/4
    assert sum(p.numel() for p in net3d.parameters()) == pytest.approx(37.5e6, rel=5e-3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,size,gflops",
    [
        ("nnunet", (384, 640), 55.9), ("nnunet", (512, 512), 60.1),
        ("segresnet", (384, 640), 58.9), ("segresnet", (512, 512), 62.8),
        ("unetr", (384, 640), 111.5), ("unetr", (512, 512), 120.1),
        ("swin_unetr", (384, 640), 67.1), ("swin_unetr", (512, 512), 71.7),
        ("nnformer", (384, 640), 125.5), ("nnformer", (512, 512), 136.7),
    ],
)
def test_paper_flops_match_the_published_table(name, size, gflops):
    from logvmamba.ops import count_flops

    out = 8 if size == (384, 640) else 3
    kwargs = dict(deep_supervision=True) if name == "nnunet" else {}
    net = create_model(name, spatial_dims=2, in_channels=3, out_channels=out, img_size=size, **kwargs).eval()
    with torch.no_grad():
        total, _ = count_flops(net, torch.randn(1, 3, *size))
    assert total / 1e9 == pytest.approx(gflops, rel=0.015)


@pytest.mark.parametrize(
    "name,dims,size,match",
    [
        ("nnunet_test", 2, (64,), r"\(64,\)"),
        ("segresnet_test", 2, (60, 64), r"\(60, 64\)"),
        ("unetr_test", 2, (40, 64), r"\(40, 64\).*\(48, 64\)"),
        ("swin_unetr_test", 3, (32, 32, 20), r"\(32, 32, 20\).*\(32, 32, 32\)"),
        ("swin_unetr_test", 3, (32, 32, 32), r"\(32, 32, 32\).*single voxel"),
        ("nnformer_test", 2, (40, 64), r"\(40, 64\)"),
    ],
)
def test_unsupported_sizes_raise_naming_the_size(name, dims, size, match):
    with pytest.raises(ValueError, match=match):
        _build(name, dims, size)


@pytest.mark.parametrize("family", ["segresnet", "unetr", "swin_unetr"])
def test_no_deep_supervision_where_the_model_has_none(family):
    with pytest.raises(ValueError, match="deep supervision"):
        _build(f"{family}_test", 2, deep_supervision=True)
    assert isinstance(_build(f"{family}_test", 2, deep_supervision=False), torch.nn.Module)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("nnunet_test", dict(spacing=(1.0, -1.0)), "spacing"),
        ("nnunet_test", dict(spacing=(1.0, 1.0, 1.0)), "spacing"),
        ("nnunet_test", dict(base_features=16, max_features=8), "max_features 8"),
        ("segresnet_test", dict(init_filters=12), "init_filters 12"),
        ("segresnet_test", dict(blocks_up=(1, 1)), "blocks_up"),
        ("unetr_test", dict(hidden_size=30, num_heads=4), "hidden_size 30"),
        ("swin_unetr_test", dict(feature_size=20), "feature_size 20"),
        ("swin_unetr_test", dict(num_heads=(1, 2, 4, 7)), r"num_heads \(1, 2, 4, 7\)"),
        ("nnformer_test", dict(num_heads=(1, 2, 3, 4)), r"num_heads \(1, 2, 3, 4\)"),
        ("nnformer_test", dict(patch_size=3), "patch_size 3"),
        ("nnformer_test", dict(global_stages=5), "global_stages 5"),
        ("nnformer_test", dict(embed_dim=15), "embed_dim 15"),
        ("nnformer_test", dict(window_size=(4, 4, 4)), "window_size"),
        ("nnformer_test", dict(down_strides=(2, 2)), "down_strides"),
    ],
)
def test_bad_arguments_raise_naming_the_value(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _build(name, 2, **kwargs)


def test_nnformer_rejects_inputs_of_another_size():
    net = _build("nnformer_test", 2)
    with pytest.raises(ValueError, match=r"\(64, 64\).*\(32, 64\)"):
        net(torch.randn(1, 2, 32, 64))


def test_round_up_patch_is_u_mambas_rule():
    assert round_up_patch((20, 256, 224), 16) == (32, 256, 224)
    assert round_up_patch((20, 256, 224), 32) == (32, 256, 224)
    assert round_up_patch((384, 640), 32) == (384, 640)
    assert round_up_patch((8, 33), 16) == (16, 48)


@pytest.mark.parametrize("grid,window", [((8, 12), (4, 3)), ((4, 6, 8), (2, 3, 4))])
def test_window_partition_roundtrip(grid, window):
    x = torch.randn(2, *grid, 5)
    windows = window_partition(x, window)
    assert windows.shape == (2 * (x[0, ..., 0].numel() // torch.tensor(window).prod().item()), int(torch.tensor(window).prod()), 5)
    assert torch.equal(window_reverse(windows, window, grid), x)
    # the first window holds the top-left block in raster order
    block = x[(0, *[slice(0, w) for w in window])].reshape(-1, 5)
    assert torch.equal(windows[0], block)


def test_relative_positions_and_shift_mask():
    index = relative_position_index((3, 4))
    assert index.shape == (12, 12) and index.min() == 0 and index.max() == 5 * 7 - 1
    assert torch.equal(index.diagonal(), torch.full((12,), 2 * 7 + 3))  # offset (0, 0)
    assert len(set(index.flatten().tolist())) == 5 * 7
    mask = shifted_window_mask((8, 8), (4, 4), (2, 2))
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window is one region
    assert (mask[3] != 0).any() and torch.equal(mask[3], mask[3].T)
    no_shift_axis = shifted_window_mask((8, 8), (8, 4), (0, 2))
    assert no_shift_axis.shape == (2, 32, 32) and (no_shift_axis[0] == 0).all()


def test_skip_attention_block_uses_the_skip():
    net = _build("nnformer_test", 2)
    block = net.decoder[-1].blocks[0]
    assert block.cross and hasattr(block.attn, "kv") and not hasattr(block.attn, "qkv")
    up = torch.randn(1, *block.grid, block.norm1.normalized_shape[0])
    skip = torch.randn_like(up, requires_grad=True)
    block(up, skip=skip).sum().backward()
    assert skip.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="skip"):
        block(up)


def test_wrapper_modules_import_monai_and_dna_lazily():
    # These wrap MONAI's and dynamic-network-architectures' networks and import them on
    # first build (nnFormer builds its own layers from MONAI's factories at import).
    code = (
        "import sys, baselines.nnunet, baselines.segresnet, baselines.transformers; "
        "print(any(m.split('.')[0] in ('monai', 'dynamic_network_architectures') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
