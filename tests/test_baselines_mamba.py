"""Vision-Mamba baselines (U-Mamba-Bot/-Enc, Swin-UMamba, Swin-UMamba-dagger) on tiny CPU inputs.

Forward, backward and a gradient on every parameter of every registered model are
tested in test_registry_models.py; here what is particular to these families.
"""

import pytest
import torch

from logvmamba import create_model
from logvmamba.models.mamba_layer import Mamba, MambaLayer
from logvmamba.models.swin_umamba_d import VMambaEncoder
from logvmamba.ops import scan_backend

UMAMBA_SIZES = {2: (16, 16), 3: (16, 16, 8)}  # 2D: the bottleneck 4x4 map has fewer pixels than 32 channels


def _run(net, shape, expect_outputs):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    out = net(x)
    outs = out if isinstance(out, list) else [out]
    assert len(outs) == expect_outputs
    assert outs[0].shape[2:] == x.shape[2:]
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    return outs


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ["umamba_bot_test", "umamba_enc_test"])
def test_umamba_version_2_forward_backward(name, dims):
    size = UMAMBA_SIZES[dims]
    net = create_model(name, spatial_dims=dims, in_channels=2, out_channels=3, img_size=size, version=2,
                       deep_supervision=True)
    outs = _run(net, (2, 2, *size), expect_outputs=2)
    assert outs[1].shape[2:] == tuple(s // 2 for s in size)
    net.deep_supervision = False
    assert net(torch.randn(1, 2, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize("name", ["swin_umamba_test", "swin_umamba_d_test"])
def test_swin_umamba_deep_supervision_resolutions(name):
    net = create_model(name, spatial_dims=2, in_channels=3, out_channels=4, img_size=(64, 64), deep_supervision=True)
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == ([64, 32, 16, 8] if name == "swin_umamba_test" else [64, 16, 8, 4])
    net.deep_supervision = False
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)


def test_umamba_versions_place_mamba_layers_as_the_releases():
    size = (16, 16)
    v1 = create_model("umamba_enc_test", spatial_dims=2, in_channels=1, out_channels=2, img_size=size)
    v2 = create_model("umamba_enc_test", spatial_dims=2, in_channels=1, out_channels=2, img_size=size, version=2)
    v2_3d = create_model("umamba_enc_test", spatial_dims=3, in_channels=1, out_channels=2, img_size=(8, 8, 8), version=2)
    has = lambda net: [isinstance(m, MambaLayer) for m in net.mamba_layers]  # noqa: E731
    assert has(v1) == [True, True, True] and v1.channel_token == [False] * 3
    assert has(v2) == [True, False, True]  # 2D, 3 stages: every other stage, always the last
    assert v2.channel_token == [False, False, True]  # 4x4 = 16 pixels <= 32 channels
    assert v2.mamba_layers[2].dim == 16 and v2.concat == [True, False]  # the 2D release skips the top concat
    assert has(v2_3d) == [True, True, True] and v2_3d.channel_token == [False, False, True] and all(v2_3d.concat)
    bot = create_model("umamba_bot_test", spatial_dims=2, in_channels=1, out_channels=2, img_size=size, version=2)
    assert has(bot) == [False, False, True] and bot.channel_token == [False] * 3
    assert isinstance(v1.upsample[0], torch.nn.ConvTranspose2d) and not isinstance(v2.upsample[0], torch.nn.ConvTranspose2d)


@pytest.mark.parametrize(
    "dataset,shape,classes,bot,enc",
    [
        ("endoscopy", (384, 640), 8, 63.3, 67.3),
        pytest.param("cell", (512, 512), 3, 86.2, 91.8, marks=pytest.mark.slow),
    ],
)
def test_umamba_paper_sizes_match_the_published_parameters(dataset, shape, classes, bot, enc):
    # nnU-Net plans 7 stages for 384x640 and 8 for 512x512; published 63M/67M and 86M/92M
    for name, expected in (("umamba_bot", bot), ("umamba_enc", enc)):
        net = create_model(name, spatial_dims=2, in_channels=3, out_channels=classes, img_size=shape)
        assert len(net.stages) == (7 if dataset == "endoscopy" else 8)
        assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(expected, abs=0.05)


@pytest.mark.slow
def test_swin_umamba_paper_sizes():
    net = create_model("swin_umamba", spatial_dims=2, in_channels=3, out_channels=8, img_size=(384, 640))
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(59.9, abs=0.05)  # published 60M
    assert tuple(net.vssm_encoder.patch_embed.proj.weight.shape) == (96, 48, 2, 2)
    dagger = create_model("swin_umamba_d", spatial_dims=2, in_channels=3, out_channels=8, img_size=(384, 640))
    assert sum(p.numel() for p in dagger.parameters()) / 1e6 == pytest.approx(27.5, abs=0.05)  # published 28M


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("umamba_bot_test", dict(spatial_dims=2, img_size=(18, 16)), "not divisible"),
        ("umamba_bot_test", dict(spatial_dims=4, img_size=(16, 16)), "spatial_dims"),
        ("umamba_enc_test", dict(spatial_dims=2, img_size=(16, 16), version=3), "version 3"),
        ("umamba_enc_test", dict(spatial_dims=2, img_size=(16, 16), mamba="top"), "top"),
        ("umamba_enc_test", dict(spatial_dims=2, img_size=(16, 16), strides=(1, 2)), "one entry per stage"),
        ("umamba_enc_test", dict(spatial_dims=3, img_size=(16, 16)), "img_size"),
        ("umamba_enc_test", dict(spatial_dims=2, img_size=(16, 16), encoder_blocks=(1, 0, 1)), "encoder_blocks"),
        ("swin_umamba_test", dict(spatial_dims=3, img_size=(64, 64, 64)), "2D only"),
        ("swin_umamba_test", dict(spatial_dims=2, img_size=(64, 48)), "multiple of 32"),
        ("swin_umamba_d_test", dict(spatial_dims=3, img_size=(64, 64)), "2D only"),
        ("swin_umamba_d_test", dict(spatial_dims=2, img_size=(64, 64), mixer="log"), "ss2d"),
    ],
)
def test_bad_arguments_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, in_channels=1, out_channels=2, **kwargs)


