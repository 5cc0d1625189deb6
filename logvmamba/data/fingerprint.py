"""The fingerprint of an nnU-Net v2 raw dataset: what nnU-Net's planner reads about its images.

:func:`dataset_fingerprint` reads every training case of a raw dataset through
:class:`~logvmamba.data.raw.RawDataset` and collects, as nnU-Net v2's
``DatasetFingerprintExtractor`` does:

- per case: the spacing (NIfTI: from the header, :func:`~logvmamba.data.formats.affine_spacing`;
  png: 1.0), the shape, and the shape after nnU-Net's crop to non-zero (the bounding box
  of the voxels where any channel is non-zero; an all-zero image is not cropped);
- ``median_relative_size_after_cropping``: the median over cases of
  ``voxels after crop / voxels before``;
- per channel, foreground intensity statistics (``mean``, ``median``, ``std``, ``min``,
  ``max``, ``percentile_00_5``, ``percentile_99_5``) of a sample of the intensities of
  the voxels inside the cropped box whose label is above 0. The sample is nnU-Net's:
  ``int(intensity_samples // n_cases)`` draws per case and channel, with replacement,
  from a fresh ``numpy.random.RandomState(1234)`` per case (channels drawn one after
  the other from it; a case without foreground draws nothing), so the numbers are
  nnU-Net's up to float32-versus-float64 rounding. Only the drawn counts are kept
  (``bincount`` of the draws, then merged by value), not the ``10e7`` samples;

and beside them the dataset.json facts planning needs: channel names, labels (or regions
with ``regions_class_order``), file ending and number of training cases.

Axis order. Shapes and spacings are in nnU-Net's array order, so that they compare
value for value with nnU-Net's ``dataset_fingerprint.json``:

- NIfTI: our readers keep the stored order ``(X, Y, Z)`` (nibabel's, see
  :mod:`logvmamba.data.loading`); nnU-Net's SimpleITK reader gives ``(Z, Y, X)`` with the
  spacing reversed to match. Fingerprint axis ``k`` is our array axis ``2 - k``.
- png: our arrays are ``(H, W)``; nnU-Net makes a 2D image a volume of one slice,
  ``(1, H, W)``, with spacing ``(999, 1, 1)``. Fingerprint axis ``k >= 1`` is our axis
  ``k - 1``; axis 0 is nnU-Net's dummy slice axis.

``array_axes`` in the fingerprint records this map (``[2, 1, 0]``, or ``[None, 0, 1]``
for png): entry ``k`` is our array axis of fingerprint axis ``k``.

Caching. The fingerprint is written (atomically) to ``<dataset>/fingerprint.json`` and
reused while the dataset's files are unchanged: its ``source_key`` hashes the names,
sizes and modification times of ``dataset.json`` and of the files in ``imagesTr/`` and
``labelsTr/``, with the fingerprint version and the sample size. A read-only dataset
folder is fingerprinted without caching (with a warning).

Bad input raises :class:`~logvmamba.data.errors.DatasetError`, one line naming the file.

Examples::

    >>> fp = dataset_fingerprint("/data/nnUNet_raw/Dataset027_ACDC")      # doctest: +SKIP
    >>> fp["spacings"][0], fp["shapes_after_crop"][0]                     # doctest: +SKIP
    ([10.0, 1.5625, 1.5625], [10, 256, 216])
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from logvmamba.data.errors import DatasetError
from logvmamba.data.raw import CaseFiles, RawDataset, check_finite, open_dataset
from logvmamba.io import atomic_write_text

__all__ = [
    "FINGERPRINT_FILE",
    "FINGERPRINT_VERSION",
    "INTENSITY_SAMPLES",
    "SAMPLING_SEED",
    "SLICE_AXIS_SPACING",
    "INTENSITY_KEYS",
    "dataset_fingerprint",
    "compute_fingerprint",
    "source_key",
    "nonzero_box",
    "to_nnunet_axes",
    "intensity_statistics",
    "normalization_schemes",
    "channel_normalization",
]

FINGERPRINT_FILE = "fingerprint.json"
FINGERPRINT_VERSION = 1
#: intensities sampled over the whole dataset (nnU-Net's ``num_foreground_voxels_for_intensitystats``)
INTENSITY_SAMPLES = 10e7
#: seed of each case's ``RandomState`` (nnU-Net's ``collect_foreground_intensities``)
SAMPLING_SEED = 1234
#: spacing nnU-Net gives the dummy slice axis of a 2D image
SLICE_AXIS_SPACING = 999.0
#: the statistics per channel, in nnU-Net's order
INTENSITY_KEYS = ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")

#: channel name (case-folded) -> nnU-Net v2's normalisation class; any other name z-scores
NORMALIZATION_BY_CHANNEL_NAME = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}
_SCHEME_KEYS = {"CTNormalization": "ct", "NoNormalization": "none", "ZScoreNormalization": "zscore",
                "RescaleTo01Normalization": "rescale_to_0_1", "RGBTo01Normalization": "rgb_to_0_1"}

_PERCENTILES = {"percentile_00_5": 0.5, "median": 50.0, "percentile_99_5": 99.5}
_DRAW_CHUNK = 1 << 22  # draws per RandomState call; the stream is the same as one call's


# ----------------------------------------------------------------------------
# axes, crop, statistics
# ----------------------------------------------------------------------------

def to_nnunet_axes(image: np.ndarray, label: np.ndarray | None, spacing: Sequence[float]):
    """One case in nnU-Net's array order (a view, no copy).

    Args:
        image: ``(C, H, W)`` (png) or ``(C, X, Y, Z)`` (NIfTI), as our readers give it.
        label: the spatial label map, or None.
        spacing: our spacing per array axis.

    Returns:
        ``(image (C, 1, H, W) or (C, Z, Y, X), label likewise, spacing (999, 1, 1) or (z, y, x),
        array_axes)`` where ``array_axes[k]`` is our axis of nnU-Net axis ``k`` (None: dummy).
    """
    if image.ndim == 3:
        return (image[:, None], None if label is None else label[None],
                (SLICE_AXIS_SPACING, *(float(s) for s in spacing)), (None, 0, 1))
    if image.ndim == 4:
        return (image.transpose(0, 3, 2, 1), None if label is None else label.transpose(2, 1, 0),
                tuple(float(s) for s in spacing[::-1]), (2, 1, 0))
    raise ValueError(f"image must be (C, H, W) or (C, X, Y, Z), got shape {image.shape}")


def nonzero_box(image: np.ndarray) -> tuple[slice, ...]:
    """nnU-Net's crop to non-zero: the bounding box of voxels where any channel is non-zero.

    ``image`` is ``(C, *spatial)``; returns one slice per spatial axis (the whole axis for
    an all-zero image). nnU-Net fills holes in the mask first, which cannot change its box.
    """
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _draw_counts(rs: np.random.RandomState, population: int, draws: int) -> np.ndarray:
    """How often each of ``population`` items is picked by ``rs.choice(population, draws)``."""
    counts = np.zeros(population, np.int64)
    for start in range(0, draws, _DRAW_CHUNK):
        counts += np.bincount(rs.choice(population, min(_DRAW_CHUNK, draws - start), replace=True),
                              minlength=population)
    return counts


def _by_value(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge equal values: ``(sorted unique values, summed counts)``."""
    keep = counts > 0
    unique, inverse = np.unique(values[keep], return_inverse=True)
    return unique, np.bincount(inverse.ravel(), weights=counts[keep]).round().astype(np.int64)


