"""U-Mamba-Enc residual U-Net with LoG-VMamba layers (3D, also runs in 2D).

Papers: LoG-VMamba, https://arxiv.org/abs/2408.14415 (section 8 of the suite's
spec); U-Mamba, https://arxiv.org/abs/2401.04722. Each encoder stage ends with one
VSS layer whose mixer is chosen per stage (paper: local, log, log, global, global).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from logvmamba.models.mixer import MIXERS, PLACEMENTS, LoGMixer, VSSBlock
from logvmamba.models.weights import init_weights
from logvmamba.registry import register_model, validate_img_size

__all__ = ["ResBlock", "UMambaEncLoG", "logvmamba_umamba_enc", "logvmamba_umamba_enc_test", "stage_mixers"]

PAPER_STAGE_MIXERS = ("local", "log", "log", "global", "global")


def stage_mixers(mixer: str | Sequence[str], paper: Sequence[str] = PAPER_STAGE_MIXERS) -> tuple[str, ...]:
    """Per-stage mixers for an ablation keyword.

    ``log`` keeps the paper's per-stage choice; ``local`` / ``global`` keep only the
    LTX / GTX of each stage (a stage left with neither runs ``vanilla``);
    ``vanilla`` turns both off. A sequence gives every stage explicitly.
    """
    if not isinstance(mixer, str):
        mixers = tuple(mixer)
        if len(mixers) != len(paper) or any(m not in MIXERS for m in mixers):
            raise ValueError(f"mixer {mixer!r} must be one of {MIXERS} or {len(paper)} of them")
        return mixers
    if mixer not in MIXERS:
        raise ValueError(f"mixer {mixer!r} is not one of {MIXERS}")
    keep_local = mixer in ("local", "log")
    keep_global = mixer in ("global", "log")
    out = []
    for m in paper:
        local = keep_local and m in ("local", "log")
        glob = keep_global and m in ("global", "log")
        out.append({(False, False): "vanilla", (True, False): "local", (False, True): "global", (True, True): "log"}[local, glob])
    return tuple(out)


class ResBlock(nn.Module):
    """conv-norm-act, conv-norm, (1x1 conv) shortcut, add, act; nnU-Net BasicBlockD without the conv."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1, shortcut_conv: bool = False):
        super().__init__()
        Conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2]
        Norm = (nn.InstanceNorm2d, nn.InstanceNorm3d)[spatial_dims - 2]
        if not shortcut_conv and (in_ch != out_ch or stride != 1):
            raise ValueError(f"a block from {in_ch} to {out_ch} channels at stride {stride} needs a shortcut conv")
        self.conv1 = Conv(in_ch, out_ch, 3, stride=stride, padding=1)
        self.norm1 = Norm(out_ch, eps=1e-5, affine=True)
        self.conv2 = Conv(out_ch, out_ch, 3, padding=1)
        self.norm2 = Norm(out_ch, eps=1e-5, affine=True)
        self.act = nn.LeakyReLU(1e-2, inplace=True)
        self.shortcut = Conv(in_ch, out_ch, 1, stride=stride) if shortcut_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.shortcut(x))


def _blocks(spatial_dims: int, in_ch: int, out_ch: int, n: int, stride: int = 1) -> nn.Sequential:
    first = ResBlock(spatial_dims, in_ch, out_ch, stride, shortcut_conv=True)
    return nn.Sequential(first, *(ResBlock(spatial_dims, out_ch, out_ch) for _ in range(n - 1)))


class MambaLayer(nn.Module):
    """A float32 VSS block on a channels-first map."""

    def __init__(self, block: VSSBlock):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(torch.movedim(x, 1, -1))
        return torch.movedim(y, -1, 1).to(x.dtype)


