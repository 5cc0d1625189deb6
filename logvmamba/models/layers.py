"""Convolutional building blocks shared by the U-Mamba family networks (2D and 3D).

Layers are looked up by kind and dimension (``Conv[Conv.CONV, spatial_dims]``, see
:mod:`logvmamba.models.factories`); per-axis arguments are padded with ``ensure_tuple_rep``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from logvmamba.models.factories import Conv, Norm, ensure_tuple_rep

__all__ = ["BasicResBlock", "DropPath", "per_axis"]


def per_axis(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    """``value`` as one positive int per axis (an int is repeated).

    Raises:
        ValueError: naming ``name`` and the value, when it has the wrong length or
            an entry below 1.

    Examples::

        >>> per_axis(2, 3, "stride"), per_axis((1, 2), 2, "stride")
        ((2, 2, 2), (1, 2))
    """
    try:
        out = tuple(int(v) for v in ensure_tuple_rep(value, spatial_dims))
    except (TypeError, ValueError):
        out = ()
    if len(out) != spatial_dims or min(out) < 1:
        raise ValueError(f"{name} {value!r} must be a positive int or {spatial_dims} of them")
    return out


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``drop_prob``
    and scale the kept ones by ``1 / (1 - drop_prob)``; the identity in eval mode.

    The same computation and random draws as ``timm.layers.DropPath`` (timm's import brings
    torchvision and costs a second per process).
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0.0:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class BasicResBlock(nn.Module):
    """U-Mamba's BasicResBlock: conv-norm-act, conv-norm, shortcut, add, act.

    Every conv has a bias; instance norm (eps 1e-5, affine), LeakyReLU 1e-2. The
    shortcut is a 1x1 conv with the block's stride when ``shortcut_conv``, else the
    identity (then the channels and the stride must allow it).

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: of the block.
        kernel_size: of both convs (int or per axis); padding keeps the size.
        stride: of the first conv and the shortcut (int or per axis).
        shortcut_conv: use the 1x1 conv shortcut.

    Examples::

        >>> BasicResBlock(3, 4, 8, stride=2, shortcut_conv=True)(torch.randn(1, 4, 8, 8, 8)).shape
        torch.Size([1, 8, 4, 4, 4])
        >>> BasicResBlock(2, 8, 8)(torch.randn(1, 8, 6, 6)).shape
        torch.Size([1, 8, 6, 6])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        shortcut_conv: bool = False,
    ):
        super().__init__()
        kernel = per_axis(kernel_size, spatial_dims, "kernel_size")
        stride = per_axis(stride, spatial_dims, "stride")
        if not shortcut_conv and (in_channels != out_channels or max(stride) > 1):
            raise ValueError(
                f"a block from {in_channels} to {out_channels} channels at stride {stride} needs a shortcut conv"
            )
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.INSTANCE, spatial_dims]
        padding = tuple(k // 2 for k in kernel)
        self.conv1 = conv(in_channels, out_channels, kernel, stride=stride, padding=padding)
        self.norm1 = norm(out_channels, eps=1e-5, affine=True)
        self.conv2 = conv(out_channels, out_channels, kernel, padding=padding)
        self.norm2 = norm(out_channels, eps=1e-5, affine=True)
        self.act = nn.LeakyReLU(1e-2, inplace=True)
        self.shortcut = conv(in_channels, out_channels, 1, stride=stride) if shortcut_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.shortcut(x))
