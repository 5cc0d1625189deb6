"""Weight initialisation shared by the networks (nnU-Net's He init, VMamba's Linear init)."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["init_weights"]

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