class UMambaEncLoG(nn.Module):
    """Residual U-Net with a (LoG-)VSS layer after every encoder stage.

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels, out_channels: image channels and logits.
        img_size: training patch, each side a multiple of the total stride (32 for
            the paper's 5 stages) and not all equal to it (instance norm needs more
            than one voxel at the bottleneck); GTX is sized for it.
        mixer: ``log`` (paper per-stage choice), ``local``, ``global``, ``vanilla``
            (ablations; see :func:`stage_mixers`) or one mixer per stage.
        placement: where GTX tokens go.
        features, encoder_blocks, decoder_blocks: widths and blocks per stage
            (decoder blocks from the bottleneck up).
        gtx_strides, gtx_squeezes: GTX K and G per stage (ignored where unused).
        ltx_squeeze: LTX S (16 in 3D).
        drop_path: of every VSS layer.

    Examples::

        >>> net = UMambaEncLoG(3, 4, 3, (32, 32, 32))
        >>> net(torch.randn(1, 4, 32, 32, 32)).shape
        torch.Size([1, 3, 32, 32, 32])
        >>> net2d = UMambaEncLoG(2, 1, 4, (64, 64))
        >>> net2d(torch.randn(1, 1, 64, 64)).shape
        torch.Size([1, 4, 64, 64])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int],
        mixer: str | Sequence[str] = "log",
        placement: str = "interleaved",
        features: Sequence[int] = (32, 64, 128, 256, 320),
        encoder_blocks: Sequence[int] = (2, 2, 2, 1, 1),
        decoder_blocks: Sequence[int] = (2, 2, 2, 1),
        strides: Sequence[int] = (1, 2, 2, 2, 2),
        gtx_strides: Sequence[int] = (1, 4, 2, 1, 1),
        gtx_squeezes: Sequence[int] = (1, 1, 1, 2, 8),
        ltx_squeeze: int = 16,
        expand: float = 1,
        d_state: int = 16,
        drop_path: float = 0.1,
        deep_supervision: bool = False,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if deep_supervision:
            raise ValueError("UMambaEncLoG has no deep supervision (the release trains without it)")
        n = len(features)
        if not (len(encoder_blocks) == len(strides) == len(gtx_strides) == len(gtx_squeezes) == n) or len(decoder_blocks) != n - 1:
            raise ValueError("features, encoder_blocks, strides, gtx_strides, gtx_squeezes need one entry per stage, decoder_blocks one fewer")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement {placement!r} is not one of {PLACEMENTS}")
        total_stride = 2 * int(torch.tensor(strides).prod())
        img_size = validate_img_size(img_size, spatial_dims, total_stride, type(self).__name__)
        if all(s == total_stride for s in img_size):
            raise ValueError(
                f"{type(self).__name__}: img_size {img_size} leaves a single voxel at the 1/{total_stride} bottleneck, "
                "where instance norm is undefined; make at least one side larger"
            )
        if n > len(PAPER_STAGE_MIXERS):
            raise ValueError(f"at most {len(PAPER_STAGE_MIXERS)} stages, got {n}")
        mixers = stage_mixers(mixer, PAPER_STAGE_MIXERS[:n])
        self.mixers = mixers
        self.up_mode = ("bilinear", "trilinear")[spatial_dims - 2]
        Conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2]

        stem_ch = features[0]
        self.stem = nn.Sequential(
            ResBlock(spatial_dims, in_channels, stem_ch, shortcut_conv=True), ResBlock(spatial_dims, stem_ch, stem_ch)
        )
        self.pool = (nn.MaxPool2d, nn.MaxPool3d)[spatial_dims - 2](2)
        self.stages = nn.ModuleList()
        self.mamba_layers = nn.ModuleList()
        grid = [s // 2 for s in img_size]
        prev = stem_ch
        for s in range(n):
            grid = [g // strides[s] for g in grid]
            self.stages.append(_blocks(spatial_dims, prev, features[s], encoder_blocks[s], strides[s]))
            mix = LoGMixer(
                features[s],
                spatial_dims,
                grid,
                mixer=mixers[s],
                expand=expand,
                d_state=d_state,
                ltx_squeeze=ltx_squeeze,
                gtx_stride=gtx_strides[s],
                gtx_squeeze=gtx_squeezes[s],
                placement=placement,
            )
            self.mamba_layers.append(MambaLayer(VSSBlock(features[s], mix, drop_path, float32=True, eps=1e-6)))
            prev = features[s]

        self.up_convs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for d, blocks in enumerate(decoder_blocks):
            below, skip = features[n - 1 - d], features[n - 2 - d]
            self.up_convs.append(Conv(below, skip, 1))
            self.decoder.append(_blocks(spatial_dims, skip, skip, blocks))
        self.final_up = Conv(features[0], stem_ch, 1)
        self.final_block = ResBlock(spatial_dims, stem_ch, stem_ch)
        self.head = Conv(stem_ch, out_channels, 1)
        self.strides = tuple(strides)
        init_weights(self, linear=False)

    def _up(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        return x if scale == 1 else F.interpolate(x, scale_factor=scale, mode=self.up_mode, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        y = self.pool(stem)
        skips = []
        for stage, mamba in zip(self.stages, self.mamba_layers):
            y = mamba(stage(y))
            skips.append(y)
        n = len(skips)
        for d, (up, block) in enumerate(zip(self.up_convs, self.decoder)):
            y = block(up(self._up(y, self.strides[n - 1 - d])) + skips[n - 2 - d])
        y = self.final_block(self.final_up(self._up(y, 2)) + stem)
        return self.head(y)


@register_model
def logvmamba_umamba_enc(*, spatial_dims=3, in_channels, out_channels, img_size, **kwargs) -> UMambaEncLoG:
    """LoG-VMamba 3D: U-Mamba-Enc with LoG layers (BraTS / ACDC configuration)."""
    args = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return UMambaEncLoG(**dict(args, **kwargs))


@register_model
def logvmamba_umamba_enc_test(*, spatial_dims=3, in_channels, out_channels, img_size, **kwargs) -> UMambaEncLoG:
    """Tiny LoG-VMamba 3D for tests: 4 stages (total stride 16), so 32^3 patches train."""
    args = dict(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=img_size,
        features=(16, 16, 32, 32),
        encoder_blocks=(1, 1, 1, 1),
        decoder_blocks=(1, 1, 1),
        strides=(1, 2, 2, 2),
        gtx_strides=(1, 4, 2, 1),
        gtx_squeezes=(1, 1, 1, 2),
    )
    return UMambaEncLoG(**dict(args, **kwargs))
