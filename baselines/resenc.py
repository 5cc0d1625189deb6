"""nnU-Net ResEnc M and L: the residual-encoder U-Net of nnU-Net's ResEnc presets (2D and 3D).

Paper: Isensee et al., "nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical
Image Segmentation", MICCAI 2024, https://arxiv.org/abs/2404.09556; the planners
``nnUNetPlannerResEncM`` / ``nnUNetPlannerResEncL`` of nnU-Net v2 (github.com/MIC-DKFZ/nnUNet)
and the network ``ResidualEncoderUNet`` of github.com/MIC-DKFZ/dynamic-network-architectures,
re-implemented here.

The topology is nnU-Net's for the patch and spacing (:func:`baselines.nnunet.plan_unet` with
``residual_encoder``, through :func:`baselines.nnunet.plan_for_patch`): pooling and kernels by
``get_pool_and_conv_props``, widths ``min(32 * 2 ** i, 512 in 2D / 320 in 3D)``,
``1, 3, 4, 6, 6, ...`` residual blocks per encoder stage and one conv per decoder stage. The
network:

- a stem conv to ``features[0]`` (kernel of the first stage, stride 1);
- per encoder stage the ResNet-D ``BasicBlockD`` of :mod:`baselines.umamba` (conv-norm-act,
  conv-norm, skip avg-pool by the stride then a bias-free 1x1 conv-norm where the width
  changes, add, act), the first block of a stage strided;
- per decoder stage a transposed conv (kernel = stride) to the skip's width, concatenation
  with the skip, ``n_conv_per_stage_decoder`` conv-norm-act, a 1x1 segmentation head;
- conv bias, instance norm (eps 1e-5, affine), LeakyReLU 0.01, no dropout; He init (0.01)
  of every conv and the last norm of every residual branch zeroed
  (``init_last_bn_before_add_to_0``), as ``ResidualEncoderUNet.initialize``;
- deep supervision: one logit map per decoder stage, full resolution first.

Parameter names are those of dynamic-network-architectures' ``named_parameters()``
(``encoder.stem.convs.0.conv.weight``, ``encoder.stages.1.blocks.0.skip.1.conv.weight``,
``decoder.transpconvs.0.weight``, ...), so an nnU-Net ResEnc checkpoint loads after dropping
its duplicate ``all_modules`` and ``decoder.encoder`` entries.

M and L differ only in what their planners choose for a dataset (a patch and batch for 8 GB
or 24 GB, :data:`logvmamba.planning.PLANNERS`); for one patch they build the same network.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn

from baselines.nnunet import plan_for_patch
from baselines.umamba import BasicBlockD, ConvNormAct
from logvmamba.models.factories import Conv
from logvmamba.registry import register_model

__all__ = [
    "ResidualEncoderUNet", "nnunet_resenc_l", "nnunet_resenc_l_test", "nnunet_resenc_m", "nnunet_resenc_m_test",
]

_HE_INIT = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _wrapped(name: str, *modules: nn.Module) -> nn.Sequential:
    """``modules`` in sequence under one child ``name`` (dynamic-network-architectures' ``convs`` / ``blocks``)."""
    return nn.Sequential(OrderedDict([(name, nn.Sequential(*modules))]))


class ResidualEncoderUNet(nn.Module):
    """nnU-Net's ``ResidualEncoderUNet`` with the topology its ResEnc planners give ``img_size``.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels and logits.
        img_size: the training patch; each side must be a multiple of the planned total stride.
        spacing: voxel spacing of the configuration for the plan (isotropic 1 when None).
        deep_supervision: return ``n_stages - 1`` logit maps, full resolution first.
        base_features, max_features: widths ``min(base * 2 ** i, max)`` (nnU-Net: 32, and 512
            in 2D / 320 in 3D).

    The plan is kept as ``net.plan``.

    Examples::

        >>> net = ResidualEncoderUNet(2, 3, 8, (64, 96))
        >>> net.plan.n_blocks_per_stage
        (1, 3, 4, 6, 6)
        >>> net(torch.randn(1, 3, 64, 96)).shape
        torch.Size([1, 8, 64, 96])
        >>> net3d = ResidualEncoderUNet(3, 4, 3, (32, 32, 32), deep_supervision=True)
        >>> [tuple(o.shape[2:]) for o in net3d(torch.randn(1, 4, 32, 32, 32))]
        [(32, 32, 32), (16, 16, 16), (8, 8, 8)]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int],
        spacing: Sequence[float] | None = None,
        deep_supervision: bool = False,
        base_features: int = 32,
        max_features: int | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        if not all(isinstance(c, int) and c >= 1 for c in (in_channels, out_channels)):
            raise ValueError(
                f"{name}: in_channels {in_channels!r} and out_channels {out_channels!r} must be positive ints")
        # plan_unet checks spatial_dims, img_size and spacing
        plan = plan_for_patch(name, img_size, spacing, spatial_dims, base_features=base_features,
                              max_features=max_features, residual_encoder=True)
        self.plan, self.deep_supervision = plan, deep_supervision
        dims, features, kernels, strides = spatial_dims, plan.features, plan.kernel_sizes, plan.strides
        n = plan.n_stages

        stages, width = [], features[0]
        for s in range(n):
            blocks = [BasicBlockD(dims, width if b == 0 else features[s], features[s], kernels[s],
                                  strides[s] if b == 0 else 1) for b in range(plan.n_blocks_per_stage[s])]
            stages.append(_wrapped("blocks", *blocks))
            width = features[s]
        self.encoder = nn.ModuleDict({
            "stem": _wrapped("convs", ConvNormAct(dims, in_channels, features[0], kernels[0])),
            "stages": nn.Sequential(*stages),
        })

        conv, tconv = Conv[Conv.CONV, dims], Conv[Conv.CONVTRANS, dims]
        decoder_stages, upsample, heads = [], [], []
        for j, convs in enumerate(plan.n_conv_per_stage_decoder):  # from the bottleneck up
            below, skip = features[n - 1 - j], features[n - 2 - j]
            upsample.append(tconv(below, skip, strides[n - 1 - j], stride=strides[n - 1 - j], bias=True))
            layers = [ConvNormAct(dims, 2 * skip if c == 0 else skip, skip, kernels[n - 2 - j]) for c in range(convs)]
            decoder_stages.append(_wrapped("convs", *layers))
            heads.append(conv(skip, out_channels, 1))
        self.decoder = nn.ModuleDict({
            "stages": nn.ModuleList(decoder_stages),
            "transpconvs": nn.ModuleList(upsample),
            "seg_layers": nn.ModuleList(heads),
        })

        for m in self.modules():
            if isinstance(m, _HE_INIT):  # InitWeights_He(1e-2)
                nn.init.kaiming_normal_(m.weight, a=1e-2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, BasicBlockD):  # init_last_bn_before_add_to_0
                nn.init.zeros_(m.conv2.norm.weight)
                nn.init.zeros_(m.conv2.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.encoder["stem"](x)
        skips = []
        for stage in self.encoder["stages"]:
            x = stage(x)
            skips.append(x)
        decoder = self.decoder
        outputs, last = [], len(decoder["stages"]) - 1
        for j, (up, stage, head) in enumerate(zip(decoder["transpconvs"], decoder["stages"], decoder["seg_layers"])):
            x = stage(torch.cat((up(x), skips[-(j + 2)]), dim=1))
            if self.deep_supervision or j == last:
                outputs.append(head(x))
        return outputs[::-1] if self.deep_supervision else outputs[-1]


# ----------------------------------------------------------------------------- registered models

_TEST_ARGS = dict(base_features=8, max_features=32)


@register_model
def nnunet_resenc_m(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> ResidualEncoderUNet:
    """nnU-Net ResEnc M: the ``ResidualEncoderUNet`` planned for ``img_size`` and ``spacing`` (8 GB preset)."""
    args = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return ResidualEncoderUNet(**dict(args, **kwargs))


@register_model
def nnunet_resenc_l(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> ResidualEncoderUNet:
    """nnU-Net ResEnc L: the same network for a patch; its planner picks larger patches (24 GB preset)."""
    args = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return ResidualEncoderUNet(**dict(args, **kwargs))


@register_model
def nnunet_resenc_m_test(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> ResidualEncoderUNet:
    """Tiny ResEnc M for tests: the same planner with widths 8 to 32."""
    args = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size,
                **_TEST_ARGS)
    return ResidualEncoderUNet(**dict(args, **kwargs))


@register_model
def nnunet_resenc_l_test(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> ResidualEncoderUNet:
    """Tiny ResEnc L for tests: the same planner with widths 8 to 32."""
    args = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size,
                **_TEST_ARGS)
    return ResidualEncoderUNet(**dict(args, **kwargs))
