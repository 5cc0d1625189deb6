"""Training transforms without MONAI: cropping, padding, spatial and intensity augmentation.

What :func:`logvmamba.data.loading.make_transforms` chains, in numpy and torch, with the
semantics of the MONAI transforms of the same names (MONAI's package import loads all its
submodules, torchvision and torch._dynamo: seconds in every training job).
``tests/test_augment.py`` compares each with MONAI's for fixed parameters.

Every transform maps a dict of channel-first tensors (``"image"`` ``(C, *spatial)``,
``"label"`` ``(1, *spatial)``) to a new dict and never writes into the tensors it is
given, so a cached item can be read again. A random transform (:class:`RandomTransform`)
draws its parameters from its ``R``, a ``numpy.random.RandomState`` that
:meth:`Compose.set_random_state` shares along the chain. It draws what MONAI's transform
of the same name draws, in the same order, even the numbers MONAI draws and then ignores
(the gate of its inner transform, which always passes; the angles about the two axes a 2D
rotation does not turn). So one generator gives the parameters MONAI's chain would have
taken from it, and the same patches and augmentations::

    chain = Compose([SpatialPadd(["image", "label"], (64, 96)),
                     RandFlipd(["image", "label"], prob=0.5, spatial_axis=0)])
    chain.set_random_state(seed=3)
    out = chain({"image": image, "label": label})

The deterministic operations behind them (:func:`foreground_box`, :func:`crop`,
:func:`pad_to`, :func:`centre_crop`, :func:`crop_around`, :func:`rotate`, :func:`zoom`)
are public, for tests and for anyone who wants one without the draw.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "foreground_box",
    "crop",
    "pad_to",
    "centre_crop",
    "crop_around",
    "rotate",
    "zoom",
    "Compose",
    "RandomTransform",
    "CropForegroundd",
    "SpatialPadd",
    "RandSpatialCropd",
    "RandCropByPosNegLabeld",
    "RandRotated",
    "RandZoomd",
    "RandFlipd",
    "RandScaleIntensityd",
    "RandShiftIntensityd",
    "EnsureTyped",
]

# ----------------------------------------------------------------------------
# deterministic operations on one (C, *spatial) tensor
# ----------------------------------------------------------------------------


def foreground_box(image: torch.Tensor) -> tuple[list[int], list[int]]:
    """Start (inclusive) and end (exclusive) per spatial axis of the voxels where any
    channel is > 0; all zeros when there is none (MONAI's ``generate_spatial_bounding_box``)."""
    mask = (torch.as_tensor(image) > 0).any(0).numpy()
    if not mask.any():
        return [0] * mask.ndim, [0] * mask.ndim
    start, end = [], []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        start.append(int(hits[0]))
        end.append(int(hits[-1]) + 1)
    return start, end


def crop(x: torch.Tensor, start: Sequence[int], end: Sequence[int]) -> torch.Tensor:
    """The spatial box ``start:end`` of ``x``; a start below 0 counts as 0 and an end past the image as its edge."""
    starts = [max(int(s), 0) for s in start]
    return x[(slice(None), *(slice(s, max(int(e), s)) for s, e in zip(starts, end)))]


def pad_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``x`` zero-padded to at least ``size`` per spatial axis, half of each axis' padding
    before it and the other half (the larger, when odd) after (MONAI's ``SpatialPad``)."""
    shape = x.shape[1:]
    widths = [max(int(s) - n, 0) for s, n in zip(size, shape)]
    if not any(widths):
        return x
    out = x.new_zeros((x.shape[0], *(n + w for n, w in zip(shape, widths))))
    out[(slice(None), *(slice(w // 2, w // 2 + n) for w, n in zip(widths, shape)))] = x
    return out


def centre_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The ``size`` box around voxel ``shape // 2`` (MONAI's ``CenterSpatialCrop``); axes
    shorter than ``size`` are kept whole."""
    start = [max(n // 2 - int(s) // 2, 0) for n, s in zip(x.shape[1:], size)]
    return crop(x, start, [b + int(s) for b, s in zip(start, size)])


def crop_around(x: torch.Tensor, centre: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """The ``size`` box whose centre voxel (``start + size // 2``) is ``centre``, moved
    inside the image where it would stick out (MONAI's ``correct_crop_centers`` and ``SpatialCrop``);
    the image must be at least ``size``."""
    shape = x.shape[1:]
    if any(n < int(s) for n, s in zip(shape, size)):
        raise ValueError(f"crop of {tuple(size)} from an image of {tuple(shape)}: pad it first")
    start = [min(max(int(c) - int(s) // 2, 0), n - int(s)) for c, s, n in zip(centre, size, shape)]
    return crop(x, start, [b + int(s) for b, s in zip(start, size)])


def rotate(x: torch.Tensor, angle: float, mode: str = "bilinear") -> torch.Tensor:
    """2D ``x`` ``(C, H, W)`` rotated by ``angle`` radians about its centre, same size,
    zeros outside, as float32 (MONAI's ``Rotate(angle, keep_size=True, padding_mode="zeros")``).

    Output pixel ``q`` samples the input at ``c + R (q - c)``, ``c`` the centre
    ``(size - 1) / 2`` and ``R = [[cos, -sin], [sin, cos]]`` on (row, column). ``mode``:
    ``"bilinear"`` or ``"nearest"`` (``torch.nn.functional.grid_sample``, half-pixel
    corners as MONAI's ``align_corners=False``).
    """
    if x.ndim != 3:
        raise ValueError(f"rotate takes a 2D (C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[1:]
    cos, sin = math.cos(angle), math.sin(angle)
    # grid_sample's coordinates run (column, row), each scaled to [-1, 1] across its axis,
    # so the centre is 0 and R's off-diagonal terms take the ratio of the axes' lengths
    theta = torch.tensor([[[cos, sin * h / w, 0.0], [-sin * w / h, cos, 0.0]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, x.shape[0], h, w], align_corners=False)
    out = F.grid_sample(x[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out[0]


def zoom(x: torch.Tensor, factor: float, mode: str = "bilinear") -> torch.Tensor:
    """``x`` scaled by ``factor`` on every spatial axis to ``floor(size * factor)``
    (``torch.nn.functional.interpolate``), then centre-cropped or zero-padded back to its
    size, as float32 (MONAI's ``Zoom(factor, keep_size=True, padding_mode="constant")``).
    ``mode``: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``."""
    dims = x.ndim - 1
    mode = "trilinear" if mode == "bilinear" and dims == 3 else mode
    out = F.interpolate(x[None].float(), scale_factor=[float(factor)] * dims, mode=mode,
                        recompute_scale_factor=True)[0]
    return pad_to(centre_crop(out, x.shape[1:]), x.shape[1:])


# ----------------------------------------------------------------------------
# the chain
# ----------------------------------------------------------------------------


class RandomTransform:
    """A transform that draws its parameters from ``self.R`` (a ``numpy.random.RandomState``).

    Args:
        prob: the probability that a call applies the transform (one draw, :meth:`applies`).
    """

    def __init__(self, prob: float = 1.0):
        self.prob = float(prob)
        self.R = np.random.RandomState()

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        """Draw from ``state``, or from a new generator seeded with ``seed`` (modulo 2**32)."""
        if state is not None and not isinstance(state, np.random.RandomState):
            raise TypeError(f"state must be a numpy.random.RandomState, got {type(state).__name__}")
        self.R = state if state is not None else np.random.RandomState(None if seed is None else int(seed) % 2**32)
        return self

    def applies(self) -> bool:
        """Whether this call applies the transform: one uniform draw below ``prob``."""
        return self.R.rand() < self.prob

    def skip(self, draws: int = 1) -> None:
        """Draw ``draws`` uniform numbers that MONAI's transform draws and does not use."""
        self.R.random_sample(draws)


class Compose:
    """Transforms applied in order; ``chain(data, start, stop)`` applies ``transforms[start:stop]``."""

    def __init__(self, transforms: Sequence[Callable[[dict], dict]]):
        self.transforms = list(transforms)

    def __call__(self, data: dict, start: int = 0, stop: int | None = None) -> dict:
        for transform in self.transforms[start:stop]:
            data = transform(data)
        return data

    @property
    def first_random(self) -> int:
        """The index of the first random transform (the length of the deterministic head)."""
        return next((i for i, t in enumerate(self.transforms) if isinstance(t, RandomTransform)),
                    len(self.transforms))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        """Give every random transform one generator, ``state`` or a new one seeded with ``seed``,
        drawn from in chain order."""
        if state is None:
            state = np.random.RandomState(None if seed is None else int(seed) % 2**32)
        for transform in self.transforms:
            if isinstance(transform, RandomTransform):
                transform.set_random_state(state=state)
        return self


def _keys(keys: str | Sequence[str]) -> tuple[str, ...]:
    return (keys,) if isinstance(keys, str) else tuple(keys)


def _modes(mode: str | Sequence[str], keys: tuple[str, ...]) -> tuple[str, ...]:
    modes = (mode,) * len(keys) if isinstance(mode, str) else tuple(mode)
    if len(modes) != len(keys):
        raise ValueError(f"{len(modes)} modes {modes} for {len(keys)} keys {keys}")
    return modes


# ----------------------------------------------------------------------------
# cropping and padding
# ----------------------------------------------------------------------------


class CropForegroundd:
    """Crop ``keys`` to the box of ``source_key``'s voxels where any channel is > 0
    (:func:`foreground_box`; no foreground: an empty crop, as MONAI's)."""

    def __init__(self, keys: str | Sequence[str], source_key: str = "image"):
        self.keys, self.source_key = _keys(keys), source_key

    def __call__(self, data: dict) -> dict:
        start, end = foreground_box(data[self.source_key])
        return {**data, **{key: crop(data[key], start, end) for key in self.keys}}


class SpatialPadd:
    """Zero-pad ``keys`` to at least ``spatial_size`` (:func:`pad_to`)."""

    def __init__(self, keys: str | Sequence[str], spatial_size: Sequence[int]):
        self.keys, self.spatial_size = _keys(keys), tuple(int(s) for s in spatial_size)

    def __call__(self, data: dict) -> dict:
        return {**data, **{key: pad_to(data[key], self.spatial_size) for key in self.keys}}


class RandSpatialCropd(RandomTransform):
    """A ``roi_size`` box of ``keys`` at a uniformly drawn start (axes shorter than ``roi_size`` kept whole)."""

    def __init__(self, keys: str | Sequence[str], roi_size: Sequence[int]):
        super().__init__()
        self.keys, self.roi_size = _keys(keys), tuple(int(s) for s in roi_size)

    def __call__(self, data: dict) -> dict:
        shape = data[self.keys[0]].shape[1:]
        start = [self.R.randint(0, n - s + 1) if n > s else 0 for n, s in zip(shape, self.roi_size)]
        end = [b + s for b, s in zip(start, self.roi_size)]
        return {**data, **{key: crop(data[key], start, end) for key in self.keys}}


class RandCropByPosNegLabeld(RandomTransform):
    """A ``spatial_size`` box of ``keys`` around a voxel drawn from ``label_key``'s foreground
    (any nonzero channel, the first left out when there are several) with probability
    ``pos / (pos + neg)``, else from its background; only one of them when the other is
    empty. The box is moved inside the image (:func:`crop_around`), which must be at
    least ``spatial_size`` (pad first). One sample per call (MONAI's ``num_samples=1``,
    returned as the dict itself rather than a list of one).
    """

    def __init__(self, keys: str | Sequence[str], label_key: str, spatial_size: Sequence[int],
                 pos: float = 1.0, neg: float = 1.0):
        super().__init__()
        if pos < 0 or neg < 0 or pos + neg == 0:
            raise ValueError(f"pos and neg must be nonnegative and not both 0, got pos={pos} neg={neg}")
        self.keys, self.label_key = _keys(keys), label_key
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.pos_ratio = pos / (pos + neg)

    def centre(self, label: torch.Tensor) -> tuple[int, ...]:
        """The drawn voxel of ``label`` ``(C, *spatial)``."""
        label = torch.as_tensor(label)
        foreground = (label[1:] if label.shape[0] > 1 else label).bool().any(0).numpy()
        count = int(foreground.sum())
        if foreground.size == 0:
            raise ValueError("no voxel to centre a crop on: the label is empty")
        ratio = self.pos_ratio if 0 < count < foreground.size else float(count > 0)
        positive = self.R.rand() < ratio
        k = self.R.randint(count if positive else foreground.size - count)
        index = np.flatnonzero(foreground if positive else ~foreground)[k]
        return tuple(int(i) for i in np.unravel_index(index, foreground.shape))

    def __call__(self, data: dict) -> dict:
        centre = self.centre(data[self.label_key])
        return {**data, **{key: crop_around(data[key], centre, self.spatial_size) for key in self.keys}}


# ----------------------------------------------------------------------------
# spatial augmentation
# ----------------------------------------------------------------------------


class RandRotated(RandomTransform):
    """With probability ``prob``, rotate 2D ``keys`` by one angle drawn uniformly from
    ``[-range_x, range_x)`` radians (:func:`rotate`, ``mode`` per key)."""

    def __init__(self, keys: str | Sequence[str], range_x: float, prob: float = 0.1,
                 mode: str | Sequence[str] = "bilinear"):
        super().__init__(prob)
        self.keys = _keys(keys)
        self.modes = _modes(mode, self.keys)
        self.range_x = abs(float(range_x))

    def __call__(self, data: dict) -> dict:
        applies = self.applies()
        self.skip()  # the gate of MONAI's inner RandRotate
        angle = self.R.uniform(-self.range_x, self.range_x)
        self.skip(2)  # its angles about the other axes, drawn from [0, 0]
        if not applies:
            return data
        return {**data, **{key: rotate(data[key], angle, m) for key, m in zip(self.keys, self.modes)}}


class RandZoomd(RandomTransform):
    """With probability ``prob``, zoom ``keys`` by one factor drawn uniformly from
    ``[min_zoom, max_zoom)``, keeping their size (:func:`zoom`, ``mode`` per key)."""

    def __init__(self, keys: str | Sequence[str], prob: float = 0.1, min_zoom: float = 0.9, max_zoom: float = 1.1,
                 mode: str | Sequence[str] = "bilinear"):
        super().__init__(prob)
        self.keys = _keys(keys)
        self.modes = _modes(mode, self.keys)
        self.min_zoom, self.max_zoom = float(min_zoom), float(max_zoom)

    def __call__(self, data: dict) -> dict:
        applies = self.applies()
        self.skip()  # the gate of MONAI's inner RandZoom
        factor = self.R.uniform(self.min_zoom, self.max_zoom)
        if not applies:
            return data
        return {**data, **{key: zoom(data[key], factor, m) for key, m in zip(self.keys, self.modes)}}


class RandFlipd(RandomTransform):
    """With probability ``prob``, reverse ``keys`` along spatial axis ``spatial_axis``."""

    def __init__(self, keys: str | Sequence[str], prob: float = 0.1, spatial_axis: int = 0):
        super().__init__(prob)
        self.keys, self.spatial_axis = _keys(keys), int(spatial_axis)

    def __call__(self, data: dict) -> dict:
        if not self.applies():
            return data
        return {**data, **{key: torch.flip(data[key], [self.spatial_axis + 1]) for key in self.keys}}


# ----------------------------------------------------------------------------
# intensity augmentation
# ----------------------------------------------------------------------------


class RandScaleIntensityd(RandomTransform):
    """With probability ``prob``, multiply ``keys`` by ``1 + f``, ``f`` drawn uniformly from ``[-factors, factors)``."""

    def __init__(self, keys: str | Sequence[str], factors: float, prob: float = 0.1):
        super().__init__(prob)
        self.keys, self.factors = _keys(keys), abs(float(factors))

    def __call__(self, data: dict) -> dict:
        if not self.applies():
            return data
        self.skip()  # the gate of MONAI's inner RandScaleIntensity
        factor = self.R.uniform(-self.factors, self.factors)
        return {**data, **{key: data[key].float() * (1 + factor) for key in self.keys}}


class RandShiftIntensityd(RandomTransform):
    """With probability ``prob``, add ``o`` to ``keys``, ``o`` drawn uniformly from ``[-offsets, offsets)``."""

    def __init__(self, keys: str | Sequence[str], offsets: float, prob: float = 0.1):
        super().__init__(prob)
        self.keys, self.offsets = _keys(keys), abs(float(offsets))

    def __call__(self, data: dict) -> dict:
        if not self.applies():
            return data
        self.skip()  # the gate of MONAI's inner RandShiftIntensity
        offset = self.R.uniform(-self.offsets, self.offsets)
        return {**data, **{key: data[key] + offset for key in self.keys}}


class EnsureTyped:
    """``keys`` as plain tensors of ``dtype`` (keys the dict lacks are skipped when ``allow_missing_keys``)."""

    def __init__(self, keys: str | Sequence[str], dtype: torch.dtype, allow_missing_keys: bool = False):
        self.keys, self.dtype, self.allow_missing_keys = _keys(keys), dtype, allow_missing_keys

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        for key in self.keys:
            if key in data or not self.allow_missing_keys:
                out[key] = torch.as_tensor(data[key]).to(self.dtype)
        return out