def intensity_statistics(values: np.ndarray, counts: np.ndarray | None = None) -> dict[str, float | None]:
    """nnU-Net's statistics of a sample given as distinct values and how often each was drawn.

    Percentiles use numpy's default (linear) rule over the sample sorted with repeats;
    ``std`` is the population standard deviation. An empty sample gives ``None`` for each.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    counts = np.ones(values.size, np.int64) if counts is None else np.asarray(counts, np.int64).ravel()
    if values.size == 0 or counts.sum() == 0:
        return {key: None for key in INTENSITY_KEYS}
    values, counts = _by_value(values, counts)
    total = int(counts.sum())
    mean = float(np.dot(values, counts) / total)
    std = float(math.sqrt(max(np.dot((values - mean) ** 2, counts) / total, 0.0)))
    cumulative = np.cumsum(counts)

    def at_rank(rank: int) -> float:
        return float(values[np.searchsorted(cumulative, rank, side="right")])

    out = {"mean": mean, "std": std, "min": float(values[0]), "max": float(values[-1])}
    for key, q in _PERCENTILES.items():
        h = (total - 1) * q / 100.0
        low = int(math.floor(h))
        lo, hi = at_rank(low), at_rank(min(low + 1, total - 1))
        out[key] = lo + (h - low) * (hi - lo)
    return {key: out[key] for key in INTENSITY_KEYS}


# ----------------------------------------------------------------------------
# one case
# ----------------------------------------------------------------------------

def _analyze_case(ds: RawDataset, files: CaseFiles, samples_per_case: int):
    case = ds.read_case(files)
    check_finite(case)  # every image is read here anyway; NaN would poison the statistics and the training
    image, label, spacing, axes = to_nnunet_axes(case.image, case.label, case.spacing)
    box = nonzero_box(image)
    cropped = image[(slice(None), *box)]
    foreground = label[box] > 0
    rs = np.random.RandomState(SAMPLING_SEED)
    drawn = []
    for c in range(cropped.shape[0]):
        values = cropped[c][foreground]
        if values.size == 0:
            drawn.append((np.empty(0, np.float32), np.empty(0, np.int64)))
            continue
        drawn.append(_by_value(values, _draw_counts(rs, values.size, samples_per_case)))
    shape = tuple(int(n) for n in image.shape[1:])
    after = tuple(int(n) for n in cropped.shape[1:])
    return shape, after, spacing, axes, drawn


# ----------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------

def _source_files(ds: RawDataset) -> list[tuple[str, int, int]]:
    files = [ds.path / "dataset.json"]
    for sub in ("imagesTr", "labelsTr"):
        folder = ds.path / sub
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    out = []
    for path in files:
        stat = path.stat()
        out.append((str(path.relative_to(ds.path)), int(stat.st_size), int(stat.st_mtime_ns)))
    return out


def source_key(dataset: RawDataset | str | os.PathLike, intensity_samples: float = INTENSITY_SAMPLES) -> str:
    """The cache key of a dataset's fingerprint: a hash of file names, sizes and mtimes (and settings)."""
    ds = open_dataset(dataset)
    blob = json.dumps({"version": FINGERPRINT_VERSION, "intensity_samples": float(intensity_samples),
                       "files": _source_files(ds)})
    return hashlib.sha256(blob.encode()).hexdigest()


