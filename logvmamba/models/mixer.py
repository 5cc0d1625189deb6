"""Token mixers of LoG-VMamba (arXiv 2408.14415) and the VMamba SS2D mixer.

One implementation serves 2D and 3D (``spatial_dims``):

- ``vanilla``: single raster scan (the VSS block LoG-VMamba starts from);
- ``local``  (L-VMamba): Local Token Extractor (LTX) puts each token's R^d
  neighbourhood on the channel axis;
- ``global`` (G-VMamba): Global Token Extractor (GTX) adds compressed global
  tokens to the sequence;
- ``log``    (LoG-VMamba): both;
- ``ss2d``: VMamba's original 4-direction 2D mixer (Swin-UMamba encoder);
- ``none`` (:data:`CONTROL_MIXER`): the identity, for No-Mamba controls (nnU-Net
  Revisited's "No-Mamba Base", Isensee et al. 2024, https://arxiv.org/abs/2404.09556):
  a VSS block becomes ``x + DropPath(LayerNorm(x))``, everything else unchanged.

Global tokens are placed in the sequence by ``placement``: ``head``, ``center``,
``split`` or ``interleaved`` (the release's "even", the paper's choice).
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import product
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from logvmamba.models.factories import Conv
from logvmamba.models.layers import DropPath, per_axis
from logvmamba.models.weights import init_dt_proj, s4d_real_A_log
from logvmamba.ops import selective_scan, validate_backend

__all__ = [
    "CONTROL_MIXER",
    "MIXERS",
    "PLACEMENTS",
    "build_mixer",
    "placement_order",
    "unfold_neighbourhood",
    "LoGMixer",
    "SS2D",
    "VSSBlock",
]

MIXERS = ("vanilla", "local", "global", "log")  # the Mamba mixers of LoG-VMamba's ablations
CONTROL_MIXER = "none"  # no token mixer: the No-Mamba control
PLACEMENTS = ("head", "center", "split", "interleaved")


# ----------------------------------------------------------------------------- placement


@lru_cache(maxsize=None)
def placement_order(num_local: int, num_global: int, placement: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Where local and global tokens sit in the scanned sequence.

    Tokens are numbered locals ``0..L-1`` (raster order) then globals ``L..L+T-1``.

    Returns:
        ``order`` (L+T,): the token at each sequence position, and ``local_pos``
        (L,): the sequence position of each local token, in raster order.
    """
    L, T = num_local, num_global
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r} is not one of {PLACEMENTS}")
    locals_ = list(range(L))
    globals_ = list(range(L, L + T))
    if placement == "head":
        order = globals_ + locals_
    elif placement == "center":
        order = locals_[: L // 2] + globals_ + locals_[L // 2 :]
    elif placement == "split":
        # The release's layout: globals and locals each cut in half, alternating
        # G1 L1 G2 L2. The spec does not say where an odd count's extra token goes;
        # floor(T/2) and floor(L/2) come first.
        order = globals_[: T // 2] + locals_[: L // 2] + globals_[T // 2 :] + locals_[L // 2 :]
    else:
        order = _interleaved_order(L, T)
    # Cached for the process: made outside inference mode, or a model that predicted
    # first (validation, a profile) could never train on these tensors afterwards.
    with torch.inference_mode(False):
        order_t = torch.tensor(order, dtype=torch.long)
        is_local = order_t < L
        local_pos = torch.empty(L, dtype=torch.long)
        local_pos[order_t[is_local]] = torch.nonzero(is_local).flatten()
    return order_t, local_pos


def _interleaved_order(L: int, T: int) -> list[int]:
    # The release's "even" mode: one global every interval+1 positions from `start`;
    # the globals that do not fit that pattern go first.
    if T == 0:
        return list(range(L))
    interval = math.ceil(L / T)
    rest = T - L // interval
    start = math.ceil(rest / (interval + 1)) * (interval + 1)
    slots = list(range(start, L + T, interval + 1))
    n_head = T - len(slots)
    if n_head < 0 or n_head > start:
        raise ValueError(f"interleaved placement is undefined for {L} local and {T} global tokens")
    order = [-1] * (L + T)
    for i in range(n_head):
        order[i] = L + i
    for i, pos in enumerate(slots):
        order[pos] = L + n_head + i
    local_iter = iter(range(L))
    return [next(local_iter) if tok < 0 else tok for tok in order]


# ----------------------------------------------------------------------------- LTX


def unfold_neighbourhood(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Exact R^d unfolding: (B, C, *sp) -> (B, C * R^d, *sp), channel c*R^d + k.

    ``k`` runs over the zero-padded R^d window in raster order (last axis fastest),
    the same layout as the release's fixed one-hot convolution.
    """
    spatial = x.shape[2:]
    pad = radius // 2
    xp = F.pad(x, [pad] * (2 * len(spatial)))
    shifted = [
        xp[(slice(None), slice(None)) + tuple(slice(o, o + s) for o, s in zip(offset, spatial))]
        for offset in product(range(radius), repeat=len(spatial))
    ]
    return torch.stack(shifted, dim=2).flatten(1, 2)


def _gtx_conv_geometry(stride: int, spatial_dims: int) -> tuple[int, int, int]:
    """(kernel, dilation, padding) of the GTX spatial compression along one axis, per the release."""
    if spatial_dims == 2:
        return stride + 1, 1, stride // 2
    table = {1: (1, 1, 0), 2: (3, 1, 1), 4: (3, 2, 2), 8: (5, 2, 3)}
    if stride not in table:
        raise ValueError(f"3D GTX stride {stride} is not one of {sorted(table)}")
    return table[stride]


class GlobalTokenExtractor(nn.Module):
    """Compress a (B, C, *sp) map to C // squeeze global tokens of width C.

    ``stride`` is one K for every axis or one per axis (anisotropic volumes).
    """

    def __init__(self, channels: int, spatial_dims: int, grid: Sequence[int], stride, squeeze: int):
        super().__init__()
        if channels % squeeze:
            raise ValueError(f"GTX channel squeeze {squeeze} does not divide {channels} channels")
        strides = per_axis(stride, spatial_dims, "GTX stride")
        kernel, dilation, padding = zip(*(_gtx_conv_geometry(k, spatial_dims) for k in strides))
        self.num_tokens = channels // squeeze
        self.conv = Conv[Conv.CONV, spatial_dims](
            channels, self.num_tokens, kernel, stride=strides, padding=padding, dilation=dilation, groups=self.num_tokens
        )
        out_grid = [(g + 2 * p - d * (k - 1) - 1) // s + 1 for g, k, d, p, s in zip(grid, kernel, dilation, padding, strides)]
        if min(out_grid) < 1:
            raise ValueError(f"GTX stride {stride} leaves nothing of a {tuple(grid)} grid")
        self.grid = tuple(grid)
        self.proj = nn.Linear(math.prod(out_grid), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.grid:
            raise ValueError(
                f"GTX was built for a {self.grid} grid but got {tuple(x.shape[2:])}; "
                "build the network for this patch size or use sliding-window inference"
            )
        tokens = self.proj(self.conv(x).flatten(2))  # (B, C/G, C): channels become the tokens
        return F.silu(tokens.transpose(1, 2))  # (B, C, T)


# ----------------------------------------------------------------------------- LoG mixer



class LoGMixer(nn.Module):
    """Single-scan Mamba mixer with optional LTX and GTX (vanilla, L-, G-, LoG-VMamba).

    Args:
        dim: token width C.
        spatial_dims: 2 or 3.
        grid: spatial size of the token map (needed by GTX, whose Linear sees the
            compressed grid).
        mixer: ``vanilla``, ``local``, ``global`` or ``log``.
        expand: E = expand * C.
        d_state: SSM state size n.
        d_conv: kernel of the depthwise (or LTX grouped) conv.
        ltx_squeeze: S, channels per compressed LTX channel (8 in 2D, 16 in 3D).
        ltx_radius: R, the unfolded neighbourhood is R^d.
        gtx_stride: K, spatial compression of GTX (an int, or one per axis).
        gtx_squeeze: G, T = C'/G global tokens.
        placement: where the global tokens go (``PLACEMENTS``).
        narrow_local: the release's 2D L-VMamba narrows in_proj to 2E/S (kept for
            faithful ablations).
        scan_backend: selective-scan backend; "auto" follows
            :func:`logvmamba.ops.scan_backend`.

    Examples::

        >>> m2 = LoGMixer(96, 2, grid=(32, 32), mixer="log", gtx_stride=4)
        >>> m2(torch.randn(1, 32, 32, 96)).shape
        torch.Size([1, 32, 32, 96])
        >>> m3 = LoGMixer(64, 3, grid=(8, 8, 8), mixer="log", expand=1, ltx_squeeze=16, gtx_stride=2)
        >>> m3(torch.randn(1, 8, 8, 8, 64)).shape
        torch.Size([1, 8, 8, 8, 64])
    """

    def __init__(
        self,
        dim: int,
        spatial_dims: int,
        grid: Sequence[int],
        mixer: str = "log",
        expand: float = 2,
        d_state: int = 16,
        d_conv: int = 3,
        ltx_squeeze: int = 8,
        ltx_radius: int = 3,
        gtx_stride: int | Sequence[int] = 1,
        gtx_squeeze: int = 1,
        placement: str = "interleaved",
        narrow_local: bool = False,
        dropout: float = 0.0,
        scan_backend: str = "auto",
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if mixer not in MIXERS:
            raise ValueError(f"mixer {mixer!r} is not one of {MIXERS}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement {placement!r} is not one of {PLACEMENTS}")
        if len(grid) != spatial_dims:
            raise ValueError(f"grid {tuple(grid)} does not have {spatial_dims} sizes")
        self.spatial_dims = spatial_dims
        self.use_ltx = mixer in ("local", "log")
        self.use_gtx = mixer in ("global", "log")
        self.placement = placement
        self.grid = tuple(grid)
        inner = int(expand * dim)
        if self.use_ltx and (inner % ltx_squeeze or dim % ltx_squeeze):
            raise ValueError(f"LTX squeeze {ltx_squeeze} must divide the width {dim} and the inner width {inner}")
        conv = Conv[Conv.CONV, spatial_dims]
        neighbours = ltx_radius**spatial_dims
        if self.use_ltx:
            if narrow_local and not self.use_gtx:
                inner = inner // ltx_squeeze
                self.conv = conv(inner, inner, d_conv, padding=d_conv // 2, groups=inner)
                compressed = inner
            else:
                compressed = inner // ltx_squeeze
                self.conv = conv(inner, compressed, d_conv, padding=d_conv // 2, groups=compressed)
            seq_width = compressed * neighbours
            dt_rank = math.ceil((dim // ltx_squeeze) * neighbours / 16)
            self.fold = nn.Linear(seq_width, inner, bias=False)
        else:
            self.conv = conv(inner, inner, d_conv, padding=d_conv // 2, groups=inner)
            seq_width = inner
            dt_rank = math.ceil(dim / 16)
            self.fold = None
        self.ltx_radius = ltx_radius
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.gtx = GlobalTokenExtractor(seq_width, spatial_dims, grid, gtx_stride, gtx_squeeze) if self.use_gtx else None
        self.x_proj = nn.Linear(seq_width, dt_rank + 2 * d_state, bias=False)
        self.x_proj.weight._no_reinit = True  # a bare Parameter in the release, so never re-initialised
        self.dt_proj = nn.Linear(dt_rank, seq_width, bias=True)
        init_dt_proj(self.dt_proj, dt_rank)
        self.A_log = nn.Parameter(s4d_real_A_log(seq_width, d_state))
        self.D = nn.Parameter(torch.ones(seq_width))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dt_rank, self.d_state, self.seq_width = dt_rank, d_state, seq_width
        self.scan_backend = validate_backend(scan_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *grid, C) channels-last -> (B, *grid, C)."""
        spatial = tuple(x.shape[1:-1])
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv(torch.movedim(x, -1, 1)))
        if self.use_ltx:
            x = unfold_neighbourhood(x, self.ltx_radius)
        seq = x.flatten(2)  # (B, C', L), raster order
        num_local = seq.shape[-1]
        if self.use_gtx:
            order, local_pos = placement_order(num_local, self.gtx.num_tokens, self.placement)
            seq = torch.cat([seq, self.gtx(x)], dim=-1).index_select(-1, order.to(seq.device))
        y = self._scan(seq)
        if self.use_gtx:
            y = y.index_select(-1, local_pos.to(y.device))
        y = y.transpose(1, 2)
        if self.fold is not None:
            y = self.fold(y)
        y = self.out_norm(y) * F.silu(z.reshape(z.shape[0], -1, z.shape[-1]))
        y = self.dropout(self.out_proj(y))
        return y.reshape(x.shape[0], *spatial, -1)

    def _scan(self, seq: torch.Tensor) -> torch.Tensor:
        x_dbl = self.x_proj(seq.transpose(1, 2))  # (B, L, r + 2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        return selective_scan(
            seq,
            delta,
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2),
            C.transpose(1, 2),
            D=self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )


