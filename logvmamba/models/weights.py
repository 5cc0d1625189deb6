"""Weight initialisation shared by the networks (nnU-Net's He init, VMamba's Linear init, Mamba's SSM init)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["init_dt_proj", "init_weights", "s4d_real_A_log"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def init_weights(module: nn.Module, linear: bool = True, neg_slope: float = 1e-2) -> None:
    """He-normal convs (zero bias); trunc-normal(0.02) Linears when ``linear``; LayerNorm 1/0.

    Parameters flagged ``_no_reinit`` (the Mamba dt projection) keep their own init.
    """
    for m in module.modules():
        if isinstance(m, _CONVS):
            nn.init.kaiming_normal_(m.weight, a=neg_slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear and not getattr(m.weight, "_no_reinit", False):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_dt_proj(dt_proj: nn.Linear, dt_rank: int, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
    """Mamba's delta projection init: weight uniform +-dt_rank^-0.5, bias so that softplus(bias)
    is log-uniform in [dt_min, dt_max] (at least ``dt_floor``); both flagged ``_no_reinit``."""
    bound = dt_rank**-0.5
    nn.init.uniform_(dt_proj.weight, -bound, bound)
    dt = torch.exp(torch.rand(dt_proj.out_features) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_floor)
    with torch.no_grad():
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    dt_proj.bias._no_reinit = True
    dt_proj.weight._no_reinit = True


def s4d_real_A_log(channels: int, d_state: int) -> torch.Tensor:
    """S4D-real init of A_log: log(1..d_state) for every channel, shape (channels, d_state)."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(channels, 1)
