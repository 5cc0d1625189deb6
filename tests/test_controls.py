"""No-Mamba controls (``mixer="none"``): nnU-Net Revisited's "No-Mamba Base" and its analogues.

The control of a network is the same network with every Mamba / VSS token mixer
replaced by the identity. The mixers of the full network are found here by type
(``VSSBlock.self_attention``, ``MambaLayer``), independently of how the networks
build their controls.
"""

import pytest
import torch
import torch.nn as nn

import logvmamba.models.mamba_layer as mamba_layer_module
import logvmamba.models.mixer as mixer_module
from logvmamba import create_model
from logvmamba.config import ROOT, dataset_recipe, load_config, model_label, model_spec
from logvmamba.models.mamba_layer import Mamba, MambaLayer
from logvmamba.models.mixer import CONTROL_MIXER, MIXERS, SS2D, LoGMixer, VSSBlock, build_mixer
from logvmamba.models.umamba_enc import stage_mixers

# (registered model, spatial_dims, in_channels, patch, extra keywords)
CASES = [
    ("logvmamba_test", 2, 3, (64, 64), {}),
    ("logvmamba_test", 3, 1, (32, 32, 32), {}),
    ("umamba_bot_test", 2, 3, (16, 16), {}),
    ("umamba_bot_test", 3, 1, (16, 16, 8), {}),
    ("umamba_enc_test", 2, 3, (16, 16), {}),
    ("umamba_enc_test", 3, 1, (16, 16, 8), {}),
    ("umamba_enc_test", 2, 3, (16, 16), {"version": 2}),  # with a channel-token Mamba layer
]
IDS = [f"{name}-{dims}d{'-v2' if kw else ''}" for name, dims, _, _, kw in CASES]
SCAN_MODULES = (LoGMixer, SS2D, Mamba, MambaLayer)
VARIANTS = {"logvmamba_nomamba": "logvmamba", "umamba_bot_nomamba": "umamba_bot", "umamba_enc_nomamba": "umamba_enc"}


def _build(name, dims, cin, size, seed=0, **kwargs):
    torch.manual_seed(seed)
    return create_model(name, spatial_dims=dims, in_channels=cin, out_channels=3, img_size=size, **kwargs)


def _mixer_paths(net: nn.Module) -> set[str]:
    """Module paths of the token mixers: every VSS block's ``self_attention`` and every U-Mamba layer."""
    paths = {f"{name}.self_attention".lstrip(".") for name, m in net.named_modules() if isinstance(m, VSSBlock)}
    paths |= {name for name, m in net.named_modules() if isinstance(m, MambaLayer)}
    return paths


def _under(name: str, paths: set[str]) -> bool:
    return any(name.startswith(p + ".") for p in paths)


@pytest.mark.parametrize("name, dims, cin, size, kwargs", CASES, ids=IDS)
def test_control_has_the_full_parameters_minus_the_mixers(name, dims, cin, size, kwargs):
    full = _build(name, dims, cin, size, **kwargs)
    control = _build(name, dims, cin, size, mixer="none", **kwargs)
    paths = _mixer_paths(full)
    assert paths and all(isinstance(full.get_submodule(p), SCAN_MODULES) for p in paths)
    full_params = {n: p.shape for n, p in full.named_parameters()}
    control_params = {n: p.shape for n, p in control.named_parameters()}
    for n, shape in control_params.items():
        assert full_params.get(n) == shape, n
    removed = set(full_params) - set(control_params)
    assert removed == {n for n in full_params if _under(n, paths)}
    # every mixer is the identity at the same place; nothing else was touched
    assert all(isinstance(control.get_submodule(p), nn.Identity) for p in paths)
    mixer_count = sum(q.numel() for p in paths for q in full.get_submodule(p).parameters())
    total = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert total(full) == total(control) + mixer_count
    assert mixer_count > 0


def test_umamba_bot_control_drops_one_hand_counted_mamba_layer():
    # umamba_bot_test 2D: bottleneck width 32, Mamba inner 64, dt_rank 2, d_state 4, d_conv 4
    norm = 2 * 32
    mamba = 32 * 128 + (64 * 4 + 64) + 64 * (2 + 2 * 4) + (2 * 64 + 64) + 64 * 4 + 64 + 64 * 32
    full = _build("umamba_bot_test", 2, 3, (16, 16))
    control = _build("umamba_bot_test", 2, 3, (16, 16), mixer="none")
    total = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert total(full) - total(control) == norm + mamba == 7680