def compute_fingerprint(dataset: RawDataset | str | os.PathLike, root: str | os.PathLike | None = None,
                        intensity_samples: float = INTENSITY_SAMPLES) -> dict:
    """The fingerprint of a dataset's training cases, computed now (no cache).

    Args:
        dataset: a :class:`RawDataset`, a dataset folder, or a name looked up under ``root``.
        root: dataset root for a name.
        intensity_samples: intensities drawn over the whole dataset (nnU-Net: ``10e7``).

    Raises:
        DatasetError: no training cases, a corrupt or inconsistent file (named), NaN intensities.
    """
    ds = open_dataset(dataset, root)
    key = source_key(ds, intensity_samples)
    cases = ds.cases("Tr")
    if not cases:
        raise DatasetError(ds.path / "imagesTr", "no training cases; a fingerprint needs at least one")
    samples_per_case = int(intensity_samples // len(cases))
    if samples_per_case < 1:
        raise ValueError(f"intensity_samples {intensity_samples} is below one sample per case ({len(cases)} cases)")
    shapes, after_crop, spacings, relative = [], [], [], []
    pooled: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(ds.num_channels)]
    axes = None
    for files in cases:
        shape, after, spacing, axes, drawn = _analyze_case(ds, files, samples_per_case)
        shapes.append(list(shape))
        after_crop.append(list(after))
        spacings.append(list(spacing))
        relative.append(float(np.prod(after, dtype=np.float64) / np.prod(shape, dtype=np.float64)))
        for c, part in enumerate(drawn):
            pooled[c].append(part)
    intensities = {}
    for c, parts in enumerate(pooled):
        values = np.concatenate([v for v, _ in parts]) if parts else np.empty(0)
        counts = np.concatenate([n for _, n in parts]) if parts else np.empty(0, np.int64)
        intensities[str(c)] = intensity_statistics(values, counts)
    return {
        "version": FINGERPRINT_VERSION,
        "source_key": key,
        "name": ds.name,
        "channel_names": {str(i): name for i, name in enumerate(ds.channel_names)},
        "labels": ds.labels,
        "regions_class_order": ds.json.get("regions_class_order") if ds.has_regions else None,
        "file_ending": ds.file_ending,
        "num_training": int(ds.json.get("numTraining", len(cases))),
        "spatial_dims": ds.spatial_dims,
        "array_axes": list(axes),
        "intensity_samples": float(intensity_samples),
        "case_ids": [c.case_id for c in cases],
        "shapes": shapes,
        "spacings": spacings,
        "shapes_after_crop": after_crop,
        "median_relative_size_after_cropping": float(np.median(relative)),
        "foreground_intensity_properties_per_channel": intensities,
    }


