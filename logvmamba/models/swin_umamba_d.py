"""Swin-UMamba-dagger backbone with a LoG-VMamba decoder (2D).

Papers: LoG-VMamba, https://arxiv.org/abs/2408.14415 (section 7 of the suite's spec);
Swin-UMamba, https://arxiv.org/abs/2402.03302 (the "dagger" variant with a Mamba
decoder). The encoder is VMamba-Tiny with 4-direction SS2D blocks; the six decoder
blocks use the LoG mixer (or any ablation mixer, or SS2D for the plain
Swin-UMamba-dagger baseline). ``mixer="none"`` is the No-Mamba control: every SS2D
and LoG mixer of encoder and decoder is the identity.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from logvmamba.models.mixer import CONTROL_MIXER, MIXERS, PLACEMENTS, VSSBlock, build_mixer
from logvmamba.models.weights import init_weights
from logvmamba.registry import register_model, validate_img_size

__all__ = ["SwinUMambaD", "load_vmamba_encoder", "logvmamba_swin_umamba", "logvmamba_swin_umamba_test"]


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm(4C) -> Linear(4C, 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Linear(C, scale^2 * C / 2 or C) -> pixel shuffle to `scale`x -> LayerNorm."""

    def __init__(self, dim: int, scale: int, out_dim: int):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(x).permute(0, 3, 1, 2)
        return self.norm(F.pixel_shuffle(x, self.scale).permute(0, 2, 3, 1))


