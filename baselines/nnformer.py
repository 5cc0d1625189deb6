"""nnFormer, one class for 2D and 3D, written from the paper.

Paper: Zhou et al., "nnFormer: Volumetric Medical Image Segmentation via a 3D
Transformer", https://arxiv.org/abs/2109.03201 (IEEE TIP 2023). Facts about the
released networks (github.com/282857341/nnFormer, ``nnFormer_synapse.py``,
``nnFormer_tumor.py`` and their trainers) that the paper leaves open:

- embedding: two conv stages (3x3 conv, GELU, LayerNorm, 3x3 conv, GELU,
  LayerNorm; the second stage ends on its last conv), strides splitting the
  patch (4 = 2 x 2, 2 = 2 x 1), then a LayerNorm;
- encoder stages of LV-MSA blocks (window attention with a learned relative
  position bias), every second block with windows shifted by half a window;
  a stage whose map is no larger than its window attends globally, which is how
  the release gets GV-MSA in the bottleneck (window 4 on a 4^3 map);
- down-sampling: GELU, LayerNorm, 3x3 conv with stride 2 doubling the channels;
  up-sampling: LayerNorm, 2x2 transposed conv halving them;
- skip attention: the first block of every decoder stage takes keys and values
  from the (normalised) skip and uses the (normalised) up-sampled map itself as
  the query, with no query projection; its residual is skip + up-sampled map;
- heads: a transposed conv with kernel = stride = patch size, one per decoder
  stage with deep supervision (outputs at 1, 1/2, 1/4 of the input);
- released 3D configurations: Synapse (embed 192, heads 6/12/24/48, patch
  (2, 4, 4), windows 4/4/8/4 for a 64x128x128 crop) and BraTS (embed 96, heads
  3/6/12/24, patch 4, windows 4/4/8/4 for a 128^3 crop); drop path 0.2.

The release has no 2D network; see :func:`nnformer` for the 2D configuration.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from logvmamba.models.factories import Conv
from logvmamba.models.layers import DropPath, per_axis
from logvmamba.registry import register_model

__all__ = ["NNFormer", "NNFormerBlock", "WindowAttention", "nnformer", "nnformer_test", "window_partition", "window_reverse"]


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *grid, C) with every side a multiple of its window -> (B * windows, prod(window), C)."""
    b, *grid, c = x.shape
    d = len(grid)
    shape = [b]
    for g, w in zip(grid, window):
        shape += [g // w, w]
    x = x.reshape(*shape, c)
    order = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [2 * d + 1]
    return x.permute(*order).reshape(-1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition` for a map of size ``grid``."""
    d, c = len(grid), windows.shape[-1]
    counts = [g // w for g, w in zip(grid, window)]
    x = windows.reshape(-1, *counts, *window, c)
    order = [0]
    for i in range(d):
        order += [1 + i, 1 + d + i]
    return x.permute(*order, 2 * d + 1).reshape(-1, *grid, c)


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """(N, N) index into a table of prod(2w - 1) relative offsets, N = prod(window)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for axis, w in enumerate(window):
        index = index * (2 * w - 1) + rel[axis] + (w - 1)
    return index


def shifted_window_mask(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    """(windows, N, N) additive mask (0 / -100) keeping a shifted window to one region of the map."""
    labels = torch.zeros(1, *grid, 1)
    axis_slices = [
        (slice(0, -w), slice(-w, -s), slice(-s, None)) if s > 0 else (slice(None),) for w, s in zip(window, shift)
    ]
    for count, region in enumerate(torch.cartesian_prod(*[torch.arange(len(s)) for s in axis_slices]).reshape(-1, len(grid))):
        index = tuple(axis_slices[a][int(r)] for a, r in enumerate(region))
        labels[(slice(None), *index, slice(None))] = count
    lab = window_partition(labels, window).squeeze(-1)
    diff = lab[:, None, :] - lab[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head attention inside a window with a learned relative position bias.

    With ``cross=True`` (skip attention) keys and values come from ``x`` and the
    query is the given tensor itself, unprojected.
    """

    def __init__(self, dim: int, window: Sequence[int], num_heads: int, qkv_bias: bool = True, cross: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.cross = cross
        self.bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in window), num_heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("bias_index", relative_position_index(window).flatten(), persistent=False)
        if cross:
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, query: torch.Tensor | None = None) -> torch.Tensor:
        bw, n, c = x.shape
        h = self.num_heads
        if self.cross:
            k, v = self.kv(x).reshape(bw, n, 2, h, c // h).permute(2, 0, 3, 1, 4)
            q = query.reshape(bw, n, h, c // h).transpose(1, 2)
        else:
            q, k, v = self.qkv(x).reshape(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.bias_table[self.bias_index].reshape(n, n, h).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.reshape(bw // nw, nw, h, n, n) + mask[None, :, None]).reshape(bw, h, n, n)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class NNFormerBlock(nn.Module):
    """Pre-norm transformer block with (shifted) window attention on a (B, *grid, C) map.

    Per axis the window is clipped to the map; an axis the window covers is not
    shifted, so a window covering the whole map is global attention (GV-MSA).
    ``cross=True`` is the skip-attention block; call it as ``block(up, skip=skip)``.
    """

    def __init__(
        self,
        dim: int,
        grid: Sequence[int],
        num_heads: int,
        window: Sequence[int],
        shifted: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        cross: bool = False,
    ):
        super().__init__()
        self.grid = tuple(grid)
        self.window = tuple(min(w, g) for w, g in zip(window, grid))
        self.shift = tuple(w // 2 if shifted and g > w else 0 for w, g in zip(self.window, grid))
        self.padded = tuple(math.ceil(g / w) * w for g, w in zip(grid, self.window))
        self.cross = cross
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window, num_heads, qkv_bias, cross=cross)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        mask = shifted_window_mask(self.padded, self.window, self.shift) if any(self.shift) else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def _to_windows(self, x: torch.Tensor) -> torch.Tensor:
        pad = []
        for g, p in zip(reversed(self.grid), reversed(self.padded)):
            pad += [0, p - g]
        if any(pad):
            x = F.pad(x, [0, 0] + pad)
        if any(self.shift):
            x = torch.roll(x, shifts=tuple(-s for s in self.shift), dims=tuple(range(1, len(self.grid) + 1)))
        return window_partition(x, self.window)

    def _from_windows(self, windows: torch.Tensor) -> torch.Tensor:
        x = window_reverse(windows, self.window, self.padded)
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=tuple(range(1, len(self.grid) + 1)))
        if self.padded != self.grid:
            x = x[(slice(None), *[slice(0, g) for g in self.grid])]
        return x

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.cross:
            if skip is None:
                raise ValueError("the skip-attention block needs the skip map")
            shortcut = x + skip
            kv = self._to_windows(self.norm1(skip))
            out = self.attn(kv, self.attn_mask, query=self._to_windows(self.norm1(x)))
        else:
            shortcut = x
            out = self.attn(self._to_windows(self.norm1(x)), self.attn_mask)
        x = shortcut + self.drop_path(self._from_windows(out))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _ln_channels_first(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return torch.movedim(norm(torch.movedim(x, 1, -1)), -1, 1)


class EmbedStage(nn.Module):
    """3x3 conv (stride) -> GELU -> LN -> 3x3 conv [-> GELU -> LN unless ``last``]."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: Sequence[int], last: bool):
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv(in_ch, out_ch, 3, stride=tuple(stride), padding=1)
        self.norm1 = nn.LayerNorm(out_ch)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1)
        self.norm2 = None if last else nn.LayerNorm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(_ln_channels_first(self.norm1, F.gelu(self.conv1(x))))
        return x if self.norm2 is None else _ln_channels_first(self.norm2, F.gelu(x))


class Downsample(nn.Module):
    """GELU -> LN -> 3x3 conv with ``stride`` to twice the channels; channels-last in and out."""

    def __init__(self, spatial_dims: int, dim: int, stride: Sequence[int]):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = Conv[Conv.CONV, spatial_dims](dim, 2 * dim, 3, stride=tuple(stride), padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.movedim(self.norm(F.gelu(x)), -1, 1)
        return torch.movedim(self.conv(x), 1, -1)


class Upsample(nn.Module):
    """LN -> transposed conv (kernel = stride) to half the channels; channels-last in and out."""

    def __init__(self, spatial_dims: int, dim: int, stride: Sequence[int]):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = Conv[Conv.CONVTRANS, spatial_dims](dim, dim // 2, tuple(stride), stride=tuple(stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.movedim(self.conv(torch.movedim(self.norm(x), -1, 1)), 1, -1)


class EncoderStage(nn.Module):
    """Window blocks (every second one shifted), a LayerNorm on the skip, then down-sampling."""

    def __init__(self, spatial_dims, dim, grid, depth, num_heads, window, mlp_ratio, qkv_bias, drop_path, down_stride):
        super().__init__()
        self.blocks = nn.ModuleList(
            NNFormerBlock(dim, grid, num_heads, window, i % 2 == 1, mlp_ratio, qkv_bias, drop_path[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.downsample = Downsample(spatial_dims, dim, down_stride) if down_stride is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        for block in self.blocks:
            x = block(x)
        return self.norm(x), (self.downsample(x) if self.downsample is not None else None)


class DecoderStage(nn.Module):
    """Up-sampling, a skip-attention block, then ``depth - 1`` window blocks (every second one shifted)."""

    def __init__(self, spatial_dims, dim, grid, depth, num_heads, window, mlp_ratio, qkv_bias, drop_path, up_stride):
        super().__init__()
        self.upsample = Upsample(spatial_dims, 2 * dim, up_stride)
        self.blocks = nn.ModuleList(
            NNFormerBlock(dim, grid, num_heads, window, i % 2 == 1, mlp_ratio, qkv_bias, drop_path[i], cross=i == 0)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](self.upsample(x), skip=skip)
        for block in self.blocks[1:]:
            x = block(x)
        return x


class NNFormer(nn.Module):
    """nnFormer: conv embedding, LV-MSA encoder, GV-MSA bottleneck, skip-attention decoder.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels and logits.
        img_size: training patch; each side a multiple of the total stride (patch size
            times the down-sampling strides). Window masks and relative positions are
            built for it, so inputs must have this size.
        embed_dim: channels of the first stage; stage ``i`` has ``embed_dim * 2 ** i``.
        depths: blocks per encoder stage; the decoder stage at the same resolution has as many.
        num_heads: heads per stage (encoder and decoder).
        patch_size: embedding stride per axis, each 1, 2 or 4.
        window_size: LV-MSA window (int or one per axis), clipped to the map per axis.
        global_stages: how many of the lowest-resolution stages use GV-MSA (global
            attention), the paper's bottleneck; the release gets the same from windows
            as large as those maps (8 on 8^3, 4 on 4^3).
        down_strides: stride of each down-sampling (int, or one per axis), one entry per
            stage transition; the release's ACDC network down-samples the slice axis less.
        mlp_ratio, qkv_bias: of every block.
        drop_path: stochastic depth, rising linearly to this over the encoder blocks and
            again over the decoder blocks (0.2 in the release).
        deep_supervision: return a list of logits at 1, 1/2, 1/4, ... of the input
            (full resolution first).

    Examples::

        >>> net = NNFormer(2, 3, 4, (64, 64), embed_dim=24, num_heads=(1, 2, 4, 8))
        >>> net(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 4, 64, 64])
        >>> net3d = NNFormer(3, 4, 3, (64, 64, 64), embed_dim=24, num_heads=(1, 2, 4, 8))
        >>> net3d(torch.randn(1, 4, 64, 64, 64)).shape
        torch.Size([1, 3, 64, 64, 64])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int],
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        patch_size: int | Sequence[int] = 4,
        window_size: int | Sequence[int] = 4,
        global_stages: int = 2,
        down_strides: int | Sequence[int | Sequence[int]] = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.2,
        deep_supervision: bool = False,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        n = len(depths)
        if n < 2 or len(num_heads) != n or any(d < 1 for d in depths):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} need one positive entry per stage, at least 2 stages")
        if embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim {embed_dim} must be a positive even number")
        for i, h in enumerate(num_heads):
            if h < 1 or (embed_dim * 2**i) % h:
                raise ValueError(f"num_heads {tuple(num_heads)}: stage {i} width {embed_dim * 2**i} is not divisible by {h}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must be positive")
        if not 0 <= global_stages <= n:
            raise ValueError(f"global_stages {global_stages} must be between 0 and {n}")
        if not 0 <= drop_path < 1:
            raise ValueError(f"drop_path {drop_path} must be in [0, 1)")
        patch = per_axis(patch_size, spatial_dims, "patch_size")
        if any(p not in (1, 2, 4) for p in patch):
            raise ValueError(f"patch_size {patch_size!r}: each axis must be 1, 2 or 4")
        window = per_axis(window_size, spatial_dims, "window_size")
        if isinstance(down_strides, int):
            down_strides = (down_strides,) * (n - 1)
        if len(down_strides) != n - 1:
            raise ValueError(f"down_strides {down_strides!r} needs one entry per stage transition ({n - 1})")
        strides = [per_axis(s, spatial_dims, "down_strides") for s in down_strides]
        scales = [patch]
        for s in strides:
            scales.append(tuple(a * b for a, b in zip(scales[-1], s)))
        size = tuple(int(s) for s in img_size)
        if len(size) != spatial_dims or any(s <= 0 or s % d for s, d in zip(size, scales[-1])):
            raise ValueError(
                f"NNFormer: img_size {tuple(img_size)} is not supported; it needs {spatial_dims} sizes, "
                f"each a positive multiple of the total stride {scales[-1]}"
            )
        grids = [tuple(s // d for s, d in zip(size, sc)) for sc in scales]
        windows = [grids[i] if i >= n - global_stages else window for i in range(n)]
        self.img_size = size
        self.windows = tuple(tuple(min(w, g) for w, g in zip(win, grid)) for win, grid in zip(windows, grids))
        self.deep_supervision = deep_supervision

        stride1 = tuple(min(p, 2) for p in patch)
        self.embed = nn.ModuleList(
            [
                EmbedStage(spatial_dims, in_channels, embed_dim // 2, stride1, last=False),
                EmbedStage(spatial_dims, embed_dim // 2, embed_dim, tuple(p // s for p, s in zip(patch, stride1)), last=True),
            ]
        )
        self.embed_norm = nn.LayerNorm(embed_dim)
        dims = [embed_dim * 2**i for i in range(n)]
        dpr = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.encoder = nn.ModuleList(
            EncoderStage(
                spatial_dims, dims[i], grids[i], depths[i], num_heads[i], windows[i], mlp_ratio, qkv_bias,
                dpr[sum(depths[:i]) : sum(depths[: i + 1])], strides[i] if i < n - 1 else None,
            )
            for i in range(n)
        )
        dec_depths = list(depths[: n - 1])
        dpr = torch.linspace(0, drop_path, sum(dec_depths)).tolist()
        self.decoder = nn.ModuleList(  # deepest first
            DecoderStage(
                spatial_dims, dims[i], grids[i], depths[i], num_heads[i], windows[i], mlp_ratio, qkv_bias,
                dpr[sum(dec_depths[:i]) : sum(dec_depths[: i + 1])], strides[i],
            )
            for i in reversed(range(n - 1))
        )
        head = Conv[Conv.CONVTRANS, spatial_dims]
        n_heads = n - 1 if deep_supervision else 1
        self.heads = nn.ModuleList(head(dims[i], out_channels, patch, stride=patch) for i in range(n_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"NNFormer was built for img_size {self.img_size}, got an input of {tuple(x.shape[2:])}")
        for stage in self.embed:
            x = stage(x)
        x = self.embed_norm(torch.movedim(x, 1, -1))
        skips = []
        for stage in self.encoder:
            skip, x = stage(x)
            skips.append(skip)
        x = skips[-1]
        outs = []
        for stage, skip in zip(self.decoder, reversed(skips[:-1])):
            x = stage(x, skip)
            outs.append(x)
        outs = outs[::-1]  # full resolution first
        if not self.deep_supervision:
            return self.heads[0](torch.movedim(outs[0], -1, 1))
        return [head(torch.movedim(o, -1, 1)) for head, o in zip(self.heads, outs)]


# Released 3D configuration for BraTS (nnFormer_tumor, 128^3 crop): windows 4/4/8/4 on
# maps 32/16/8/4, i.e. LV-MSA window 4 and GV-MSA in the two lowest stages.
NNFORMER_3D = dict(embed_dim=96, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), patch_size=4, window_size=4, global_stages=2)
# 2D: the release's Synapse widths (embed 192, heads 6/12/24/48) with its in-plane
# patch 4, LV-MSA window 7 and GV-MSA in the two lowest stages; at (3, 384, 640) and
# (3, 512, 512) this costs 126.8 and 137.2 GFLOPs (published 125.5 / 136.7).
NNFORMER_2D = dict(embed_dim=192, depths=(2, 2, 2, 2), num_heads=(6, 12, 24, 48), patch_size=4, window_size=7, global_stages=2)


@register_model
def nnformer(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> NNFormer:
    """nnFormer: the released BraTS configuration in 3D, the Synapse widths in 2D.

    The release's ACDC network (z-last order here) is
    ``embed_dim=96, patch_size=(4, 4, 1), window_size=(5, 5, 3), down_strides=((2, 2, 1), 2, 2)``.
    """
    arch = NNFORMER_2D if spatial_dims == 2 else NNFORMER_3D
    args = dict(arch, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return NNFormer(**dict(args, **kwargs))


@register_model
def nnformer_test(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> NNFormer:
    """Tiny nnFormer for tests: patch 2, one block per stage (total stride 16)."""
    args = dict(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size,
        embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), patch_size=2, window_size=4, drop_path=0.0,
    )
    return NNFormer(**dict(args, **kwargs))
