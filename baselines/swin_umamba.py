"""Swin-UMamba and Swin-UMamba-dagger: ImageNet-pretrainable VMamba-Tiny U-Nets (2D).

Paper: Liu et al., "Swin-UMamba: Mamba-based UNet with ImageNet-based pretraining",
https://arxiv.org/abs/2402.03302 (GitHub JiarunLiu/Swin-UMamba, ``SwinUMamba.py`` and
``SwinUMambaD.py``).

- ``swin_umamba``: a 7x7 stride-2 conv stem (-> 48 channels, instance norm, no
  activation) feeds a VMamba-Tiny encoder with a 2x2 patch embedding (96 channels,
  depths 2-2-9-2, stochastic depth 0.2). MONAI UNETR-style residual conv blocks
  (``UnetrBasicBlock``) turn the input (full resolution), the stem output (1/2) and
  the first three VMamba stages (1/4, 1/8, 1/16) into skips of 48, 96, 192, 384 and
  768 channels; the last VMamba stage (768 channels, 1/32) is the bottleneck. Five
  ``UnetrUpBlock`` (transposed conv 2x2, concat, residual block) go back to full
  resolution, one more ``UnetrBasicBlock`` follows, and ``UnetOutBlock`` 1x1 heads
  read the full-resolution, 1/2, 1/4 and 1/8 decoder outputs (the last three only
  with deep supervision).
- ``swin_umamba_d``: :class:`logvmamba.models.swin_umamba_d.SwinUMambaD` with the
  original 4-direction SS2D mixer in its Mamba decoder (``mixer="ss2d"``).

Both load ImageNet VMamba-Tiny weights from a local file with ``pretrained=``
(:func:`logvmamba.models.swin_umamba_d.load_vmamba_encoder`). Swin-UMamba's encoder
sees 48 stem channels, so its patch embedding is trained from scratch (the release's
loader skips the checkpoint's patch embedding and final norm too).
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

from logvmamba.models.swin_umamba_d import PatchEmbed, SwinUMambaD, VMambaEncoder, load_vmamba_encoder
from logvmamba.registry import register_model, validate_img_size

__all__ = ["SwinUMamba", "swin_umamba", "swin_umamba_d", "swin_umamba_d_test", "swin_umamba_test"]


def _vmamba_init(module: nn.Module) -> None:
    # VMamba's encoder init: trunc-normal(0.02) Linears with zero bias, LayerNorm 1/0;
    # convs keep PyTorch's defaults (the release leaves them alone); the dt
    # projections are Parameters, not Linears, so they keep Mamba's init.
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SwinUMamba(nn.Module):
    """Swin-UMamba: conv stem + VMamba encoder (patch 2) + UNETR-style conv decoder, 2D.

    Args:
        in_channels: image channels.
        out_channels: classes (logits).
        img_size: patch (H, W), each a multiple of 32 (stem /2, patch /2, three merges).
        stem_channels: width of the 7x7 stem and of the full-resolution skip.
        dims, depths: VMamba widths and blocks per stage (VMamba-Tiny by default); the
            decoder's widths follow ``(stem_channels, *dims)``.
        d_state: SSM state size of the SS2D blocks.
        drop_path_rate: stochastic depth of the encoder (the release keeps VMamba's 0.2).
        norm_name: MONAI norm of the conv blocks.
        deep_supervision: also return the 1/2, 1/4 and 1/8 heads (full resolution first).
        pretrained: path of an ImageNet VMamba-Tiny checkpoint for the encoder.
        scan_backend: selective-scan backend of the SS2D blocks; "auto" follows
            :func:`logvmamba.ops.scan_backend`.

    Examples::

        >>> net = SwinUMamba(3, 8, (64, 64), dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), stem_channels=8)
        >>> net(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 8, 64, 64])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int],
        stem_channels: int = 48,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 9, 2),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        norm_name: str = "instance",
        deep_supervision: bool = False,
        pretrained: str | os.PathLike | None = None,
        scan_backend: str = "auto",
    ):
        super().__init__()
        name = type(self).__name__
        validate_img_size(img_size, 2, 32, name)
        for label, count in (("in_channels", in_channels), ("out_channels", out_channels), ("stem_channels", stem_channels)):
            if not isinstance(count, int) or count < 1:
                raise ValueError(f"{name}: {label} must be a positive int, got {count!r}")
        if len(dims) != 4 or len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"{name}: needs 4 encoder dims and 4 depths >= 1, got dims {tuple(dims)}, depths {tuple(depths)}")
        self.deep_supervision = deep_supervision
        feat = (stem_channels, *dims)  # widths at 1, 1/2, 1/4, 1/8, 1/16; dims[-1] is also the bottleneck width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3),
            nn.InstanceNorm2d(stem_channels, eps=1e-5, affine=True),
        )
        self.vssm_encoder = VMambaEncoder(stem_channels, tuple(dims), tuple(depths), drop_path_rate, d_state, scan_backend)
        self.vssm_encoder.patch_embed = PatchEmbed(stem_channels, dims[0], patch=2)
        _vmamba_init(self.vssm_encoder)

        def basic(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(2, cin, cout, kernel_size=3, stride=1, norm_name=norm_name, res_block=True)

        def up(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(2, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name, res_block=True)

        # skips: input (1), stem (1/2), VMamba stages 1-3 (1/4, 1/8, 1/16)
        self.encoders = nn.ModuleList([basic(in_channels, feat[0])] + [basic(feat[i - 1], feat[i]) for i in range(1, 5)])
        # from the bottleneck (dims[-1] at 1/32) up to full resolution
        self.decoders = nn.ModuleList(
            [up(dims[-1], feat[4])] + [up(feat[i], feat[i - 1]) for i in range(4, 0, -1)]
        )
        self.final_block = basic(feat[0], feat[0])
        self.out_layers = nn.ModuleList(UnetOutBlock(2, feat[i], out_channels) for i in range(4))
        if pretrained is not None:
            load_vmamba_encoder(self.vssm_encoder, pretrained)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the VMamba encoder, the part ImageNet weights initialise."""
        return self.vssm_encoder.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        stem = self.stem(x)
        stages = [s.permute(0, 3, 1, 2) for s in self.vssm_encoder(stem)]  # 1/4 .. 1/32, channels first
        inputs = [x, stem, *stages[:3]]
        skips = [enc(inp) for enc, inp in zip(self.encoders, inputs)]
        y = stages[3]
        decoded = []
        for dec, skip in zip(self.decoders, reversed(skips)):
            y = dec(y, skip)
            decoded.append(y)  # 1/16, 1/8, 1/4, 1/2, 1
        out = self.out_layers[0](self.final_block(y))
        if not self.deep_supervision:
            return out
        # heads on the 1/2, 1/4 and 1/8 decoder outputs, as the release's dec1, dec2, dec3
        return [out] + [head(feature) for head, feature in zip(self.out_layers[1:], decoded[-2:-5:-1])]


def _build_swin_umamba(spatial_dims: int, **kwargs) -> SwinUMamba:
    if spatial_dims != 2:
        raise ValueError(f"Swin-UMamba is 2D only, got spatial_dims={spatial_dims!r}")
    return SwinUMamba(**kwargs)


def _build_swin_umamba_d(spatial_dims: int, **kwargs) -> SwinUMambaD:
    if spatial_dims != 2:
        raise ValueError(f"Swin-UMamba-dagger is 2D only, got spatial_dims={spatial_dims!r}")
    mixer = kwargs.setdefault("mixer", "ss2d")
    if mixer != "ss2d":
        raise ValueError(f"swin_umamba_d uses the ss2d decoder mixer, got mixer={mixer!r} (LoG-VMamba is logvmamba_swin_umamba)")
    return SwinUMambaD(**kwargs)


_TINY = dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), d_state=4)


@register_model(spatial_dims=(2,))
def swin_umamba(*, spatial_dims=2, in_channels, out_channels, img_size, **kwargs) -> SwinUMamba:
    """Swin-UMamba: VMamba-Tiny encoder behind a 7x7/2 stem, UNETR-style conv decoder."""
    args = dict(in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return _build_swin_umamba(spatial_dims, **dict(args, **kwargs))


@register_model(spatial_dims=(2,))
def swin_umamba_test(*, spatial_dims=2, in_channels, out_channels, img_size, **kwargs) -> SwinUMamba:
    """Tiny Swin-UMamba for tests."""
    args = dict(in_channels=in_channels, out_channels=out_channels, img_size=img_size, stem_channels=8, **_TINY)
    return _build_swin_umamba(spatial_dims, **dict(args, **kwargs))


@register_model(spatial_dims=(2,))
def swin_umamba_d(*, spatial_dims=2, in_channels, out_channels, img_size, **kwargs) -> SwinUMambaD:
    """Swin-UMamba-dagger: VMamba-Tiny encoder (patch 4) and SS2D Mamba decoder."""
    args = dict(in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return _build_swin_umamba_d(spatial_dims, **dict(args, **kwargs))


@register_model(spatial_dims=(2,))
def swin_umamba_d_test(*, spatial_dims=2, in_channels, out_channels, img_size, **kwargs) -> SwinUMambaD:
    """Tiny Swin-UMamba-dagger for tests."""
    args = dict(in_channels=in_channels, out_channels=out_channels, img_size=img_size, decoder_depth=1, **_TINY)
    return _build_swin_umamba_d(spatial_dims, **dict(args, **kwargs))
