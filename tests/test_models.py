"""Mixers, placements and the LoG-VMamba networks on tiny CPU inputs."""

import math
import subprocess
import sys

import pytest
import torch

from logvmamba import create_model, list_models
from logvmamba.models.mixer import MIXERS, PLACEMENTS, LoGMixer, SS2D, VSSBlock, placement_order, unfold_neighbourhood
from logvmamba.models.umamba_enc import stage_mixers
from logvmamba.registry import UnknownModelError

TEST_SIZES = {2: (64, 64), 3: (32, 32, 32)}


def _mixer(mixer, placement, dims, channels=32, grid=None):
    grid = grid or ((8, 12) if dims == 2 else (4, 8, 8))
    kwargs = dict(ltx_squeeze=8, expand=2, gtx_stride=2) if dims == 2 else dict(ltx_squeeze=16, expand=1, gtx_stride=2)
    return LoGMixer(channels, dims, grid, mixer=mixer, placement=placement, **kwargs), grid


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("dims", [2, 3])
def test_mixer_shape_finite_and_gradients(mixer, placement, dims):
    torch.manual_seed(0)
    block = VSSBlock(32, _mixer(mixer, placement, dims)[0])
    grid = block.self_attention.grid
    x = torch.randn(2, *grid, 32)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in block.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_mixer_variants_switch_extractors():
    local, _ = _mixer("local", "interleaved", 3)
    glob, _ = _mixer("global", "interleaved", 3)
    log, _ = _mixer("log", "interleaved", 3)
    assert local.use_ltx and not local.use_gtx and local.fold is not None
    assert glob.use_gtx and not glob.use_ltx and glob.fold is None and glob.seq_width == 32
    assert log.seq_width == 32 // 16 * 27 and log.dt_rank == math.ceil(2 * 27 / 16)
    assert log.gtx.num_tokens == log.seq_width


def test_2d_local_mixer_keeps_the_release_narrow_in_proj():
    narrow = LoGMixer(32, 2, (8, 8), mixer="local", narrow_local=True)
    wide = LoGMixer(32, 2, (8, 8), mixer="local")
    assert narrow.in_proj.out_features == 2 * 64 // 8 and narrow.out_proj.in_features == 8
    assert wide.in_proj.out_features == 2 * 64


