"""U-Mamba-Enc residual U-Net with LoG-VMamba layers (3D, also runs in 2D).

Papers: LoG-VMamba, https://arxiv.org/abs/2408.14415 (section 8 of the suite's
spec); U-Mamba, https://arxiv.org/abs/2401.04722. Each encoder stage ends with one
VSS layer whose mixer is chosen per stage (paper: local, log, log, global, global).
``mixer="none"`` is the No-Mamba control: every VSS layer's mixer is the identity.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from logvmamba.models.factories import Conv, Pool
from logvmamba.models.layers import BasicResBlock, per_axis
from logvmamba.models.mixer import CONTROL_MIXER, MIXERS, PLACEMENTS, VSSBlock, build_mixer
from logvmamba.models.weights import init_weights
from logvmamba.registry import register_model

__all__ = ["UMambaEncLoG", "VSSLayer", "paper_strides", "logvmamba_umamba_enc", "logvmamba_umamba_enc_test", "stage_mixers"]

PAPER_STAGE_MIXERS = ("local", "log", "log", "global", "global")


def stage_mixers(mixer: str | Sequence[str], paper: Sequence[str] = PAPER_STAGE_MIXERS) -> tuple[str, ...]:
    """Per-stage mixers for an ablation keyword.

    ``log`` keeps the paper's per-stage choice; ``local`` / ``global`` keep only the
    LTX / GTX of each stage (a stage left with neither runs ``vanilla``);
    ``vanilla`` turns both off; ``none`` (the No-Mamba control) makes every stage's
    mixer the identity. A sequence gives every stage explicitly (``none`` allowed).
    """
    known = MIXERS + (CONTROL_MIXER,)
    if not isinstance(mixer, str):
        mixers = tuple(mixer)
        if len(mixers) != len(paper):
            raise ValueError(f"mixer {mixer!r} must be one of {known} or {len(paper)} of them, one per stage")
        for stage, m in enumerate(mixers):
            if m not in known:
                raise ValueError(f"mixer {m!r} of stage {stage} (in {mixer!r}) is not one of {known}")
        return mixers
    if mixer not in known:
        raise ValueError(f"mixer {mixer!r} is not one of {known}")
    if mixer == CONTROL_MIXER:
        return (CONTROL_MIXER,) * len(paper)
    keep_local = mixer in ("local", "log")
    keep_global = mixer in ("global", "log")
    out = []
    for m in paper:
        local = keep_local and m in ("local", "log")
        glob = keep_global and m in ("global", "log")
        out.append({(False, False): "vanilla", (True, False): "local", (False, True): "global", (True, True): "log"}[local, glob])
    return tuple(out)


def paper_strides(img_size: Sequence[int], num_stages: int = 5) -> list[tuple[int, ...]]:
    """The paper's strides (1, 2, 2, ...) per axis; an axis that the total stride does not
    divide drops its deepest stride (ACDC's 16 slices go down to 1/16 only)."""
    per_axis = []
    for size in img_size:
        factors = [1] + [2] * (num_stages - 1)
        if size % (2 * math.prod(factors)):
            factors[-1] = 1
        per_axis.append(factors)
    return [tuple(axis[s] for axis in per_axis) for s in range(num_stages)]


def _blocks(spatial_dims: int, in_ch: int, out_ch: int, n: int, stride: int = 1) -> nn.Sequential:
    # a res block (1x1 shortcut conv), then basic blocks (identity shortcut)
    first = BasicResBlock(spatial_dims, in_ch, out_ch, stride=stride, shortcut_conv=True)
    return nn.Sequential(first, *(BasicResBlock(spatial_dims, out_ch, out_ch) for _ in range(n - 1)))


class VSSLayer(nn.Module):
    """A VSS block on a channels-first map, returned in the input's dtype."""

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
            (ablations; see :func:`stage_mixers`), ``none`` (the No-Mamba control:
            identity mixers, LayerNorm and residual kept) or one mixer per stage.
        placement: where GTX tokens go.
        features, encoder_blocks, decoder_blocks: widths and blocks per stage
            (decoder blocks from the bottleneck up).
        strides: per-stage downsampling after the stem's /``stem_pool`` max-pool; each
            entry an int or one per axis. ``None``: the paper's (1, 2, 2, 2, 2), with
            the deepest stride of an axis set to 1 when the total stride does not
            divide its size (ACDC's 160x160x16 patch goes down to 1/16 in z).
        stem_pool: max-pool factor after the stem (int or one per axis).
        gtx_strides, gtx_squeezes: GTX K (int or per axis) and G per stage (ignored
            where unused).
        ltx_squeeze: LTX S (16 in 3D).
        drop_path: of every VSS layer.
        scan_backend: selective-scan backend of the mixers; "auto" follows
            :func:`logvmamba.ops.scan_backend`.

    Examples::

        >>> net = UMambaEncLoG(3, 4, 3, (64, 32, 32))
        >>> net(torch.randn(1, 4, 64, 32, 32)).shape
        torch.Size([1, 3, 64, 32, 32])
        >>> control = UMambaEncLoG(3, 4, 3, (64, 32, 32), mixer="none")  # No-Mamba control
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
        strides: Sequence[int | Sequence[int]] | None = None,
        stem_pool: int | Sequence[int] = 2,
        gtx_strides: Sequence[int | Sequence[int]] = (1, 4, 2, 1, 1),
        gtx_squeezes: Sequence[int] = (1, 1, 1, 2, 8),
        ltx_squeeze: int = 16,
        expand: float = 1,
        d_state: int = 16,
        drop_path: float = 0.1,
        deep_supervision: bool = False,
        scan_backend: str = "auto",
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if deep_supervision:
            raise ValueError("UMambaEncLoG has no deep supervision (the release trains without it)")
        n = len(features)
        if strides is None:
            strides = paper_strides(img_size, n)
        if not (len(encoder_blocks) == len(strides) == len(gtx_strides) == len(gtx_squeezes) == n) or len(decoder_blocks) != n - 1:
            raise ValueError("features, encoder_blocks, strides, gtx_strides, gtx_squeezes need one entry per stage, decoder_blocks one fewer")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement {placement!r} is not one of {PLACEMENTS}")
        strides = [per_axis(st, spatial_dims, "strides") for st in strides]
        stem_pool = per_axis(stem_pool, spatial_dims, "stem_pool")
        total = [math.prod(axis) for axis in zip(stem_pool, *strides)]
        size = tuple(int(v) for v in img_size)
        if len(size) != spatial_dims or any(v <= 0 or v % t for v, t in zip(size, total)):
            raise ValueError(
                f"{type(self).__name__}: img_size {tuple(img_size)} is not supported; it needs {spatial_dims} sizes, "
                f"multiples of the total stride {tuple(total)}"
            )
        img_size = size
        if all(v == t for v, t in zip(img_size, total)):
            raise ValueError(
                f"{type(self).__name__}: img_size {img_size} leaves a single voxel at the bottleneck (total stride "
                f"{tuple(total)}), where instance norm is undefined; make at least one side larger"
            )
        if n > len(PAPER_STAGE_MIXERS):
            raise ValueError(f"at most {len(PAPER_STAGE_MIXERS)} stages, got {n}")
        mixers = stage_mixers(mixer, PAPER_STAGE_MIXERS[:n])
        self.mixers = mixers
        self.up_mode = {2: "bilinear", 3: "trilinear"}[spatial_dims]
        conv = Conv[Conv.CONV, spatial_dims]

        stem_ch = features[0]
        self.stem = nn.Sequential(
            BasicResBlock(spatial_dims, in_channels, stem_ch, shortcut_conv=True), BasicResBlock(spatial_dims, stem_ch, stem_ch)
        )
        self.pool = Pool[Pool.MAX, spatial_dims](stem_pool)
        self.stages = nn.ModuleList()
        self.mamba_layers = nn.ModuleList()
        grid = [v // p for v, p in zip(img_size, stem_pool)]
        prev = stem_ch
        for s in range(n):
            grid = [g // st for g, st in zip(grid, strides[s])]
            self.stages.append(_blocks(spatial_dims, prev, features[s], encoder_blocks[s], strides[s]))
            mix = build_mixer(
                mixers[s],
                features[s],
                spatial_dims,
                grid,
                expand=expand,
                d_state=d_state,
                ltx_squeeze=ltx_squeeze,
                gtx_stride=gtx_strides[s],
                gtx_squeeze=gtx_squeezes[s],
                placement=placement,
                scan_backend=scan_backend,
            )
            self.mamba_layers.append(VSSLayer(VSSBlock(features[s], mix, drop_path, float32=True, eps=1e-6)))
            prev = features[s]

        self.up_convs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for d, blocks in enumerate(decoder_blocks):
            below, skip = features[n - 1 - d], features[n - 2 - d]
            self.up_convs.append(conv(below, skip, 1))
            self.decoder.append(_blocks(spatial_dims, skip, skip, blocks))
        self.final_up = conv(features[0], stem_ch, 1)
        self.final_block = BasicResBlock(spatial_dims, stem_ch, stem_ch)
        self.head = conv(stem_ch, out_channels, 1)
        self.strides = tuple(strides)
        self.stem_pool = stem_pool
        init_weights(self, linear=False)

    def _up(self, x: torch.Tensor, scale: tuple[int, ...]) -> torch.Tensor:
        if all(f == 1 for f in scale):
            return x
        return F.interpolate(x, scale_factor=scale, mode=self.up_mode, align_corners=False)

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
        y = self.final_block(self.final_up(self._up(y, self.stem_pool)) + stem)
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
        gtx_strides=(1, 4, 2, 1),
        gtx_squeezes=(1, 1, 1, 2),
    )
    return UMambaEncLoG(**dict(args, **kwargs))