def dataset_fingerprint(dataset: RawDataset | str | os.PathLike, root: str | os.PathLike | None = None,
                        cache: bool | str | os.PathLike = True,
                        intensity_samples: float = INTENSITY_SAMPLES) -> dict:
    """The fingerprint of a dataset, from its cache file while the dataset is unchanged.

    Args:
        dataset: a :class:`RawDataset`, a dataset folder, or a name looked up under ``root``.
        root: dataset root for a name (see :func:`~logvmamba.data.raw.resolve_dataset_dir`).
        cache: True: ``<dataset>/fingerprint.json``; a path: that file; False: no cache.
        intensity_samples: intensities drawn over the whole dataset (nnU-Net: ``10e7``).

    Returns:
        The fingerprint (see the module docstring), as written to the cache.
    """
    ds = open_dataset(dataset, root)
    if cache is False or cache is None:
        return compute_fingerprint(ds, intensity_samples=intensity_samples)
    path = ds.path / FINGERPRINT_FILE if cache is True else Path(cache)
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            cached = None  # a damaged cache is recomputed
        if (isinstance(cached, dict) and cached.get("version") == FINGERPRINT_VERSION
                and cached.get("source_key") == source_key(ds, intensity_samples)):
            return cached
    fingerprint = compute_fingerprint(ds, intensity_samples=intensity_samples)
    try:
        atomic_write_text(path, json.dumps(fingerprint, indent=2) + "\n")
    except OSError as err:
        warnings.warn(f"{path}: fingerprint not cached ({err.strerror or err})", stacklevel=2)
    return fingerprint


# ----------------------------------------------------------------------------
# normalisation by channel name
# ----------------------------------------------------------------------------

def normalization_schemes(channel_names: Sequence[str], median_relative_size_after_cropping: float
                          ) -> tuple[list[str], list[bool]]:
    """nnU-Net's normalisation per channel name and whether it z-scores inside the non-zero mask."""
    schemes = [NORMALIZATION_BY_CHANNEL_NAME.get(str(name).casefold(), "ZScoreNormalization")
               for name in channel_names]
    use_mask = [s == "ZScoreNormalization" and median_relative_size_after_cropping < 3 / 4 for s in schemes]
    return schemes, use_mask


def channel_normalization(dataset: RawDataset | str | os.PathLike) -> list[dict]:
    """The per-channel normalisation nnU-Net v2 plans for a dataset, as JSON-able dicts.

    ``{"scheme": "ct", "lower", "upper", "mean", "std"}`` (clip to the foreground's 0.5 / 99.5
    percentiles, z-score with the foreground mean and std), ``{"scheme": "zscore", "nonzero"}``
    (per image; inside the non-zero mask when cropping removed more than a quarter),
    ``{"scheme": "none"}``, ``{"scheme": "rescale_to_0_1"}`` or ``{"scheme": "rgb_to_0_1"}``.
    The CT statistics come from the (cached) fingerprint.
    """
    ds = open_dataset(dataset)
    fingerprint = dataset_fingerprint(ds)
    schemes, use_mask = normalization_schemes(ds.channel_names, fingerprint["median_relative_size_after_cropping"])
    stats = fingerprint["foreground_intensity_properties_per_channel"]
    out = []
    for c, (scheme, mask) in enumerate(zip(schemes, use_mask)):
        entry: dict = {"scheme": _SCHEME_KEYS[scheme]}
        if scheme == "CTNormalization":
            channel = stats.get(str(c)) or {}
            if channel.get("mean") is None:
                raise DatasetError(ds.path / "labelsTr", f"channel {c} is CT but no case has foreground to take "
                                                         f"its intensity statistics from")
            entry.update(lower=float(channel["percentile_00_5"]), upper=float(channel["percentile_99_5"]),
                         mean=float(channel["mean"]), std=float(channel["std"]))
        elif scheme == "ZScoreNormalization":
            entry["nonzero"] = bool(mask)
        out.append(entry)
    return out