class EncoderStage(nn.Module):
    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], downsample: bool, d_state: int,
                 scan_backend: str = "auto", mixer: str = "ss2d"):
        super().__init__()
        mixer_kwargs = dict(d_state=d_state, scan_backend=scan_backend)
        self.blocks = nn.ModuleList(
            VSSBlock(dim, build_mixer(mixer, dim, 2, (), **mixer_kwargs), drop_path=dp) for dp in drop_path
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class VMambaEncoder(nn.Module):
    """VMamba encoder; returns the channels-last output of every stage.

    ``mixer``: ``ss2d`` (VMamba) or ``none`` (the No-Mamba control, identity mixers).
    """

    def __init__(self, in_channels, dims, depths, drop_path_rate, d_state, scan_backend: str = "auto",
                 mixer: str = "ss2d"):
        super().__init__()
        if mixer not in ("ss2d", CONTROL_MIXER):
            raise ValueError(f"VMamba encoder mixer {mixer!r} is not one of {('ss2d', CONTROL_MIXER)}")
        self.patch_embed = PatchEmbed(in_channels, dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            EncoderStage(dims[i], depths[i], rates[starts[i] : starts[i] + depths[i]], i < len(depths) - 1, d_state,
                         scan_backend, mixer)
            for i in range(len(depths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            out, x = layer(x)
            skips.append(out)
        return skips


class DecoderStage(nn.Module):
    def __init__(self, dim: int, grid: Sequence[int], depth: int, drop_path: Sequence[float], mixers, mixer_kwargs):
        super().__init__()
        self.expand = PatchExpand(2 * dim, 2, dim)
        self.concat_proj = nn.Linear(2 * dim, dim)
        self.blocks = nn.ModuleList(
            VSSBlock(dim, build_mixer(mixers[j], dim, 2, grid, **mixer_kwargs), drop_path=drop_path[j])
            for j in range(depth)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.concat_proj(torch.cat([self.expand(x), skip], dim=-1))
        for block in self.blocks:
            x = block(x)
        return x


class SwinUMambaD(nn.Module):
    """Swin-UMamba-dagger: VMamba-Tiny encoder, Mamba decoder, 2D.

    Args:
        in_channels: image channels.
        out_channels: classes (logits).
        img_size: training patch (H, W), each a multiple of 32; GTX layers are sized
            for it.
        mixer: decoder mixer, ``ss2d`` (Swin-UMamba-dagger) or one of
            ``vanilla|local|global|log`` (LoG-VMamba ablations); ``none`` is the
            No-Mamba control: every mixer, the encoder's SS2D ones too, is the identity.
        placement: where GTX tokens go (``head|center|split|interleaved``).
        dims, depths: encoder widths and blocks per stage (VMamba-Tiny by default).
        decoder_depth: VSS blocks per decoder stage.
        gtx_strides, gtx_squeezes: GTX K and G per decoder stage, from the bottleneck up.
        ltx_squeeze: LTX S.
        drop_path_rate: stochastic depth of encoder and decoder.
        deep_supervision: also return 1x1-conv heads of the decoder stages.
        pretrained: path of an ImageNet VMamba-Tiny checkpoint for the encoder.
        scan_backend: selective-scan backend of every mixer; "auto" follows
            :func:`logvmamba.ops.scan_backend`.

    Examples::

        >>> net = SwinUMambaD(3, 8, (64, 64), mixer="log")
        >>> net(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 8, 64, 64])
        >>> control = SwinUMambaD(3, 8, (64, 64), mixer="none")  # No-Mamba control
        >>> control(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 8, 64, 64])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int],
        mixer: str = "log",
        placement: str = "interleaved",
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 9, 2),
        decoder_depth: int = 2,
        gtx_strides: Sequence[int] = (2, 2, 4),
        gtx_squeezes: Sequence[int] = (2, 1, 1),
        ltx_squeeze: int = 8,
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        deep_supervision: bool = False,
        pretrained: str | os.PathLike | None = None,
        scan_backend: str = "auto",
    ):
        super().__init__()
        img_size = validate_img_size(img_size, 2, 32, type(self).__name__)
        known = ("ss2d",) + MIXERS + (CONTROL_MIXER,)
        if mixer not in known:
            raise ValueError(f"mixer {mixer!r} is not one of {known}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement {placement!r} is not one of {PLACEMENTS}")
        if len(dims) != 4 or len(depths) != 4 or len(gtx_strides) != 3 or len(gtx_squeezes) != 3:
            raise ValueError("SwinUMambaD needs 4 encoder dims/depths and 3 decoder gtx_strides/gtx_squeezes")
        self.deep_supervision = deep_supervision
        self.mixer = mixer
        encoder_mixer = CONTROL_MIXER if mixer == CONTROL_MIXER else "ss2d"
        self.encoder = VMambaEncoder(in_channels, dims, depths, drop_path_rate, d_state, scan_backend, encoder_mixer)
        dec_rates = torch.linspace(drop_path_rate, 0, 3 * decoder_depth).tolist()
        self.decoder = nn.ModuleList()
        for i, dim in enumerate(reversed(dims[:-1])):
            scale = 2 ** (4 - i)  # decoder stage i runs at 1/16, 1/8, 1/4
            grid = (img_size[0] // scale, img_size[1] // scale)
            kwargs = dict(d_state=d_state, scan_backend=scan_backend)
            if mixer in MIXERS:
                kwargs.update(
                    placement=placement,
                    ltx_squeeze=ltx_squeeze,
                    gtx_stride=gtx_strides[i],
                    gtx_squeeze=gtx_squeezes[i],
                    narrow_local=True,
                )
            rates = dec_rates[i * decoder_depth : (i + 1) * decoder_depth]
            self.decoder.append(DecoderStage(dim, grid, decoder_depth, rates, [mixer] * decoder_depth, kwargs))
        self.final_expand = PatchExpand(dims[0], 4, dims[0])
        self.head = nn.Conv2d(dims[0], out_channels, 1)
        self.ds_heads = nn.ModuleList(nn.Conv2d(dim, out_channels, 1) for dim in reversed(dims[:-1]))
        init_weights(self)
        if pretrained is not None:
            load_vmamba_encoder(self.encoder, pretrained)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the VMamba encoder, the part ImageNet weights initialise."""
        return self.encoder.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = self.encoder(x)
        y = skips[-1]
        stage_outputs = []
        for stage, skip in zip(self.decoder, reversed(skips[:-1])):
            y = stage(y, skip)
            stage_outputs.append(y)
        logits = self.head(self.final_expand(y).permute(0, 3, 1, 2))
        if not self.deep_supervision:
            return logits
        aux = [head(out.permute(0, 3, 1, 2)) for head, out in zip(self.ds_heads, stage_outputs)]
        return [logits] + aux[::-1]


def load_vmamba_encoder(encoder: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load an ImageNet VMamba-Tiny checkpoint into ``encoder``.

    The patch embedding is skipped when its input channels differ; classifier keys
    are ignored. Returns the skipped encoder keys.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the checkpoint's keys or shapes do not fit the encoder.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: VMamba checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise ValueError(f"{path}: not a readable torch checkpoint ({err})") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no state dict (expected a dict or a dict with key 'model')")
    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}
    own = encoder.state_dict()
    embed = "patch_embed.proj.weight"
    skipped = []
    if embed in state and state[embed].shape[1] != own[embed].shape[1]:
        # As Swin-UMamba does: a patch embedding for other input channels is trained anew.
        skipped = [k for k in own if k.startswith("patch_embed.")]
    for key, value in own.items():
        if key in skipped:
            continue
        if key not in state:
            raise ValueError(f"{path}: key {key!r} of the encoder is missing from the checkpoint")
        if state[key].shape != value.shape:
            raise ValueError(
                f"{path}: key {key!r} has shape {tuple(state[key].shape)}, the encoder needs {tuple(value.shape)}"
            )
    encoder.load_state_dict({k: state[k] for k in own if k not in skipped}, strict=False)
    return skipped


def _build(mixer_default: str, spatial_dims: int, **kwargs) -> SwinUMambaD:
    if spatial_dims != 2:
        raise ValueError(f"Swin-UMamba models are 2D only, got spatial_dims={spatial_dims}")
    kwargs.setdefault("mixer", mixer_default)
    return SwinUMambaD(**kwargs)


@register_model(spatial_dims=(2,))
def logvmamba_swin_umamba(*, spatial_dims=2, in_channels, out_channels, img_size, **kwargs) -> SwinUMambaD:
    """LoG-VMamba 2D: Swin-UMamba-dagger with LoG mixers in the six decoder blocks."""
    args = dict(in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    return _build("log", spatial_dims, **dict(args, **kwargs))


@register_model(spatial_dims=(2,))
def logvmamba_swin_umamba_test(*, spatial_dims=2, in_channels, out_channels, img_size, **kwargs) -> SwinUMambaD:
    """Tiny LoG-VMamba 2D for tests."""
    args = dict(in_channels=in_channels, out_channels=out_channels, img_size=img_size, dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), decoder_depth=1)
    return _build("log", spatial_dims, **dict(args, **kwargs))
