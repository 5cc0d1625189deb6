"""U-Mamba-Bot and U-Mamba-Enc: residual U-Nets with Mamba layers (2D and 3D).

Paper: Ma, Li and Wang, "U-Mamba: Enhancing Long-range Dependency for Biomedical
Image Segmentation", https://arxiv.org/abs/2401.04722 (GitHub bowang-lab/U-Mamba).

Depth, strides, kernels and widths come from nnU-Net v2's planning rules for the
patch size (:func:`baselines.nnunet.plan_unet`), as U-Mamba builds its networks from
nnU-Net plans (two residual blocks per stage where the plan has two convs); every
conv has a bias, instance norm (eps 1e-5, affine), LeakyReLU 1e-2. Two releases of
U-Mamba differ in the network, selected by ``version``:

- ``version=1`` (default; the January 2024 ``UMambaBot.py`` / ``UMambaEnc.py``, the
  networks the Swin-UMamba paper's size and FLOP table measures): one conv stem,
  nnU-Net residual encoder (ResNet-D ``BasicBlockD``, 2 per stage, strided first
  block), transposed-conv upsampling, concatenation with every skip, 2 residual
  blocks per decoder stage. U-Mamba-Enc has a Mamba layer after every encoder stage;
  U-Mamba-Bot one at the bottleneck.
- ``version=2`` (the later ``*_2d.py`` / ``*_3d.py`` files): residual stem,
  ``BasicResBlock`` (strided 1x1 conv shortcut) at the head of each stage, one block
  in the deeper half of the encoder and in the two (or more) highest-resolution
  decoder stages, nearest upsampling + 1x1 conv; U-Mamba-Enc puts a Mamba layer after
  every stage in 3D and after every other stage (always the last) in 2D, and uses the
  channels as tokens where a map has no more pixels than channels; the 2D files do not
  concatenate the top skip.

The Mamba layer is LayerNorm -> standard Mamba (d_state 16, d_conv 4, expand 2), no
residual, float32 with autocast off (:class:`logvmamba.models.mamba_layer.MambaLayer`).

``mixer="none"`` is the No-Mamba control of nnU-Net Revisited (Isensee et al. 2024,
https://arxiv.org/abs/2404.09556; its "No-Mamba Base" is U-Mamba-Bot without the
Mamba layer): every Mamba layer, with its LayerNorm, is ``nn.Identity``, which leaves
exactly the residual U-Net around it (the layer has no residual of its own).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from logvmamba.models.factories import Conv, Norm, Pool
from logvmamba.models.layers import BasicResBlock, per_axis
from logvmamba.models.mamba_layer import MambaLayer
from logvmamba.registry import register_model

__all__ = ["UMamba", "umamba_bot", "umamba_bot_test", "umamba_enc", "umamba_enc_test"]

MAMBA_PLACEMENTS = ("bot", "enc")
MAMBA_MIXERS = ("mamba", "none")  # "none": the No-Mamba control
VERSIONS = (1, 2)


# ----------------------------------------------------------------------------- blocks


class ConvNormAct(nn.Module):
    """conv (bias) -> instance norm -> LeakyReLU (optional); nnU-Net's ConvDropoutNormReLU."""

    def __init__(self, dims: int, cin: int, cout: int, kernel, stride=1, act: bool = True, bias: bool = True):
        super().__init__()
        kernel, stride = per_axis(kernel, dims, "kernel_sizes"), per_axis(stride, dims, "strides")
        self.conv = Conv[Conv.CONV, dims](cin, cout, kernel, stride=stride, padding=tuple(k // 2 for k in kernel), bias=bias)
        self.norm = Norm[Norm.INSTANCE, dims](cout, eps=1e-5, affine=True)
        self.act = nn.LeakyReLU(1e-2, inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class BasicBlockD(nn.Module):
    """ResNet-D block of nnU-Net: two conv-norm(-act), skip = avg-pool (stride) + 1x1 conv-norm where needed."""

    def __init__(self, dims: int, cin: int, cout: int, kernel, stride=1):
        super().__init__()
        stride = per_axis(stride, dims, "strides")
        self.conv1 = ConvNormAct(dims, cin, cout, kernel, stride)
        self.conv2 = ConvNormAct(dims, cout, cout, kernel, 1, act=False)
        skip: list[nn.Module] = []
        if any(s != 1 for s in stride):
            skip.append(Pool[Pool.AVG, dims](stride, stride))
        if cin != cout:
            skip.append(ConvNormAct(dims, cin, cout, 1, 1, act=False, bias=False))
        self.skip = nn.Sequential(*skip)
        self.act = nn.LeakyReLU(1e-2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


class UpsampleConv(nn.Module):
    """Nearest upsampling by the stage stride, then a 1x1 conv (U-Mamba version 2)."""

    def __init__(self, dims: int, cin: int, cout: int, stride: Sequence[int]):
        super().__init__()
        self.up = nn.Upsample(scale_factor=tuple(float(s) for s in stride), mode="nearest")
        self.conv = Conv[Conv.CONV, dims](cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


def _stage(dims: int, cin: int, cout: int, kernel, stride, blocks: int, head: str) -> nn.Sequential:
    if head == "basic":
        first = BasicBlockD(dims, cin, cout, kernel, stride)
    else:
        first = BasicResBlock(dims, cin, cout, kernel, stride, shortcut_conv=True)
    return nn.Sequential(first, *(BasicBlockD(dims, cout, cout, kernel) for _ in range(blocks - 1)))


def _he_init(module: nn.Module) -> None:
    # nnU-Net's InitWeights_He(1e-2): 2D/3D convs and transposed convs only (the
    # Mamba block's Conv1d and Linears keep PyTorch's defaults, as in U-Mamba).
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=1e-2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- network


class UMamba(nn.Module):
    """U-Mamba-Bot / U-Mamba-Enc for 2D or 3D patches.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels and logits.
        img_size: training patch; the plan (and U-Mamba-Enc's channel-token switch)
            is derived from it, and each side must be divisible by the total stride.
        mamba: ``bot`` (one Mamba layer at the bottleneck) or ``enc`` (after encoder
            stages).
        mixer: ``mamba`` (U-Mamba) or ``none``: the No-Mamba control, every Mamba
            layer replaced by the identity and the rest of the network unchanged.
        version: 1 (the release the published table measured) or 2 (the later
            per-dimension release); see the module docstring.
        spacing: voxel spacing for the plan (isotropic when None).
        features, strides, kernel_sizes: override the plan (one entry per stage; the
            first stride is normally all ones).
        encoder_blocks, decoder_blocks: residual blocks per encoder stage and per
            decoder stage (decoding order); default nnU-Net's 2, with version 2's cuts.
        d_state, d_conv, expand: of the Mamba block.
        scan_backend: selective-scan backend of the Mamba layers; "auto" follows
            :func:`logvmamba.ops.scan_backend`.
        deep_supervision: return one output per decoder stage, full resolution first.

    Examples::

        >>> net = UMamba(2, 3, 8, (64, 96), mamba="bot")
        >>> net(torch.randn(1, 3, 64, 96)).shape
        torch.Size([1, 8, 64, 96])
        >>> net3d = UMamba(3, 4, 3, (32, 32, 32), mamba="enc", version=2)
        >>> net3d(torch.randn(1, 4, 32, 32, 32)).shape
        torch.Size([1, 3, 32, 32, 32])
        >>> no_mamba = UMamba(2, 3, 8, (64, 96), mamba="bot", mixer="none")  # nnU-Net Revisited's No-Mamba Base
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int],
        mamba: str = "bot",
        mixer: str = "mamba",
        version: int = 1,
        spacing: Sequence[float] | None = None,
        features: Sequence[int] | None = None,
        strides: Sequence | None = None,
        kernel_sizes: Sequence | None = None,
        encoder_blocks: Sequence[int] | None = None,
        decoder_blocks: Sequence[int] | None = None,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        deep_supervision: bool = False,
        scan_backend: str = "auto",
    ):
        super().__init__()
        name = type(self).__name__
        if spatial_dims not in (2, 3):
            raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if mamba not in MAMBA_PLACEMENTS:
            raise ValueError(f"{name}: mamba {mamba!r} is not one of {MAMBA_PLACEMENTS}")
        if mixer not in MAMBA_MIXERS:
            raise ValueError(f"{name}: mixer {mixer!r} is not one of {MAMBA_MIXERS} (none: the No-Mamba control)")
        if version not in VERSIONS:
            raise ValueError(f"{name}: version {version!r} is not one of {VERSIONS}")
        for label, count in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(count, int) or count < 1:
                raise ValueError(f"{name}: {label} must be a positive int, got {count!r}")
        size = tuple(img_size)
        if len(size) != spatial_dims or any(not isinstance(s, int) or s < 1 for s in size):
            raise ValueError(f"{name}: img_size {size} needs {spatial_dims} positive ints")
        plan = None
        if None in (features, strides, kernel_sizes):
            from baselines.nnunet import plan_unet  # nnU-Net v2's planning rules, shared with the nnunet baseline

            plan = plan_unet(size, spacing, spatial_dims)
            features = plan.features if features is None else features
            strides = plan.strides if strides is None else strides
            kernel_sizes = plan.kernel_sizes if kernel_sizes is None else kernel_sizes
        features = tuple(int(f) for f in features)
        strides = [per_axis(s, spatial_dims, "strides") for s in strides]
        kernels = [per_axis(k, spatial_dims, "kernel_sizes") for k in kernel_sizes]
        n = len(features)
        if n < 2 or len(strides) != n or len(kernels) != n:
            raise ValueError(
                f"{name}: features {features}, strides {strides} and kernel_sizes {kernels} need one entry per stage "
                "and at least 2 stages"
            )
        total = [math.prod(s[i] for s in strides) for i in range(spatial_dims)]
        if any(s % t for s, t in zip(size, total)):
            raise ValueError(f"{name}: img_size {size} is not divisible by the total stride {tuple(total)}")
        # U-Mamba stacks as many residual blocks per stage as the plan has convs (nnU-Net: 2)
        planned = plan is not None and len(plan.strides) == n
        cut_encoder, cut_decoder = version == 2 and encoder_blocks is None, version == 2 and decoder_blocks is None
        if encoder_blocks is None:
            encoder_blocks = plan.n_conv_per_stage if planned else (2,) * n
        if decoder_blocks is None:
            decoder_blocks = plan.n_conv_per_stage_decoder if planned else (2,) * (n - 1)
        enc_blocks = [int(b) for b in encoder_blocks]
        dec_blocks = [int(b) for b in decoder_blocks]
        if cut_encoder:  # version 2: one block per stage in the deeper half of the encoder
            enc_blocks[math.ceil(n / 2):] = [1] * (n - math.ceil(n / 2))
        if cut_decoder:  # ... and in the highest-resolution decoder stages
            first = math.ceil((n - 1) / 2 + 0.5)
            dec_blocks[first:] = [1] * max(0, n - 1 - first)
        if len(enc_blocks) != n or len(dec_blocks) != n - 1 or min(enc_blocks + dec_blocks) < 1:
            raise ValueError(
                f"{name}: encoder_blocks {tuple(enc_blocks)} need {n} entries and decoder_blocks "
                f"{tuple(dec_blocks)} {n - 1}, all >= 1"
            )
        self.version, self.mamba_placement, self.deep_supervision = version, mamba, deep_supervision
        self.mixer = mixer
        self.features, self.strides, self.kernel_sizes = features, tuple(strides), tuple(kernels)
        self.encoder_blocks, self.decoder_blocks = tuple(enc_blocks), tuple(dec_blocks)
        dims = spatial_dims

        # encoder
        if version == 1:
            self.stem = ConvNormAct(dims, in_channels, features[0], kernels[0])
        else:
            self.stem = _stage(dims, in_channels, features[0], kernels[0], 1, enc_blocks[0], "res")
        head = "basic" if version == 1 else "res"
        self.stages = nn.ModuleList()
        prev = features[0]
        for s in range(n):
            self.stages.append(_stage(dims, prev, features[s], kernels[s], strides[s], enc_blocks[s], head))
            prev = features[s]

        # Mamba layers
        grids, grid = [], list(size)
        for s in range(n):
            grid = [g // st for g, st in zip(grid, strides[s])]
            grids.append(tuple(grid))
        if mamba == "bot":
            with_mamba = {n - 1}
        elif version == 2 and dims == 2:
            with_mamba = {s for s in range(n) if (s % 2 == 1) != (n % 2 == 1)}  # always includes the last stage
        else:
            with_mamba = set(range(n))
        self.mamba_layers = nn.ModuleList()
        self.channel_token = []
        for s in range(n):
            pixels = math.prod(grids[s])
            as_channels = version == 2 and mamba == "enc" and pixels <= features[s]
            has_layer = s in with_mamba and mixer == "mamba"
            self.channel_token.append(as_channels and has_layer)
            if not has_layer:
                self.mamba_layers.append(nn.Identity())
                continue
            width = pixels if as_channels else features[s]
            self.mamba_layers.append(
                MambaLayer(width, as_channels, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)
            )
        self.grids = tuple(grids)

        # decoder, from the bottleneck up
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        self.concat = []
        conv, tconv = Conv[Conv.CONV, dims], Conv[Conv.CONVTRANS, dims]
        for j in range(n - 1):
            below, skip, stride = features[n - 1 - j], features[n - 2 - j], strides[n - 1 - j]
            kernel = kernels[n - 2 - j]
            concat = not (version == 2 and dims == 2 and j == n - 2)
            self.concat.append(concat)
            cin = 2 * skip if concat else skip
            if version == 1:
                self.upsample.append(tconv(below, skip, stride, stride=stride, bias=True))
                self.decoder.append(_stage(dims, cin, skip, kernel, 1, dec_blocks[j], "basic"))
            else:
                self.upsample.append(UpsampleConv(dims, below, skip, stride))
                self.decoder.append(_stage(dims, cin, skip, kernel, 1, dec_blocks[j], "res"))
            self.seg_layers.append(conv(skip, out_channels, 1))

        _he_init(self)
        if version == 1 and mamba == "enc":
            # nnU-Net's init_last_bn_before_add_to_0, applied by U-Mamba-Enc version 1
            for m in self.modules():
                if isinstance(m, BasicBlockD):
                    nn.init.zeros_(m.conv2.norm.weight)
                    nn.init.zeros_(m.conv2.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage, mamba in zip(self.stages, self.mamba_layers):
            x = mamba(stage(x))
            skips.append(x)
        y = skips[-1]
        outputs = []
        last = len(self.decoder) - 1
        for j, (up, block, seg) in enumerate(zip(self.upsample, self.decoder, self.seg_layers)):
            y = up(y)
            if self.concat[j]:
                y = torch.cat((y, skips[-(j + 2)]), dim=1)
            y = block(y)
            if self.deep_supervision or j == last:
                outputs.append(seg(y))
        return outputs[::-1] if self.deep_supervision else outputs[-1]


# ----------------------------------------------------------------------------- registered models


def _build(placement: str, spatial_dims: int, **kwargs) -> UMamba:
    mamba = kwargs.setdefault("mamba", placement)
    if mamba != placement:
        raise ValueError(f"umamba_{placement} has its Mamba layers at {placement!r}, got mamba={mamba!r}")
    return UMamba(spatial_dims, **kwargs)


_TEST_ARGS = dict(features=(8, 16, 32), strides=(1, 2, 2), kernel_sizes=(3, 3, 3), encoder_blocks=(1, 1, 1),
                  decoder_blocks=(1, 1), d_state=4)


@register_model
def umamba_bot(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> UMamba:
    """U-Mamba-Bot: nnU-Net-planned residual U-Net, one Mamba layer at the bottleneck."""
    args = dict(in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return _build("bot", spatial_dims, **dict(args, **kwargs))


@register_model
def umamba_enc(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> UMamba:
    """U-Mamba-Enc: nnU-Net-planned residual U-Net with Mamba layers after the encoder stages."""
    args = dict(in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return _build("enc", spatial_dims, **dict(args, **kwargs))


@register_model
def umamba_bot_test(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> UMamba:
    """Tiny U-Mamba-Bot for tests: 3 stages (total stride 4), widths 8-32."""
    args = dict(in_channels=in_channels, out_channels=out_channels, img_size=img_size, **_TEST_ARGS)
    return _build("bot", spatial_dims, **dict(args, **kwargs))


@register_model
def umamba_enc_test(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> UMamba:
    """Tiny U-Mamba-Enc for tests: 3 stages (total stride 4), widths 8-32."""
    args = dict(in_channels=in_channels, out_channels=out_channels, img_size=img_size, **_TEST_ARGS)
    return _build("enc", spatial_dims, **dict(args, **kwargs))