@pytest.mark.parametrize("dims", [2, 3])
def test_unfold_matches_one_hot_convolution(dims):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *([5] * dims))
    out = unfold_neighbourhood(x, 3)
    k = 3**dims
    weight = torch.eye(k).reshape(k, 1, *([3] * dims))
    conv = (torch.nn.functional.conv2d, torch.nn.functional.conv3d)[dims - 2]
    expected = torch.cat([conv(x[:, c : c + 1], weight, padding=1) for c in range(3)], dim=1)
    torch.testing.assert_close(out, expected)
    centre = out[:, k // 2 :: k]  # channel c*R^d + centre is the token itself
    torch.testing.assert_close(centre, x)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("L,T", [(1024, 432), (64, 40), (4096, 216), (32768, 108), (512, 128), (240, 960), (7, 5), (16, 8)])
def test_placement_is_a_permutation_and_gathers_raster_order(placement, L, T):
    order, local_pos = placement_order(L, T, placement)
    assert sorted(order.tolist()) == list(range(L + T))
    assert torch.equal(order[local_pos], torch.arange(L))
    assert torch.all(local_pos[1:] > local_pos[:-1])  # locals keep raster order


def test_interleaved_matches_the_spec_example():
    order, local_pos = placement_order(1024, 432, "interleaved")
    L = 1024
    assert order[:91].tolist() == list(range(L, L + 91))  # 91 global tokens at the head
    assert order[91].item() == 0  # first local token
    tail = order[92:]
    assert len(tail) % 4 == 0
    pattern = tail.view(-1, 4) >= L
    assert pattern[:, 0].all() and not pattern[:, 1:].any()  # G-L-L-L
    assert tail.view(-1, 4)[:, 0].tolist() == list(range(L + 91, L + 432))
    assert order.tolist().index(L + 91) == 92 and order.tolist().index(L + 431) == 1452


def test_a_mixer_that_predicted_first_can_still_train():
    # The token order is cached per shape; the first call here is under inference mode.
    torch.manual_seed(0)
    mixer = LoGMixer(16, 2, (5, 6), d_state=4, ltx_squeeze=8, gtx_stride=2).eval()
    x = torch.randn(1, 5, 6, 16)  # a grid no other test uses, so the cache starts empty
    with torch.inference_mode():
        mixer(x)
    mixer.train()
    mixer(x.requires_grad_()).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_head_center_layout():
    L, T = 8, 8
    assert placement_order(L, T, "head")[0].tolist()[:T] == list(range(L, L + T))
    center = placement_order(L, T, "center")[0].tolist()
    assert center[:4] == [0, 1, 2, 3] and center[4:12] == list(range(8, 16))


# Token ids: locals 0..L-1, globals L..L+T-1. The release's split placement, run on
# token ids, gives G[:T/2] + L[:L/2] + G[T/2:] + L[L/2:]; with an odd count the first
# half is the smaller one (floor), as the spec leaves it open.
SPLIT_ORDERS = {
    (8, 8): [8, 9, 10, 11, 0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7],
    (6, 4): [6, 7, 0, 1, 2, 8, 9, 3, 4, 5],
    (4, 2): [4, 0, 1, 5, 2, 3],
    (5, 3): [5, 0, 1, 6, 7, 2, 3, 4],
    (3, 1): [0, 3, 1, 2],
    (7, 5): [7, 8, 0, 1, 2, 9, 10, 11, 3, 4, 5, 6],
}


@pytest.mark.parametrize("L,T", sorted(SPLIT_ORDERS))
def test_split_puts_half_the_globals_before_each_half_of_the_locals(L, T):
    order, local_pos = placement_order(L, T, "split")
    assert order.tolist() == SPLIT_ORDERS[L, T]
    assert local_pos.tolist() == [SPLIT_ORDERS[L, T].index(i) for i in range(L)]


def test_global_tokens_change_every_local_output():
    # Through GTX every local output must depend on every input location.
    torch.manual_seed(0)
    m, grid = _mixer("global", "head", 2)
    x = torch.randn(1, *grid, 32, requires_grad=True)
    m(x)[0, 0, 0].sum().backward()
    assert (x.grad.abs().sum(-1) > 0).all()


def test_ss2d_sees_the_whole_image_in_all_directions():
    torch.manual_seed(0)
    m = SS2D(16)
    x = torch.randn(1, 6, 7, 16, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y[0, 3, 3].sum().backward()
    assert (x.grad.abs().sum(-1) > 0).all()


def test_mixer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mixer 'lg'"):
        LoGMixer(32, 2, (8, 8), mixer="lg")
    with pytest.raises(ValueError, match="placement 'even'"):
        LoGMixer(32, 2, (8, 8), placement="even")
    with pytest.raises(ValueError, match="spatial_dims"):
        LoGMixer(32, 1, (8,))
    with pytest.raises(ValueError, match="squeeze"):
        LoGMixer(20, 2, (8, 8), mixer="local", ltx_squeeze=8)
    with pytest.raises(ValueError, match="built for a"):
        LoGMixer(32, 2, (8, 8), mixer="global", gtx_stride=2)(torch.randn(1, 16, 16, 32))


def test_stage_mixers_for_ablations():
    assert stage_mixers("log") == ("local", "log", "log", "global", "global")
    assert stage_mixers("local") == ("local", "local", "local", "vanilla", "vanilla")
    assert stage_mixers("global") == ("vanilla", "global", "global", "global", "global")
    assert stage_mixers("vanilla") == ("vanilla",) * 5
    assert stage_mixers(["log"] * 5) == ("log",) * 5
    with pytest.raises(ValueError):
        stage_mixers("lg")


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("dims", [2, 3])
def test_networks_every_mixer_and_placement(dims, mixer, placement):
    torch.manual_seed(0)
    size = TEST_SIZES[dims]
    net = create_model("logvmamba_test", spatial_dims=dims, in_channels=2, out_channels=3, img_size=size, mixer=mixer,
                       placement=placement)
    y = net(torch.randn(1, 2, *size))
    assert y.shape == (1, 3, *size) and torch.isfinite(y).all()


def test_deep_supervision_outputs_full_resolution_first():
    net = create_model("logvmamba_swin_umamba_test", spatial_dims=2, in_channels=3, out_channels=4, img_size=(64, 64), deep_supervision=True)
    outs = net(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[-2:]) for o in outs] == [(64, 64), (16, 16), (8, 8), (4, 4)]
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_swin_umamba_without_deep_supervision_has_unused_heads_only():
    net = create_model("logvmamba_swin_umamba_test", spatial_dims=2, in_channels=3, out_channels=4, img_size=(64, 64))
    net(torch.randn(1, 3, 64, 64)).mean().backward()
    unused = {n.split(".")[0] for n, p in net.named_parameters() if p.grad is None}
    assert unused == {"ds_heads"}


@pytest.mark.parametrize(
    "name,dims,size",
    [
        ("logvmamba_swin_umamba", 2, (64, 65)),
        ("logvmamba_swin_umamba", 2, (64,)),
        ("logvmamba_umamba_enc", 3, (32, 32, 40)),
        ("logvmamba_umamba_enc", 3, (32, 32, 32)),  # a 1-voxel bottleneck
    ],
)
def test_unsupported_sizes_raise_naming_the_size(name, dims, size):
    with pytest.raises(ValueError, match=str(size).replace("(", r"\(").replace(")", r"\)")):
        create_model(name, spatial_dims=dims, in_channels=1, out_channels=2, img_size=size)


def test_bad_network_arguments_raise():
    with pytest.raises(ValueError, match="2D only"):
        create_model("logvmamba_swin_umamba", spatial_dims=3, in_channels=1, out_channels=2, img_size=(64, 64, 64))
    with pytest.raises(ValueError, match="mixer"):
        create_model("logvmamba_swin_umamba_test", spatial_dims=2, in_channels=1, out_channels=2, img_size=(64, 64), mixer="x")
    with pytest.raises(ValueError, match="deep supervision"):
        create_model("logvmamba_umamba_enc_test", spatial_dims=3, in_channels=1, out_channels=2, img_size=(32,) * 3, deep_supervision=True)


def test_registry_lists_and_rejects_unknown_names():
    names = list_models()
    assert {"logvmamba", "logvmamba_test", "logvmamba_swin_umamba", "logvmamba_umamba_enc"} <= set(names)
    assert list_models("logvmamba_umamba*") == ["logvmamba_umamba_enc", "logvmamba_umamba_enc_test"]
    with pytest.raises(UnknownModelError, match="known models: .*logvmamba_swin_umamba"):
        create_model("nope", spatial_dims=2, in_channels=1, out_channels=1, img_size=(64, 64))


def test_registry_refuses_duplicate_names():
    from logvmamba.registry import register_model

    def logvmamba_swin_umamba(**kw):
        return None

    list_models()
    with pytest.raises(ValueError, match="registered twice"):
        register_model(logvmamba_swin_umamba)


def test_paper_configurations_have_the_release_gtx_sizes():
    net2d = create_model("logvmamba_swin_umamba", spatial_dims=2, in_channels=3, out_channels=3, img_size=(512, 512))
    sizes = [stage.blocks[0].self_attention.gtx.proj.in_features for stage in net2d.decoder]
    assert sizes == [256, 1024, 1024]
    net2d = create_model("logvmamba_swin_umamba", spatial_dims=2, in_channels=3, out_channels=8, img_size=(384, 640))
    sizes = [stage.blocks[0].self_attention.gtx.proj.in_features for stage in net2d.decoder]
    assert sizes == [240, 960, 960]
    tokens = [stage.blocks[0].self_attention.gtx.num_tokens for stage in net2d.decoder]
    assert tokens == [432, 432, 216]
    net3d = create_model("logvmamba_umamba_enc", spatial_dims=3, in_channels=4, out_channels=3, img_size=(128,) * 3)
    sizes = [None if m.block.self_attention.gtx is None else m.block.self_attention.gtx.proj.in_features for m in net3d.mamba_layers]
    assert sizes == [None, 512, 512, 512, 64]
    assert net3d.mixers == ("local", "log", "log", "global", "global")


@pytest.mark.parametrize("size", [(32, 32, 64), (64, 64, 64)])
def test_paper_3d_network_runs_at_small_sizes(size):
    net = create_model("logvmamba_umamba_enc", spatial_dims=3, in_channels=4, out_channels=3, img_size=size)
    with torch.inference_mode():
        y = net.eval()(torch.randn(1, 4, *size))
    assert y.shape == (1, 3, *size) and torch.isfinite(y).all()


def test_anisotropic_patch_drops_the_deepest_stride_of_the_short_axis():
    from logvmamba.models.umamba_enc import paper_strides

    assert paper_strides((160, 160, 16)) == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 1)]
    assert paper_strides((128, 128, 128)) == [(1, 1, 1)] + [(2, 2, 2)] * 4
    net = create_model("logvmamba_umamba_enc_test", spatial_dims=3, in_channels=1, out_channels=4, img_size=(32, 32, 8))
    net(torch.randn(1, 1, 32, 32, 8)).mean().backward()
    net = create_model("logvmamba_umamba_enc", spatial_dims=3, in_channels=1, out_channels=4, img_size=(160, 160, 16))
    assert [m.block.self_attention.gtx.proj.in_features for m in net.mamba_layers[1:]] == [100, 100, 100, 25]


def test_paper_2d_network_runs_at_64():
    net = create_model("logvmamba_swin_umamba", spatial_dims=2, in_channels=3, out_channels=8, img_size=(64, 64))
    with torch.inference_mode():
        y = net.eval()(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 8, 64, 64) and torch.isfinite(y).all()


def test_package_import_does_not_import_mamba_ssm():
    code = "import sys, logvmamba; from logvmamba import create_model; create_model('logvmamba_swin_umamba_test', spatial_dims=2, in_channels=1, out_channels=2, img_size=(64, 64)); print(any(m.split('.')[0] in ('mamba_ssm', 'causal_conv1d') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
