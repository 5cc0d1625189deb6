"""Layer classes by kind and spatial dims, as ``Conv[Conv.CONV, 3]`` (``nn.Conv3d``).

The same look-up MONAI's ``monai.networks.layers.factories`` offers for the kinds the
networks use, without importing MONAI: its package import loads every submodule
(seconds per process), and a prediction or profiling job needs none of them.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

__all__ = ["Conv", "Norm", "Pool", "ensure_tuple_rep"]


class _Factory:
    """``Factory[kind, spatial_dims]`` -> layer class; ``Factory.KIND`` names the kinds."""

    def __init__(self, name: str, table: dict[str, dict[int, type[nn.Module]]]):
        self.name, self.table = name, table
        for kind in table:
            setattr(self, kind.upper(), kind)

    def __getitem__(self, key: tuple[str, int]) -> type[nn.Module]:
        kind, dims = key
        try:
            return self.table[kind][int(dims)]
        except KeyError:
            raise KeyError(f"{self.name}: no {kind!r} layer for {dims} spatial dims") from None


Conv = _Factory("Conv", {
    "conv": {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d},
    "convtrans": {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d},
})
Norm = _Factory("Norm", {
    "instance": {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
    "batch": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
})
Pool = _Factory("Pool", {
    "max": {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d},
    "avg": {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d},
})


def ensure_tuple_rep(value, n: int) -> tuple:
    """``value`` repeated ``n`` times, or ``value`` as a tuple when it already has ``n`` entries.

    Raises:
        ValueError: a sequence of another length.
    """
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(f"sequence must have length {n}, got {len(value)}")
        return tuple(value)
    return (value,) * n