def test_mamba_block_is_causal_and_matches_the_reference_scan():
    torch.manual_seed(0)
    block = Mamba(8, d_state=4)
    x = torch.randn(2, 12, 8, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y[:, 5].sum().backward()
    assert x.grad[:, 6:].abs().max() == 0 and x.grad[:, :6].abs().sum() > 0
    with scan_backend("ref"):
        torch.testing.assert_close(block(x), y, rtol=1e-4, atol=1e-5)


def test_mamba_layer_channel_tokens_mix_channels_and_run_in_float32():
    torch.manual_seed(0)
    layer = MambaLayer(4 * 4, channel_token=True)
    x = torch.randn(1, 6, 4, 4, requires_grad=True)
    layer(x)[0, 5].sum().backward()
    assert x.grad[0, :5].abs().sum() > 0  # the last channel token sees the earlier ones
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert MambaLayer(6)(torch.randn(1, 6, 4, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="built for 16"):
        layer(torch.randn(1, 6, 5, 5))


def _fake_vmamba_checkpoint(path, dims, depths, in_channels=3):
    enc = VMambaEncoder(in_channels, dims, depths, 0.0, 4)
    state = {k: torch.randn_like(v) for k, v in enc.state_dict().items()}
    state["head.weight"] = torch.randn(10, dims[-1])  # classifier keys are ignored
    torch.save({"model": state}, path)
    return state


@pytest.mark.parametrize("name", ["swin_umamba_test", "swin_umamba_d_test"])
def test_pretrained_vmamba_weights_load_into_the_encoder(tmp_path, name):
    path = tmp_path / "vssm_tiny.pth"
    state = _fake_vmamba_checkpoint(path, (16, 32, 64, 128), (1, 1, 1, 1))
    net = create_model(name, spatial_dims=2, in_channels=3, out_channels=2, img_size=(64, 64), pretrained=str(path))
    encoder = net.vssm_encoder if name == "swin_umamba_test" else net.encoder
    own = encoder.state_dict()
    loaded = [k for k in own if k in state and torch.equal(own[k], state[k])]
    skipped = [k for k in own if k not in loaded]
    # Swin-UMamba's encoder sees the 48-channel stem (8 in the tiny model): its patch embedding is new
    assert skipped == ([k for k in own if k.startswith("patch_embed.")] if name == "swin_umamba_test" else [])
    assert any(k.startswith("layers.0.downsample") for k in loaded)
    with pytest.raises(FileNotFoundError):
        create_model(name, spatial_dims=2, in_channels=3, out_channels=2, img_size=(64, 64), pretrained=str(tmp_path / "x"))
