"""LoG-VMamba under one name: the 2D or the 3D network of the paper, by ``spatial_dims``.

Paper: Dang, Nguyen and Tiulpin, "LoG-VMamba: Local-Global Vision Mamba for Medical
Image Segmentation", https://arxiv.org/abs/2408.14415. In 2D it is
:func:`~logvmamba.models.swin_umamba_d.logvmamba_swin_umamba` (Swin-UMamba-dagger
with LoG mixers in the decoder, spec section 7), in 3D
:func:`~logvmamba.models.umamba_enc.logvmamba_umamba_enc` (U-Mamba-Enc with LoG
layers, spec section 8); both family names stay registered.
"""

from __future__ import annotations

import torch.nn as nn

from logvmamba.models.swin_umamba_d import logvmamba_swin_umamba, logvmamba_swin_umamba_test
from logvmamba.models.umamba_enc import logvmamba_umamba_enc, logvmamba_umamba_enc_test
from logvmamba.registry import register_model

__all__ = ["logvmamba", "logvmamba_test"]

_BY_DIMS = {2: logvmamba_swin_umamba, 3: logvmamba_umamba_enc}
_TEST_BY_DIMS = {2: logvmamba_swin_umamba_test, 3: logvmamba_umamba_enc_test}


def _pick(table: dict, name: str, spatial_dims: int):
    if spatial_dims not in table:
        raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return table[spatial_dims]


@register_model
def logvmamba(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> nn.Module:
    """LoG-VMamba: the Swin-UMamba-dagger network in 2D, the U-Mamba-Enc network in 3D.

    Examples::

        >>> net2d = logvmamba(spatial_dims=2, in_channels=3, out_channels=8, img_size=(384, 640))
        >>> net3d = logvmamba(spatial_dims=3, in_channels=4, out_channels=3, img_size=(128, 128, 128))
    """
    build = _pick(_BY_DIMS, "logvmamba", spatial_dims)
    return build(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size, **kwargs)


@register_model
def logvmamba_test(*, spatial_dims, in_channels, out_channels, img_size, **kwargs) -> nn.Module:
    """Tiny LoG-VMamba for tests (the ``_test`` variant of the 2D or 3D network)."""
    build = _pick(_TEST_BY_DIMS, "logvmamba_test", spatial_dims)
    return build(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=img_size, **kwargs)
