"""One case read and normalised for inference and evaluation, without MONAI.

:func:`load_case` gives the image as training sees it (the same normalisation
functions, which :mod:`logvmamba.data.loading` wraps as transforms for its
pipelines), the stored label and, for region datasets, the region masks. Prediction
jobs read cases only through here, so they never import MONAI (whose package import
loads all its submodules: seconds per job).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import torch

from logvmamba.data.labels import label_to_regions
from logvmamba.data.raw import CaseFiles, RawDataset, open_dataset

__all__ = [
    "LoadedCase",
    "load_case",
    "normalize",
    "zscore",
    "normalize_channels",
    "resolved_normalization",
    "resampled_size",
    "resample",
]


# ----------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------

def zscore(image: torch.Tensor, nonzero: bool = False) -> torch.Tensor:
    """Each channel to mean 0 and standard deviation 1 (population), as a new float32 tensor.

    ``nonzero``: statistics over the channel's nonzero voxels, zeros stay zero (a
    skull-stripped brain). A channel whose standard deviation is 0 is only shifted; one
    without a nonzero voxel is left as it is. The same result as MONAI's
    ``NormalizeIntensity(nonzero=..., channel_wise=True)``.
    """
    out = torch.as_tensor(image).to(torch.float32, copy=True)
    for x in out:
        mask = x != 0 if nonzero else None
        values = x[mask] if nonzero else x
        if nonzero and not mask.any():
            continue
        mean = values.mean().item()
        std = values.std(unbiased=False).item() or 1.0
        if nonzero:
            x[mask] = (values - mean) / std
        else:
            x.copy_((x - mean) / std)
    return out


def normalize_channels(image: torch.Tensor, specs: Sequence[dict]) -> torch.Tensor:
    """Per-channel normalisation by nnU-Net v2's schemes
    (see :func:`logvmamba.data.fingerprint.channel_normalization`)."""
    image = torch.as_tensor(image, dtype=torch.float32).clone()
    if image.shape[0] != len(specs):
        raise ValueError(f"{image.shape[0]} image channels, the normalisation has {len(specs)}")
    for c, spec in enumerate(specs):
        x = image[c]
        scheme = spec["scheme"]
        if scheme == "ct":
            x = (x.clamp(spec["lower"], spec["upper"]) - spec["mean"]) / max(spec["std"], 1e-8)
        elif scheme == "zscore":
            mask = x != 0 if spec.get("nonzero") else torch.ones_like(x, dtype=torch.bool)
            values = x[mask]
            if values.numel():
                mean, std = values.mean(), values.std(unbiased=False)
                x = torch.where(mask, (x - mean) / max(float(std), 1e-8), torch.zeros_like(x))
        elif scheme == "rescale_to_0_1":
            x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
        elif scheme == "rgb_to_0_1":
            if float(x.max()) > 255:  # nnU-Net refuses too: clamping would flatten a 16-bit image
                raise ValueError(f"channel {c}: rgb_to_0_1 needs 8-bit values (0-255), got up to "
                                 f"{float(x.max()):.0f}; a 16-bit image needs zscore")
            x = (x / 255.0).clamp(0, 1)
        elif scheme != "none":
            raise ValueError(f"unknown normalisation scheme {scheme!r}")
        image[c] = x
    return image


def normalize(image: torch.Tensor, normalization) -> torch.Tensor:
    """``image`` (C, *spatial) normalised as training does: ``"zscore"``, ``"zscore_nonzero"``
    or per-channel dicts (:func:`normalize_channels`)."""
    if isinstance(normalization, (list, tuple)):
        return normalize_channels(image, normalization)
    if normalization not in ("zscore", "zscore_nonzero"):
        raise ValueError(f"normalization must be 'zscore', 'zscore_nonzero' or per-channel dicts, got {normalization!r}")
    return zscore(image, nonzero=normalization == "zscore_nonzero")


def resolved_normalization(ds: RawDataset, normalization=None):
    """The normalisation training applies and a checkpoint stores: ``"zscore"``,
    ``"zscore_nonzero"`` or per-channel dicts (``"nnunet"`` resolved from the fingerprint)."""
    info = ds.info
    normalization = normalization or (info.normalization if info else "zscore")
    if normalization == "nnunet":
        from logvmamba.data.fingerprint import channel_normalization

        return channel_normalization(ds)
    return normalization


# ----------------------------------------------------------------------------
# resampling
# ----------------------------------------------------------------------------

def resampled_size(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    """nnU-Net's new shape for a resampling: ``round(spacing / target * size)`` per axis."""
    return [max(1, int(round(float(s) / float(t) * int(n)))) for s, t, n in zip(spacing, target, shape)]


def resample(x: torch.Tensor, size: Sequence[int], label: bool = False) -> torch.Tensor:
    """``(C, *spatial)`` resampled to ``size``: linear for images and logits, nearest for labels."""
    if list(x.shape[1:]) == [int(v) for v in size]:
        return x
    import monai.transforms as mt  # only datasets resampled to a planned spacing get here

    mode = "nearest" if label else ("bilinear" if x.ndim == 3 else "trilinear")
    resize = mt.Resize([int(v) for v in size], mode=mode, align_corners=None if label else False)
    return torch.as_tensor(resize(x.float()), dtype=torch.float32)


# ----------------------------------------------------------------------------
# one case
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class LoadedCase:
    """One case prepared for inference / evaluation.

    Attributes:
        case_id: case identifier.
        image: ``(C, *spatial)`` float32 tensor, normalised as in training.
        label: ``spatial`` int64 label map as stored, or None.
        regions: ``(R, *spatial)`` bool region masks (region datasets), else None.
        spacing: voxel size per spatial axis (png: 1.0).
        affine: NIfTI affine (4x4) or None.
        instances: instance mask (``int32``, 0 background) when the dataset
            has one for this case, else None.
        files: the case's files.
        header: nibabel header of the first channel file (png: None); write a
            prediction with ``save_image_file(path, label, like=case)``.
    """

    case_id: str
    image: torch.Tensor
    label: torch.Tensor | None
    regions: torch.Tensor | None
    spacing: tuple[float, ...]
    affine: np.ndarray | None
    instances: np.ndarray | None
    files: CaseFiles
    header: object | None = None


def load_case(dataset: RawDataset | str | os.PathLike, case_id: str, subset: str | None = None,
              normalization: str | None = None, root: str | os.PathLike | None = None) -> LoadedCase:
    """Read and normalise one case for inference (what the validation transforms of
    :func:`logvmamba.data.loading.make_transforms` give).

    Args:
        dataset: a :class:`RawDataset`, a dataset folder or a name under ``root``.
        case_id: the case.
        subset: ``"Tr"`` or ``"Ts"`` (default: Tr, then Ts).
        normalization: override the registry's normalisation.
    """
    ds = open_dataset(dataset, root)
    files = ds.get(case_id, subset)
    raw = ds.read_case(files)
    image = normalize(torch.from_numpy(np.ascontiguousarray(raw.image)), resolved_normalization(ds, normalization))
    label = regions = None
    if raw.label is not None:
        label = torch.from_numpy(raw.label.astype(np.int64))
        if ds.has_regions:
            regions = label_to_regions(label, [r for _, r in ds.regions]).bool()
    instances = ds.read_instances(files) if files.instances is not None else None
    return LoadedCase(raw.case_id, image, label, regions, raw.spacing, raw.affine, instances, files, raw.header)
