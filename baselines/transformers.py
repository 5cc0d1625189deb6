"""UNETR and SwinUNETR (MONAI) in U-Mamba's baseline configurations.

Papers: Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation",
WACV 2022, https://arxiv.org/abs/2103.10504; Hatamizadeh et al., "Swin UNETR: Swin
Transformers for Semantic Segmentation of Brain Tumors in MRI Images", BrainLes 2021,
https://arxiv.org/abs/2201.01266. Networks: ``monai.networks.nets.UNETR`` and
``SwinUNETR`` (v1). Configurations from U-Mamba (github.com/bowang-lab/U-Mamba,
``nnUNetTrainerUNETR`` / ``nnUNetTrainerSwinUNETR``), 2D and 3D, no deep supervision.

Patch sizes: ViT patches are 16 and SwinUNETR halves the map five times, so U-Mamba's
trainers replace the planned patch by one rounded *up* to a multiple of 16 (UNETR) or
32 (SwinUNETR) -- the crop itself grows, nothing is padded at the input -- and the
network is built for that patch. Here the builders reject other sizes, naming the
patch to use; :func:`round_up_patch` computes it.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from logvmamba.registry import register_model, validate_img_size

__all__ = ["build_swin_unetr", "build_unetr", "round_up_patch", "swin_unetr", "swin_unetr_test", "unetr", "unetr_test"]

UNETR_PATCH = 16  # fixed in MONAI's UNETR
SWIN_UNETR_DIVISOR = 32  # 2 ** 5: patch 2 and four merges


def round_up_patch(img_size: Sequence[int], multiple: int) -> tuple[int, ...]:
    """U-Mamba's rule: every side not already a multiple is rounded up to the next one.

    Examples::

        >>> round_up_patch((20, 256, 224), 32)
        (32, 256, 224)
    """
    return tuple(-(-int(s) // multiple) * multiple for s in img_size)


def _check(model: str, spatial_dims: int, img_size: Sequence[int], divisor: int, deep_supervision: bool) -> tuple[int, ...]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if deep_supervision:
        raise ValueError(f"{model} has no deep supervision (U-Mamba trains it without)")
    try:
        return validate_img_size(img_size, spatial_dims, divisor, model)
    except ValueError as err:
        if len(tuple(img_size)) == spatial_dims and all(int(s) > 0 for s in img_size):
            raise ValueError(f"{err}; U-Mamba trains it with the patch rounded up to {round_up_patch(img_size, divisor)}") from None
        raise


def build_unetr(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    img_size: Sequence[int],
    feature_size: int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_heads: int = 12,
    deep_supervision: bool = False,
) -> nn.Module:
    """MONAI UNETR (conv patch embedding, instance norm, residual blocks, no qkv bias).

    The learned position embedding is sized for ``img_size``; inputs must have that size.

    Examples::

        >>> net = build_unetr(2, 3, 8, (384, 640))
        >>> net3d = build_unetr(3, 4, 3, (128, 128, 128))
    """
    from monai.networks.nets import UNETR  # heavy; on use

    size = _check("unetr", spatial_dims, img_size, UNETR_PATCH, deep_supervision)
    if hidden_size < 1 or num_heads < 1 or hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} must be a positive multiple of num_heads {num_heads}")
    if feature_size < 1 or mlp_dim < 1 or in_channels < 1 or out_channels < 1:
        raise ValueError(
            f"feature_size {feature_size}, mlp_dim {mlp_dim}, in_channels {in_channels} and out_channels {out_channels} must be positive"
        )
    return UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=size,
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        proj_type="conv",
        norm_name="instance",
        res_block=True,
        dropout_rate=0.0,
        spatial_dims=spatial_dims,
        qkv_bias=False,
    )


def build_swin_unetr(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    img_size: Sequence[int],
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    deep_supervision: bool = False,
) -> nn.Module:
    """MONAI SwinUNETR v1 (patch 2, window 7, merging down-sampling, instance norm).

    MONAI 1.6 takes no ``img_size``; it is only validated here (each side a multiple of 32,
    not all equal to 32).

    Examples::

        >>> net = build_swin_unetr(2, 3, 8, (384, 640))
        >>> net3d = build_swin_unetr(3, 4, 3, (128, 128, 128))
    """
    from monai.networks.nets import SwinUNETR  # heavy; on use

    size = _check("swin_unetr", spatial_dims, img_size, SWIN_UNETR_DIVISOR, deep_supervision)
    if all(s == SWIN_UNETR_DIVISOR for s in size):
        raise ValueError(
            f"swin_unetr: img_size {size} leaves a single voxel at the 1/32 bottleneck, where instance norm "
            "is undefined in training; make at least one side larger"
        )
    if feature_size < 12 or feature_size % 12:
        raise ValueError(f"feature_size {feature_size} must be a positive multiple of 12")
    if len(depths) != 4 or len(num_heads) != 4 or any(d < 1 for d in depths):
        raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} need 4 positive entries")
    for i, h in enumerate(num_heads):
        if h < 1 or (feature_size * 2**i) % h:
            raise ValueError(f"num_heads {tuple(num_heads)}: stage {i} width {feature_size * 2**i} is not divisible by {h}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must be positive")
    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        feature_size=feature_size,
        norm_name="instance",
        drop_rate=0.0,
        attn_drop_rate=0.0,
        dropout_path_rate=0.0,
        normalize=True,
        use_checkpoint=False,
        spatial_dims=spatial_dims,
        downsample="merging",
        use_v2=False,
    )


@register_model
def unetr(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> nn.Module:
    """UNETR as U-Mamba's baseline: ViT-B/16 (hidden 768, MLP 3072, 12 heads), feature size 16."""
    args = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return build_unetr(**dict(args, **kwargs))


@register_model
def unetr_test(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> nn.Module:
    """Tiny UNETR for tests: hidden 32, MLP 64, 2 heads, feature size 4 (MONAI keeps 12 layers)."""
    args = dict(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size,
        feature_size=4, hidden_size=32, mlp_dim=64, num_heads=2,
    )
    return build_unetr(**dict(args, **kwargs))


@register_model
def swin_unetr(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> nn.Module:
    """SwinUNETR v1 as U-Mamba's baseline: feature size 48, depths (2, 2, 2, 2), heads (3, 6, 12, 24)."""
    args = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return build_swin_unetr(**dict(args, **kwargs))


@register_model
def swin_unetr_test(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> nn.Module:
    """Tiny SwinUNETR for tests: feature size 12, one block per stage."""
    args = dict(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size,
        feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
    )
    return build_swin_unetr(**dict(args, **kwargs))