# ----------------------------------------------------------------------------- SS2D


class SS2D(nn.Module):
    """VMamba's 4-direction selective-scan 2D mixer (row, column, both reversed).

    Parameter names follow VMamba so ImageNet VMamba-Tiny checkpoints load. ``scan_backend``
    as in :class:`LoGMixer`.

    Examples::

        >>> SS2D(96)(torch.randn(1, 16, 16, 96)).shape
        torch.Size([1, 16, 16, 96])
    """

    num_directions = 4

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 3, expand: float = 2, dropout: float = 0.0,
                 scan_backend: str = "auto"):
        super().__init__()
        inner = int(expand * dim)
        K = self.num_directions
        self.dt_rank = math.ceil(dim / 16)
        self.d_state = d_state
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv2d = nn.Conv2d(inner, inner, d_conv, padding=d_conv // 2, groups=inner)
        x_projs = [nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False) for _ in range(K)]
        self.x_proj_weight = nn.Parameter(torch.stack([p.weight for p in x_projs]))
        dt_projs = [nn.Linear(self.dt_rank, inner) for _ in range(K)]
        for p in dt_projs:
            init_dt_proj(p, self.dt_rank)
        self.dt_projs_weight = nn.Parameter(torch.stack([p.weight for p in dt_projs]))
        self.dt_projs_bias = nn.Parameter(torch.stack([p.bias for p in dt_projs]))
        self.dt_projs_weight._no_reinit = self.dt_projs_bias._no_reinit = True
        self.A_logs = nn.Parameter(s4d_real_A_log(K * inner, d_state))
        self.Ds = nn.Parameter(torch.ones(K * inner))
        self.A_logs._no_weight_decay = self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scan_backend = validate_backend(scan_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        L = h * w
        rows = x.flatten(2)
        cols = x.transpose(2, 3).flatten(2)
        xs = torch.stack([rows, cols], dim=1)
        xs = torch.cat([xs, xs.flip(-1)], dim=1)  # (B, 4, E, L)
        x_dbl = torch.einsum("bkel,kce->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,ker->bkel", dts, self.dt_projs_weight)
        y = selective_scan(
            xs.flatten(1, 2),
            dts.flatten(1, 2),
            -torch.exp(self.A_logs.float()),
            Bs,
            Cs,
            D=self.Ds.float(),
            delta_bias=self.dt_projs_bias.flatten().float(),
            delta_softplus=True,
            backend=self.scan_backend,
        ).view(b, 4, -1, L)
        y = y[:, :2] + y[:, 2:].flip(-1)  # undo the reversed scans
        y_cols = y[:, 1].view(b, -1, w, h).transpose(2, 3).flatten(2)
        y = (y[:, 0] + y_cols).transpose(1, 2)  # (B, L, E), raster order
        y = self.out_norm(y) * F.silu(z.reshape(b, L, -1))
        return self.dropout(self.out_proj(y)).view(b, h, w, -1)


# ----------------------------------------------------------------------------- block


class VSSBlock(nn.Module):
    """Pre-norm residual block ``x + DropPath(mixer(LayerNorm(x)))`` on channels-last tokens.

    Args:
        mixer: a module mapping (B, *sp, C) to (B, *sp, C).
        float32: run the mixer in float32 with autocast off (U-Mamba's 3D layers).
        eps: LayerNorm eps; the release's 2D blocks get nn.LayerNorm's 1e-5, its 3D
            layers 1e-6.
    """

    def __init__(self, dim: int, mixer: nn.Module, drop_path: float = 0.0, float32: bool = False, eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.self_attention = mixer  # VMamba's attribute name, so checkpoints load
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.float32 = float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float32:
            with torch.autocast(device_type=x.device.type, enabled=False):
                x = x.float()
                return x + self.drop_path(self.self_attention(self.ln_1(x)))
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


def build_mixer(kind: str, dim: int, spatial_dims: int, grid: Sequence[int], **kwargs) -> nn.Module:
    """``ss2d``, one of ``MIXERS`` with its keyword arguments, or ``none`` (:data:`CONTROL_MIXER`).

    ``none`` is ``nn.Identity`` whatever the keywords: the No-Mamba control's block
    keeps its LayerNorm, DropPath and residual and mixes nothing.

    Raises:
        ValueError: an unknown ``kind``, or ``ss2d`` outside 2D.
    """
    known = ("ss2d",) + MIXERS + (CONTROL_MIXER,)
    if kind not in known:
        raise ValueError(f"mixer {kind!r} is not one of {known}")
    if kind == CONTROL_MIXER:
        return nn.Identity()
    if kind == "ss2d":
        if spatial_dims != 2:
            raise ValueError("the ss2d mixer is 2D only")
        keep = {k: kwargs[k] for k in ("d_state", "d_conv", "expand", "dropout", "scan_backend") if k in kwargs}
        return SS2D(dim, **keep)
    return LoGMixer(dim, spatial_dims, grid, mixer=kind, **kwargs)
