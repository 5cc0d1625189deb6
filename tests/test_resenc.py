"""nnU-Net ResEnc M / L (baselines.resenc): shapes, the planner's blocks, a hand-counted size,
dynamic-network-architectures' ``ResidualEncoderUNet`` as the reference, errors, recipes.

The comparison with the networks nnU-Net v2 builds from its own ResEnc plans is the slow
``tests/test_planning.py -k resenc``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from baselines.resenc import ResidualEncoderUNet
from baselines.umamba import BasicBlockD
from logvmamba import create_model
from logvmamba.config import ROOT, dataset_recipe, load_config, model_label, model_spec
from logvmamba.planning import plan_configuration

MODELS = ("nnunet_resenc_m", "nnunet_resenc_l")
TEST_MODELS = tuple(f"{m}_test" for m in MODELS)
#: ``UNet_blocks_per_stage_encoder`` of nnunetv2 2.8.1's ResEncUNetPlanner, copied from its source
NNUNET_RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)


def _blocks_per_stage(net: ResidualEncoderUNet) -> list[int]:
    """Residual blocks actually built per encoder stage."""
    return [sum(isinstance(m, BasicBlockD) for m in stage.modules()) for stage in net.encoder["stages"]]


@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("name", TEST_MODELS)
@pytest.mark.parametrize("dims,size,strides", [
    (2, (32, 48), [(1, 1), (2, 2), (4, 4)]),  # 32 x 48 -> 4 x 6: three poolings, four stages
    (3, (16, 16, 48), [(1, 1, 1), (2, 2, 2), (4, 4, 4)]),  # 4 x 4 x 12, then the long axis alone: 4 x 4 x 6
])
def test_forward_shapes_and_deep_supervision(name, dims, size, strides, deep_supervision):
    torch.manual_seed(0)
    net = create_model(name, spatial_dims=dims, in_channels=2, out_channels=3, img_size=size,
                       deep_supervision=deep_supervision)
    out = net(torch.randn(2, 2, *size))
    if not deep_supervision:
        assert tuple(out.shape) == (2, 3, *size) and torch.isfinite(out).all()
        return
    # one map per decoder stage, full resolution first, each at its stage's total stride
    assert isinstance(out, list) and len(out) == net.plan.n_stages - 1 == len(strides)
    for o, total in zip(out, strides):
        assert tuple(o.shape) == (2, 3, *(s // t for s, t in zip(size, total))) and torch.isfinite(o).all()


@pytest.mark.parametrize("planner,name", [("nnUNetPlannerResEncM", "nnunet_resenc_m"),
                                          ("nnUNetPlannerResEncL", "nnunet_resenc_l")])
@pytest.mark.parametrize("spacing,median,classes", [
    ((1.0, 1.0, 1.0), (170, 200, 170), 2),
    ((5.0, 1.5625, 1.5625), (12, 256, 216), 4),
    ((1.0, 1.0), (512, 640), 8),
])
def test_blocks_per_stage_of_the_network_are_the_planners(planner, name, spacing, median, classes):
    c = plan_configuration(spacing, median, 100 * math.prod(median), classes, planner=planner)
    n = c["n_stages"]
    assert c["n_blocks_per_stage"] == list(NNUNET_RESENC_BLOCKS[:n]) and c["n_conv_per_stage_decoder"] == [1] * (n - 1)
    with torch.device("meta"):
        net = create_model(name, spatial_dims=len(spacing), in_channels=1, out_channels=classes,
                           img_size=tuple(c["patch_size"]), spacing=spacing)
    assert _blocks_per_stage(net) == c["n_blocks_per_stage"]
    assert [list(s) for s in net.plan.strides] == c["pool_op_kernel_sizes"]
    assert [list(k) for k in net.plan.kernel_sizes] == c["conv_kernel_sizes"]
    assert list(net.plan.features) == c["features_per_stage"]
    assert [len(stage[0]) for stage in net.decoder["stages"]] == c["n_conv_per_stage_decoder"]


def test_parameter_count_of_a_two_stage_network_by_hand():
    # 8 x 8 pools once (4 x 4 is the smallest map): 2 stages of widths 8, 16 (test widths),
    # 1 and 3 residual blocks, one decoder conv; 2 input channels, 3 classes, 3 x 3 kernels
    net = create_model("nnunet_resenc_m_test", spatial_dims=2, in_channels=2, out_channels=3, img_size=(8, 8))
    assert net.plan.strides == ((1, 1), (2, 2)) and net.plan.n_blocks_per_stage == (1, 3)

    def conv(cin, cout, k=9, bias=True):
        return cout * cin * k + (cout if bias else 0)

    def norm(c):  # instance norm, affine
        return 2 * c

    stem = conv(2, 8) + norm(8)  # 168
    stage0 = 2 * (conv(8, 8) + norm(8))  # one block, no skip: 1200
    first = conv(8, 16) + norm(16) + conv(16, 16) + norm(16) + conv(8, 16, k=1, bias=False) + norm(16)  # 3712
    stage1 = first + 2 * 2 * (conv(16, 16) + norm(16))  # 13120
    decoder = conv(16, 8, k=4) + conv(16, 8) + norm(8) + conv(8, 3, k=1)  # transposed 2x2, conv, head: 1723
    assert sum(p.numel() for p in net.parameters()) == stem + stage0 + stage1 + decoder == 16211


def _dna_reference(net: ResidualEncoderUNet, in_channels: int, out_channels: int, deep_supervision: bool):
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet as Reference

    p, dims = net.plan, len(net.plan.patch_size)
    return Reference(
        input_channels=in_channels, n_stages=p.n_stages, features_per_stage=list(p.features),
        conv_op=nn.Conv2d if dims == 2 else nn.Conv3d, kernel_sizes=[list(k) for k in p.kernel_sizes],
        strides=[list(s) for s in p.strides], n_blocks_per_stage=list(p.n_blocks_per_stage), num_classes=out_channels,
        n_conv_per_stage_decoder=list(p.n_conv_per_stage_decoder), conv_bias=True,
        norm_op=nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)


@pytest.mark.parametrize("dims,size,spacing", [(2, (32, 48), None), (3, (8, 32, 24), (3.0, 1.0, 1.0))])
def test_outputs_equal_dynamic_network_architectures_with_the_same_weights(dims, size, spacing):
    torch.manual_seed(0)
    net = create_model("nnunet_resenc_m_test", spatial_dims=dims, in_channels=2, out_channels=3, img_size=size,
                       spacing=spacing, deep_supervision=True).eval()
    reference = _dna_reference(net, 2, 3, True).eval()
    # the parameter names of dynamic-network-architectures (its duplicate all_modules / decoder.encoder keys aside)
    assert [(n, p.shape) for n, p in net.named_parameters()] == [(n, p.shape) for n, p in reference.named_parameters()]
    weights = {n: torch.randn_like(p) * 0.2 + (n.endswith("norm.weight")) for n, p in reference.named_parameters()}
    reference.load_state_dict(weights, strict=False)
    net.load_state_dict(weights)
    x = torch.randn(2, 2, *size)
    with torch.no_grad():
        ours, theirs = net(x), reference(x)
    assert len(ours) == len(theirs) == net.plan.n_stages - 1
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dims,cin,cout,size", [(3, 4, 3, (128, 128, 128)), (3, 1, 4, (160, 160, 16)),
                                                (2, 3, 8, (384, 640))])
def test_paper_size_parameter_count_is_dynamic_network_architectures(dims, cin, cout, size):
    with torch.device("meta"):
        m = create_model("nnunet_resenc_m", spatial_dims=dims, in_channels=cin, out_channels=cout, img_size=size)
        l = create_model("nnunet_resenc_l", spatial_dims=dims, in_channels=cin, out_channels=cout, img_size=size)
        reference = _dna_reference(m, cin, cout, False)
    count = sum(p.numel() for p in reference.parameters())
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in l.parameters()) == count


def test_initialisation_is_nnunets():
    net = create_model("nnunet_resenc_m_test", spatial_dims=2, in_channels=1, out_channels=2, img_size=(16, 16))
    blocks = [m for m in net.modules() if isinstance(m, BasicBlockD)]
    assert blocks and all(not b.conv2.norm.weight.any() and not b.conv2.norm.bias.any() for b in blocks)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(m.bias is None or not m.bias.any() for m in convs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(spatial_dims=4, img_size=(16,) * 4), "spatial_dims must be 2 or 3, got 4"),
    (dict(spatial_dims=2, img_size=(16, 16, 16)), r"img_size \(16, 16, 16\) must have 2 positive sizes"),
    (dict(spatial_dims=2, img_size=(16, 0)), "must have 2 positive sizes"),
    (dict(spatial_dims=2, img_size=(16, 16), spacing=(1.0, -1.0)), r"spacing \(1.0, -1.0\) must have 2 positive"),
    (dict(spatial_dims=2, img_size=(60, 64)),
     r"ResidualEncoderUNet: img_size \(60, 64\) is not a multiple of the planned total stride \(16, 16\); "
     r"nnU-Net's planner pads it to \(64, 64\)"),
    (dict(spatial_dims=3, img_size=(16, 16, 16), in_channels=0), "in_channels 0 and out_channels 2 must be positive"),
])
def test_bad_arguments_raise(kwargs, match):
    args = dict(dict(in_channels=1, out_channels=2), **kwargs)
    with pytest.raises(ValueError, match=match):
        create_model("nnunet_resenc_m_test", **args)


def test_an_unknown_planner_raises():
    with pytest.raises(ValueError, match="planner 'nnUNetPlannerResEncXXL' is not one of ExperimentPlanner"):
        plan_configuration((1.0, 1.0), (64, 64), 1e6, 2, planner="nnUNetPlannerResEncXXL")


@pytest.mark.parametrize("variant", ["test", "paper"])
@pytest.mark.parametrize("dataset", ["endoscopy", "brats"])
@pytest.mark.parametrize("model,label", [("nnunet_resenc_m", "nnU-Net ResEnc M"),
                                         ("nnunet_resenc_l", "nnU-Net ResEnc L")])
def test_recipes_resolve_and_build(model, label, dataset, variant):
    config = load_config(ROOT / "config" / "config.yaml")
    config.update(model_variant=variant, overrides={})  # the recipes themselves, without the demo's short-run rates
    arch, kwargs = model_spec(config, model, dataset)
    assert arch == (f"{model}_test" if variant == "test" else model) and kwargs == {}
    recipe = dataset_recipe(config, model, dataset)
    nnunet = dataset_recipe(config, "nnunet", dataset)
    assert model_label(config, model) == label and recipe["amp"] is True
    # nnU-Net's default trainer, as the nnunet baseline
    same = ("optimizer", "lr", "weight_decay", "momentum", "nesterov", "schedule", "poly_power", "grad_clip",
            "deep_supervision", "patch_size")
    assert {k: recipe[k] for k in same} == {k: nnunet[k] for k in same}
    with torch.device("meta"):
        net = create_model(recipe["arch"], spatial_dims=len(recipe["patch_size"]), in_channels=1, out_channels=2,
                           img_size=tuple(recipe["patch_size"]), **recipe["model_kwargs"])
    assert isinstance(net, ResidualEncoderUNet) and net.deep_supervision


def test_resenc_recipes_train_at_their_planners_patch_on_real_data(tmp_path, monkeypatch):
    import json

    import logvmamba.config as config_module
    from logvmamba.config import ROOT, load_config, resolve_recipe
    from logvmamba.data.raw import RawDataset
    from logvmamba.data.synthetic import generate

    folder = generate("endoscopy", tmp_path, seed=0, num_cases=10)
    config = load_config(ROOT / "config" / "config.yaml")
    calls = []

    def planned(ds, planner=None):
        calls.append(planner)
        return {"nnUNetPlannerResEncM": [64, 96], "nnUNetPlannerResEncL": [128, 160]}.get(planner, [32, 32])

    monkeypatch.setattr(config_module, "planned_patch", planned)
    synthetic = RawDataset(folder)
    assert resolve_recipe(config, "nnunet_resenc_l", synthetic)["patch_size"] == resolve_recipe(
        config, "nnunet", synthetic)["patch_size"]  # the demo: one patch per dataset for every model
    assert calls == []
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps(dict(meta, synthetic=False)))
    real = RawDataset(folder)
    assert not real.is_synthetic
    assert resolve_recipe(config, "nnunet_resenc_m", real)["patch_size"] == [64, 96]
    assert resolve_recipe(config, "nnunet_resenc_l", real)["patch_size"] == [128, 160]
    assert calls == ["nnUNetPlannerResEncM", "nnUNetPlannerResEncL"]
    # a configured patch wins over the planner
    fixed = dict(config, patch_size={"endoscopy": [96, 96]})
    assert resolve_recipe(fixed, "nnunet_resenc_l", real)["patch_size"] == [96, 96]
