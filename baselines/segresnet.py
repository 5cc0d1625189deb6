"""SegResNet (MONAI) in U-Mamba's baseline configuration.

Paper: Myronenko, "3D MRI brain tumor segmentation using autoencoder regularization",
BrainLes 2018, https://arxiv.org/abs/1810.11654. Network: ``monai.networks.nets.SegResNet``.
U-Mamba (github.com/bowang-lab/U-Mamba, ``nnUNetTrainerSegResNet``) builds it with
``init_filters=32, blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1]`` and MONAI's other
defaults (group norm with 8 groups, ReLU, non-trainable up-sampling), in 2D and 3D,
without deep supervision.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from logvmamba.registry import register_model, validate_img_size

__all__ = ["build_segresnet", "segresnet", "segresnet_test"]


def build_segresnet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    img_size: Sequence[int],
    init_filters: int = 32,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    num_groups: int = 8,
    deep_supervision: bool = False,
) -> nn.Module:
    """MONAI SegResNet; ``img_size`` only validates the patch (a multiple of the total stride).

    Examples::

        >>> net = build_segresnet(2, 3, 8, (384, 640))
        >>> net3d = build_segresnet(3, 4, 3, (128, 128, 128))
    """
    from monai.networks.nets import SegResNet  # heavy; on use

    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if deep_supervision:
        raise ValueError("segresnet has no deep supervision (U-Mamba trains it without)")
    if len(blocks_down) < 2 or len(blocks_up) != len(blocks_down) - 1 or any(b < 1 for b in (*blocks_down, *blocks_up)):
        raise ValueError(f"blocks_down {tuple(blocks_down)} and blocks_up {tuple(blocks_up)} need positive entries, one fewer up")
    if init_filters < 1 or num_groups < 1 or init_filters % num_groups:
        raise ValueError(f"init_filters {init_filters} must be a positive multiple of num_groups {num_groups}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must be positive")
    validate_img_size(img_size, spatial_dims, 2 ** (len(blocks_down) - 1), "segresnet")
    return SegResNet(
        spatial_dims=spatial_dims,
        init_filters=init_filters,
        in_channels=in_channels,
        out_channels=out_channels,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
        num_groups=num_groups,
    )


@register_model
def segresnet(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> nn.Module:
    """SegResNet as U-Mamba's baseline: 32 filters, blocks down (1, 2, 2, 4), up (1, 1, 1)."""
    args = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return build_segresnet(**dict(args, **kwargs))


@register_model
def segresnet_test(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> nn.Module:
    """Tiny SegResNet for tests: 8 filters, one block per level."""
    args = dict(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size,
        init_filters=8, blocks_down=(1, 1, 1, 1),
    )
    return build_segresnet(**dict(args, **kwargs))
