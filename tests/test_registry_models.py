"""Every registered ``*_test`` model in every spatial dim it declares: tiny CPU inputs.

The cases come from the registry, so a newly registered model is tested with no edit
here; only a model that needs another input size than ``DEFAULT_SIZE`` or whose
parameters legitimately get no gradient is listed below, with the reason.
"""

import re

import pytest
import torch

from logvmamba import create_model, list_models
from logvmamba.registry import model_dims, register_model

DEFAULT_SIZE = {2: (64, 64), 3: (32, 32, 32)}
SIZES = {
    # SwinUNETR halves the map five times; 32^3 would leave one voxel for instance norm.
    ("swin_unetr_test", 3): (32, 32, 64),
    # Small maps keep the U-Mamba cases fast; in 2D the 4x4 bottleneck has fewer
    # pixels than channels (version 2's channel tokens).
    ("umamba_bot_test", 2): (16, 16),
    ("umamba_bot_test", 3): (16, 16, 8),
    ("umamba_enc_test", 2): (16, 16),
    ("umamba_enc_test", 3): (16, 16, 8),
}
# Parameters that get no (or an all-zero) gradient by design: model -> (name pattern, reason).
NO_GRADIENT = {
    "unetr_test": (
        r"vit\.blocks\.\d+\.norm_cross_attn\.",
        "MONAI's TransformerBlock always builds a cross-attention LayerNorm that UNETR never calls",
    ),
    "umamba_enc_test": (
        r"(stages|decoder)\.\d+\.\d+\.(conv1\.|conv2\.conv\.)",
        "nnU-Net's init_last_bn_before_add_to_0 (U-Mamba-Enc version 1) zeroes the last norm of every "
        "residual branch, so the layers before it get exactly 0 gradient at initialisation",
    ),
    **{name: (
        r"encoder\.stages\.\d+\.blocks\.\d+\.(conv1\.|conv2\.conv\.)",
        "ResidualEncoderUNet.initialize zeroes the last norm of every residual branch (init_last_bn_before_add_to_0), "
        "so the layers before it get 0 gradient at initialisation",
    ) for name in ("nnunet_resenc_m_test", "nnunet_resenc_l_test")},
}
# Models with a pretrainable encoder -> the submodule encoder_parameters() must yield.
ENCODERS = {
    ("swin_umamba_test", 2): "vssm_encoder",
    ("swin_umamba_d_test", 2): "encoder",
    ("logvmamba_swin_umamba_test", 2): "encoder",
    ("logvmamba_test", 2): "encoder",
}
SLOW: set = set()  # (name, dims) of cases above ~5 s on 2 CPU cores

CASES = [(name, dims) for name in list_models("*_test") for dims in model_dims(name)]


def _params(case):
    return pytest.param(*case, id=f"{case[0]}-{case[1]}d", marks=[pytest.mark.slow] if case in SLOW else [])


def input_size(name, dims):
    """The tiny input sides of a case."""
    return SIZES.get((name, dims), DEFAULT_SIZE[dims])


def _build(name, dims, **kwargs):
    return create_model(name, spatial_dims=dims, in_channels=2, out_channels=3, img_size=input_size(name, dims), **kwargs)


def _build_with_all_heads(name, dims):
    """The model with deep supervision where it has it, so every head is trained."""
    try:
        return _build(name, dims, deep_supervision=True), True
    except ValueError as err:
        if "deep supervision" not in str(err):
            raise
        return _build(name, dims), False


@pytest.mark.parametrize("name,dims", [_params(c) for c in CASES])
def test_forward_backward_reaches_every_parameter(name, dims):
    torch.manual_seed(0)
    net, deep = _build_with_all_heads(name, dims)
    size = input_size(name, dims)
    out = net(torch.randn(2, 2, *size))
    outs = out if deep else [out]
    assert isinstance(outs, (list, tuple)) and len(outs) >= (2 if deep else 1)
    assert tuple(outs[0].shape) == (2, 3, *size)
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.square().mean() for o in outs).backward()
    pattern = NO_GRADIENT.get(name, (None,))[0]
    checked = [(n, p) for n, p in net.named_parameters() if not (pattern and re.match(pattern, n))]
    assert checked
    missing = [n for n, p in checked if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]
    assert not missing


def test_no_gradient_exceptions_name_real_parameters():
    for name, (pattern, reason) in NO_GRADIENT.items():
        dims = model_dims(name)[0]
        assert reason and any(re.match(pattern, n) for n, _ in _build(name, dims).named_parameters()), name


@pytest.mark.parametrize("name,dims", CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def test_encoder_parameters_are_the_pretrainable_encoder(name, dims):
    net = _build(name, dims)
    if (name, dims) not in ENCODERS:
        assert not hasattr(net, "encoder_parameters")
        return
    encoder = getattr(net, ENCODERS[name, dims])
    yielded = [id(p) for p in net.encoder_parameters()]
    assert yielded == [id(p) for p in encoder.parameters()]
    assert yielded and set(yielded) < {id(p) for p in net.parameters()}


def test_encoder_freezing_covers_the_release_recipes():
    # Recipes may freeze the encoder of the full-size models of these test variants.
    for name in ("swin_umamba", "swin_umamba_d", "logvmamba_swin_umamba"):
        assert (f"{name}_test", 2) in ENCODERS


@pytest.mark.parametrize("name", list_models("*_test"))
def test_undeclared_dims_raise(name):
    for dims in sorted({1, 2, 3, 4} - set(model_dims(name))):
        with pytest.raises(ValueError, match="spatial_dims|2D only"):
            create_model(name, spatial_dims=dims, in_channels=1, out_channels=2, img_size=DEFAULT_SIZE.get(dims, (64,) * dims))


def test_every_model_has_a_test_variant():
    names = set(list_models())
    assert {f"{n}_test" for n in names if not n.endswith("_test")} <= names


def test_logvmamba_builds_the_paper_network_of_each_dim():
    from logvmamba.models.swin_umamba_d import SwinUMambaD
    from logvmamba.models.umamba_enc import UMambaEncLoG

    assert isinstance(_build("logvmamba_test", 2), SwinUMambaD)
    assert isinstance(_build("logvmamba_test", 3), UMambaEncLoG)
    torch.manual_seed(0)
    a = create_model("logvmamba", spatial_dims=3, in_channels=2, out_channels=3, img_size=(128,) * 3)
    torch.manual_seed(0)
    b = create_model("logvmamba_umamba_enc", spatial_dims=3, in_channels=2, out_channels=3, img_size=(128,) * 3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert sum(p.numel() for p in a.parameters()) == 20549849  # recorded before the one-name refactor
    with pytest.raises(ValueError, match="logvmamba: spatial_dims must be 2 or 3, got 4"):
        create_model("logvmamba", spatial_dims=4, in_channels=1, out_channels=2, img_size=(32,) * 4)


def test_register_model_checks_its_dims():
    with pytest.raises(ValueError, match=r"spatial_dims \(4,\)"):
        register_model(spatial_dims=(4,))