@pytest.mark.parametrize("name, dims, cin, size, kwargs", CASES, ids=IDS)
def test_control_forward_backward_without_any_scan(name, dims, cin, size, kwargs, monkeypatch):
    full = _build(name, dims, cin, size, **kwargs)
    control = _build(name, dims, cin, size, mixer="none", **kwargs)
    torch.manual_seed(1)
    x1, x2 = torch.randn(2, cin, *size), torch.randn(2, cin, *size)
    out = full(x1)
    expected_shape = out.shape
    out.square().mean().backward()
    # heads used only with deep supervision get no gradient in either network
    trained = {n for n, p in full.named_parameters() if p.grad is not None}

    def no_scan(*args, **kw):
        raise AssertionError("the No-Mamba control ran a selective scan")

    monkeypatch.setattr(mixer_module, "selective_scan", no_scan)
    monkeypatch.setattr(mamba_layer_module, "selective_scan", no_scan)
    assert not any(isinstance(m, SCAN_MODULES) for m in control.modules())
    y1 = control(x1)
    assert y1.shape == expected_shape == (2, 3, *size)
    assert torch.isfinite(y1).all() and y1.std() > 0
    with torch.no_grad():
        assert not torch.allclose(control(x2), y1)
    y1.square().mean().backward()
    with_grad = {n for n, p in control.named_parameters() if p.grad is not None and torch.isfinite(p.grad).all()}
    assert with_grad == trained & {n for n, _ in control.named_parameters()}


@pytest.mark.parametrize("dims, size", [(2, (64, 64)), (3, (32, 32, 32))])
def test_logvmamba_control_block_is_x_plus_layernorm(dims, size):
    control = _build("logvmamba_test", dims, 1, size, mixer="none").eval()
    blocks = [m for m in control.modules() if isinstance(m, VSSBlock)]
    assert blocks
    for block in blocks:
        width = block.ln_1.normalized_shape[0]
        x = torch.randn(1, *(4,) * dims, width)
        with torch.no_grad():
            expected = x + nn.functional.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
            assert torch.allclose(block(x), expected, atol=1e-6)


def test_2d_control_replaces_the_encoders_ss2d_too():
    full = _build("logvmamba_test", 2, 3, (64, 64))
    control = _build("logvmamba_test", 2, 3, (64, 64), mixer="none")
    encoder_mixers = {p for p in _mixer_paths(full) if p.startswith("encoder.")}
    assert encoder_mixers and all(isinstance(full.get_submodule(p), SS2D) for p in encoder_mixers)
    assert all(isinstance(control.get_submodule(p), nn.Identity) for p in encoder_mixers)


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "config" / "config.yaml")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dataset, dims, size", [("endoscopy", 2, (64, 64)), ("acdc", 3, (32, 32, 32))])
def test_recipe_variants_resolve_to_the_control(config, variant, dataset, dims, size):
    base = VARIANTS[variant]
    arch, kwargs = model_spec(config, variant, dataset, variant="test")
    base_arch, base_kwargs = model_spec(config, base, dataset, variant="test")
    assert arch == base_arch and arch.endswith("_test") and kwargs == dict(base_kwargs, mixer=CONTROL_MIXER)
    assert model_spec(config, variant, dataset, variant="paper")[0] == model_spec(config, base, dataset, variant="paper")[0]
    # trained with the base's recipe, only the model keyword differs
    recipe, base_recipe = dataset_recipe(config, variant, dataset), dataset_recipe(config, base, dataset)
    assert recipe.pop("model_kwargs") == dict(base_recipe.pop("model_kwargs"), mixer=CONTROL_MIXER)
    assert recipe.pop("model") == variant and base_recipe.pop("model") == base
    assert recipe == base_recipe
    assert model_label(config, variant) != model_label(config, base)
    kwargs.pop("deep_supervision", None)  # logvmamba 3D has none; irrelevant here
    net = create_model(arch, spatial_dims=dims, in_channels=1, out_channels=2, img_size=size, **kwargs)
    assert not any(isinstance(m, SCAN_MODULES) for m in net.modules())
    assert not any(n.split(".")[-1] in ("A_log", "A_logs", "D", "Ds") for n, _ in net.named_parameters())


def test_build_mixer_none_is_the_identity():
    assert isinstance(build_mixer(CONTROL_MIXER, 32, 3, (4, 4, 4), d_state=8, gtx_stride=2), nn.Identity)
    assert CONTROL_MIXER == "none" and CONTROL_MIXER not in MIXERS
    assert stage_mixers("none") == ("none",) * 5
    assert stage_mixers(["none", "log", "log", "global", "none"]) == ("none", "log", "log", "global", "none")


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_mixer("nope", 32, 2, (4, 4)),
        lambda: stage_mixers(["none", "nope", "log", "log", "log"]),
        lambda: _build("logvmamba_test", 2, 3, (64, 64), mixer="nope"),
        lambda: _build("logvmamba_test", 3, 1, (32, 32, 32), mixer="nope"),
        lambda: _build("umamba_bot_test", 2, 3, (16, 16), mixer="nope"),
        lambda: _build("umamba_enc_test", 3, 1, (16, 16, 8), mixer="nope"),
    ],
    ids=["build_mixer", "stage_mixers", "logvmamba-2d", "logvmamba-3d", "umamba_bot", "umamba_enc"],
)
def test_an_unknown_mixer_is_a_clear_error(build):
    with pytest.raises(ValueError, match=r"'nope' .*'none'"):
        build()


def test_umamba_takes_only_mamba_or_none():
    with pytest.raises(ValueError, match=r"mixer 'log' is not one of \('mamba', 'none'\)"):
        _build("umamba_bot_test", 2, 3, (16, 16), mixer="log")
