"""nnU-Net v2's plain U-Net, with the topology its planner derives from the patch.

Papers: Isensee et al., "nnU-Net: a self-configuring method for deep learning-based
biomedical image segmentation", Nature Methods 2021, https://doi.org/10.1038/s41592-020-01008-z;
nnU-Net v2 and the network code, github.com/MIC-DKFZ/nnUNet and
github.com/MIC-DKFZ/dynamic-network-architectures.

:func:`plan_unet` re-implements the network-topology rules of nnU-Net v2's default
``ExperimentPlanner`` (``get_plans_for_configuration`` with
``get_pool_and_conv_props(spacing, patch, 4, 999999)``) for a given patch and spacing:

- pool an axis while its map is at least ``2 * min_feature_map_size`` and its spacing is
  within a factor 2 of the finest spacing among the poolable axes; when a single axis
  is left it is pooled only while its map is at least ``3 * min_feature_map_size``;
- an axis gets 3-wide kernels once its spacing is within a factor 2 of the finest
  spacing (1 before that), the bottleneck always 3; the first stage has stride 1;
- features ``min(32 * 2 ** i, 512 in 2D / 320 in 3D)``; two convs per stage in the
  encoder and in each decoder stage; conv bias, instance norm (eps 1e-5, affine),
  LeakyReLU (0.01, inplace), no dropout, He init (0.01), deep supervision.

With ``residual_encoder`` it plans the ``ResidualEncoderUNet`` of nnU-Net's ResEnc presets
(Isensee et al., "nnU-Net Revisited", MICCAI 2024, https://arxiv.org/abs/2404.09556;
``ResEncUNetPlanner`` and ``nnUNetPlannerResEncM`` / ``L``): the same pooling, kernels and
widths, ``RESENC_BLOCKS_PER_STAGE[:n_stages]`` residual blocks per encoder stage and one conv
per decoder stage (:mod:`baselines.resenc` builds it).

The planner's search for the patch itself (median image shape, GPU-memory target) is
not repeated: the patch is an input, as in a plans file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch.nn as nn

from logvmamba.registry import register_model

__all__ = [
    "RESENC_BLOCKS_PER_STAGE", "RESENC_CONVS_PER_DECODER_STAGE", "UNetPlan", "build_plain_unet",
    "get_pool_and_conv_props", "nnunet", "nnunet_test", "plan_for_patch", "plan_unet", "stage_layout",
]

#: residual blocks per encoder stage of nnU-Net's ResEnc planners (``UNet_blocks_per_stage_encoder``
#: of ``ResEncUNetPlanner``, nnunetv2 2.8.1), cut to the number of stages
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
#: convs per decoder stage of the ResEnc planners (``UNet_blocks_per_stage_decoder``)
RESENC_CONVS_PER_DECODER_STAGE = 1


@dataclass(frozen=True)
class UNetPlan:
    """A U-Net topology as nnU-Net writes it into ``plans['configurations'][c]['architecture']``."""

    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    features: tuple[int, ...]
    n_conv_per_stage: tuple[int, ...]
    n_conv_per_stage_decoder: tuple[int, ...]
    #: residual blocks per encoder stage of a ``ResidualEncoderUNet``; empty for a ``PlainConvUNet``
    #: (whose encoder has ``n_conv_per_stage`` plain convs, empty in turn for the residual one)
    n_blocks_per_stage: tuple[int, ...] = ()

    @property
    def n_stages(self) -> int:
        return len(self.strides)

    @property
    def divisor(self) -> tuple[int, ...]:
        """What every side of an input must be a multiple of (the total stride per axis)."""
        out = [1] * len(self.patch_size)
        for stride in self.strides:
            out = [o * s for o, s in zip(out, stride)]
        return tuple(out)


def get_pool_and_conv_props(
    spacing: Sequence[float], patch_size: Sequence[int], min_feature_map_size: int = 4, max_numpool: int = 999999
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...], tuple[int, ...], tuple[int, ...]]:
    """nnU-Net's pooling / kernel rules for one patch.

    Returns:
        (pools per axis, strides per stage, kernel sizes per stage, the patch padded to a
        multiple of the total stride, that total stride).
    """
    dim = len(spacing)
    spacing_now = [float(s) for s in spacing]
    size_now = [float(s) for s in patch_size]
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [i for i in range(dim) if size_now[i] >= 2 * min_feature_map_size]
        if not valid:
            break
        finest = min(spacing_now[i] for i in valid)
        valid = [i for i in valid if spacing_now[i] / finest < 2 and pools[i] < max_numpool]
        if len(valid) == 1 and size_now[valid[0]] < 3 * min_feature_map_size:
            break
        if not valid:
            break
        for d in range(dim):
            if kernel[d] != 3 and spacing_now[d] / min(spacing_now) < 2:
                kernel[d] = 3
        stride = tuple(2 if i in valid else 1 for i in range(dim))
        for i in valid:
            pools[i] += 1
            spacing_now[i] *= 2
            size_now[i] = float(-(-size_now[i] // 2))
        strides.append(stride)
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)  # bottleneck
    divisor = tuple(2**p for p in pools)
    padded = tuple(int(s) if int(s) % d == 0 else (int(s) // d + 1) * d for s, d in zip(patch_size, divisor))
    return tuple(pools), tuple(strides), tuple(kernels), padded, divisor


def stage_layout(
    n_stages: int,
    spatial_dims: int,
    *,
    base_features: int = 32,
    max_features: int | None = None,
    n_conv_per_stage: int = 2,
    residual_encoder: bool = False,
) -> dict[str, tuple[int, ...]]:
    """Widths and convs (or residual blocks) per stage of an nnU-Net U-Net with ``n_stages`` stages.

    Returns:
        :class:`UNetPlan`'s ``features``, ``n_conv_per_stage``, ``n_conv_per_stage_decoder`` and
        ``n_blocks_per_stage``: ``min(base * 2 ** i, max)`` features (``max`` 512 in 2D, 320 in
        3D by default); ``n_conv_per_stage`` convs per encoder and decoder stage, or with
        ``residual_encoder`` the ResEnc planners' blocks and one conv per decoder stage.

    Examples::

        >>> stage_layout(5, 3, residual_encoder=True)["n_blocks_per_stage"]
        (1, 3, 4, 6, 6)
    """
    max_features = (512 if spatial_dims == 2 else 320) if max_features is None else max_features
    if max_features < base_features:
        raise ValueError(f"max_features {max_features} is below base_features {base_features}")
    if residual_encoder and n_stages > len(RESENC_BLOCKS_PER_STAGE):
        raise ValueError(f"{n_stages} stages: the ResEnc planners set blocks for at most "
                         f"{len(RESENC_BLOCKS_PER_STAGE)}")
    decoder_convs = RESENC_CONVS_PER_DECODER_STAGE if residual_encoder else n_conv_per_stage
    return {
        "features": tuple(min(max_features, base_features * 2**i) for i in range(n_stages)),
        "n_conv_per_stage": () if residual_encoder else (n_conv_per_stage,) * n_stages,
        "n_conv_per_stage_decoder": (decoder_convs,) * (n_stages - 1),
        "n_blocks_per_stage": RESENC_BLOCKS_PER_STAGE[:n_stages] if residual_encoder else (),
    }


def plan_unet(
    img_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    spatial_dims: int | None = None,
    *,
    base_features: int = 32,
    max_features: int | None = None,
    n_conv_per_stage: int = 2,
    min_feature_map_size: int = 4,
    residual_encoder: bool = False,
) -> UNetPlan:
    """The U-Net nnU-Net v2 plans for a patch (2D or 3d_fullres configuration).

    Args:
        img_size: the patch, per axis in the same order as ``spacing``.
        spacing: voxel spacing of the configuration (default isotropic 1).
        spatial_dims: 2 or 3; default ``len(img_size)``.
        base_features, max_features: widths ``min(base * 2 ** i, max)``; ``max``
            defaults to nnU-Net's 512 (2D) / 320 (3D).
        n_conv_per_stage: convs per encoder stage and per decoder stage.
        min_feature_map_size: smallest bottleneck edge (nnU-Net: 4).
        residual_encoder: plan the ResEnc presets' ``ResidualEncoderUNet`` (see :func:`stage_layout`).

    Examples::

        >>> plan_unet((384, 640)).features
        (32, 64, 128, 256, 512, 512, 512)
        >>> plan_unet((20, 256, 224), spacing=(5.0, 1.5625, 1.5625)).strides[:3]
        ((1, 1, 1), (1, 2, 2), (2, 2, 2))
        >>> plan_unet((128, 128, 128), residual_encoder=True).n_blocks_per_stage
        (1, 3, 4, 6, 6, 6)
    """
    size = tuple(int(s) for s in img_size)
    spatial_dims = len(size) if spatial_dims is None else spatial_dims
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if len(size) != spatial_dims or any(s <= 0 for s in size):
        raise ValueError(f"img_size {tuple(img_size)} must have {spatial_dims} positive sizes")
    spacing = (1.0,) * spatial_dims if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != spatial_dims or any(s <= 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must have {spatial_dims} positive entries")
    if base_features < 1 or n_conv_per_stage < 1 or min_feature_map_size < 1:
        raise ValueError(
            f"base_features {base_features}, n_conv_per_stage {n_conv_per_stage} and "
            f"min_feature_map_size {min_feature_map_size} must be positive"
        )
    _, strides, kernels, padded, _ = get_pool_and_conv_props(spacing, size, min_feature_map_size)
    layout = stage_layout(len(strides), spatial_dims, base_features=base_features, max_features=max_features,
                          n_conv_per_stage=n_conv_per_stage, residual_encoder=residual_encoder)
    return UNetPlan(patch_size=padded, spacing=spacing, kernel_sizes=kernels, strides=strides, **layout)


def plan_for_patch(model: str, img_size: Sequence[int], spacing: Sequence[float] | None = None,
                   spatial_dims: int | None = None, **plan_kwargs) -> UNetPlan:
    """:func:`plan_unet` for the patch a network trains with, which must already be planned (a multiple
    of the total stride); otherwise the error, naming ``model``, gives the patch nnU-Net pads it to."""
    plan = plan_unet(img_size, spacing, spatial_dims, **plan_kwargs)
    if tuple(int(s) for s in img_size) != plan.patch_size:
        raise ValueError(
            f"{model}: img_size {tuple(img_size)} is not a multiple of the planned total stride {plan.divisor}; "
            f"nnU-Net's planner pads it to {plan.patch_size}"
        )
    return plan


def build_plain_unet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    img_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    deep_supervision: bool = False,
    **plan_kwargs,
) -> nn.Module:
    """dynamic-network-architectures' ``PlainConvUNet`` built from :func:`plan_unet`.

    The patch must already be what nnU-Net trains with (a multiple of the planned total
    stride); otherwise the error names the padded patch nnU-Net's planner would use.
    The plan is kept as ``net.plan``. With ``deep_supervision`` the network returns
    ``n_stages - 1`` logits, full resolution first; without it the lower-resolution
    segmentation heads exist but are unused (as in nnU-Net).

    Examples::

        >>> net = build_plain_unet(2, 3, 8, (384, 640))
        >>> net.plan.n_stages
        7
        >>> net3d = build_plain_unet(3, 4, 3, (128, 128, 128), deep_supervision=True)
        >>> [o.shape[-1] for o in net3d(torch.randn(1, 4, 128, 128, 128))]  # doctest: +SKIP
        [128, 64, 32, 16, 8]
    """
    from dynamic_network_architectures.architectures.unet import PlainConvUNet  # heavy; on use
    from logvmamba.models.factories import Conv, Norm

    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must be positive")
    plan = plan_for_patch("nnunet", img_size, spacing, spatial_dims, **plan_kwargs)
    net = PlainConvUNet(
        input_channels=in_channels,
        n_stages=plan.n_stages,
        features_per_stage=list(plan.features),
        conv_op=Conv[Conv.CONV, spatial_dims],
        kernel_sizes=[list(k) for k in plan.kernel_sizes],
        strides=[list(s) for s in plan.strides],
        n_conv_per_stage=list(plan.n_conv_per_stage),
        num_classes=out_channels,
        n_conv_per_stage_decoder=list(plan.n_conv_per_stage_decoder),
        conv_bias=True,
        norm_op=Norm[Norm.INSTANCE, spatial_dims],
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )
    net.apply(net.initialize)
    net.plan = plan
    return net


@register_model
def nnunet(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> nn.Module:
    """nnU-Net v2 2D / 3d_fullres plain U-Net planned for ``img_size`` and ``spacing`` (default 1)."""
    args = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return build_plain_unet(**dict(args, **kwargs))


@register_model
def nnunet_test(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> nn.Module:
    """Tiny nnU-Net for tests: the same planner with widths 8 to 32."""
    args = dict(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size,
        base_features=8, max_features=32,
    )
    return build_plain_unet(**dict(args, **kwargs))
