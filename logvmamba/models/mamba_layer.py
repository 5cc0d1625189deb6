"""The standard Mamba block and U-Mamba's Mamba layer on image feature maps.

Paper: Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", https://arxiv.org/abs/2312.00752 (block of ``mamba_ssm.modules.mamba_simple``);
U-Mamba, https://arxiv.org/abs/2401.04722 (LayerNorm -> Mamba on the flattened map,
no residual, float32 with autocast off; channels as tokens on small maps).

The block runs on this suite's :func:`logvmamba.ops.selective_scan`, so it works on
the CPU and uses mamba-ssm's kernel when that is installed and the tensors are on a
GPU. Without ``causal-conv1d`` mamba-ssm's block computes its causal depthwise conv
as an ordinary ``Conv1d`` padded by ``d_conv - 1`` on both sides and truncated to the
sequence length; this module does the same, so parameter names and FLOP counts match.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from logvmamba.models.weights import init_dt_proj, s4d_real_A_log
from logvmamba.ops import selective_scan, validate_backend

__all__ = ["Mamba", "MambaLayer"]


class Mamba(nn.Module):
    """Standard Mamba block on (B, L, d_model) token sequences.

    in_proj (d_model -> 2E, no bias) splits into x and z; x runs through a causal
    depthwise Conv1d (kernel ``d_conv``) and SiLU; x_proj gives dt, B, C per token;
    dt_proj (its bias is delta_bias) gives delta; one selective scan with D and the
    SiLU(z) gate; out_proj (E -> d_model, no bias).

    Args:
        d_model: token width.
        d_state: SSM state size N.
        d_conv: kernel of the causal depthwise convolution.
        expand: E = expand * d_model.
        dt_rank: rank of the delta projection; ``None`` means ceil(d_model / 16).
        scan_backend: selective-scan backend; "auto" follows :func:`logvmamba.ops.scan_backend`.

    Examples::

        >>> Mamba(32)(torch.randn(2, 50, 32)).shape
        torch.Size([2, 50, 32])
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2, dt_rank: int | None = None,
                 scan_backend: str = "auto"):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Mamba: {name} must be a positive int, got {value!r}")
        inner = int(expand * d_model)
        if inner < 1:
            raise ValueError(f"Mamba: expand {expand!r} leaves no inner channels for d_model {d_model}")
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, inner
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        init_dt_proj(self.dt_proj, self.dt_rank)
        self.A_log = nn.Parameter(s4d_real_A_log(inner, d_state))
        self.D = nn.Parameter(torch.ones(inner))
        self.A_log._no_weight_decay = self.D._no_weight_decay = True
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        self.scan_backend = validate_backend(scan_backend)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        length = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        x = F.silu(self.conv1d(x)[..., :length])  # causal: keep the first L outputs
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, r + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, E, L); bias goes in as delta_bias
        y = selective_scan(
            x,
            delta,
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        return self.out_proj(y.transpose(1, 2))


class MambaLayer(nn.Module):
    """U-Mamba's layer: LayerNorm then :class:`Mamba` over a flattened (B, C, *spatial) map.

    No residual connection (U-Mamba adds none). Runs in float32 with autocast off
    and returns the input's dtype.

    Args:
        dim: the token width: the channel count, or the number of pixels when
            ``channel_token`` is set.
        channel_token: the channels are the tokens and each token is the flattened
            map (U-Mamba's switch for maps with no more pixels than channels).
        d_state, d_conv, expand, scan_backend: of the Mamba block.

    Examples::

        >>> MambaLayer(32)(torch.randn(1, 32, 6, 10)).shape
        torch.Size([1, 32, 6, 10])
        >>> MambaLayer(4 * 4 * 2, channel_token=True)(torch.randn(1, 64, 4, 4, 2)).shape
        torch.Size([1, 64, 4, 4, 2])
    """

    def __init__(self, dim: int, channel_token: bool = False, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 scan_backend: str = "auto"):
        super().__init__()
        self.dim = dim
        self.channel_token = channel_token
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x[0, 0].numel() if self.channel_token else x.shape[1]
        if width != self.dim:
            kind = "pixels per channel" if self.channel_token else "channels"
            raise ValueError(f"MambaLayer built for {self.dim} {kind}, got a map of shape {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.float().flatten(2)  # (B, C, P)
            tokens = flat if self.channel_token else flat.transpose(1, 2)
            out = self.mamba(self.norm(tokens))
            out = out if self.channel_token else out.transpose(1, 2)
        return out.reshape(x.shape).to(x.dtype)
