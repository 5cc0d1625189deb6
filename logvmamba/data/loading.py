"""Training loaders (the transforms of :mod:`logvmamba.data.augment`; no MONAI); inference reads cases
through :mod:`logvmamba.data.cases`.

Training::

    loader = make_loader(dataset_dir, split="train", fold=0, patch_size=(64, 96),
                         batch_size=2, seed=12345)
    batch = next(iter(loader))
    batch["image"]   # (B, C, *patch) float32, normalised
    batch["label"]   # class datasets: (B, 1, *patch) int64 label map
                     # region datasets (BraTS): (B, R, *patch) float32, one 0/1 channel per
                     # region in dataset.json order (whole tumour, tumour core, enhancing)
    batch["case_id"] # list of B case ids

Inference (:func:`logvmamba.data.cases.load_case`, re-exported here; no MONAI)::

    case = load_case(dataset_dir, "BraTS_00007")
    case.image    # (C, *spatial) float32, normalised exactly as in training
    case.label    # (*spatial) int64 label map as stored, or None
    case.regions  # (R, *spatial) bool for region datasets, else None
    case.spacing, case.affine, case.header (NIfTI header, for writing predictions)
    case.instances  # int32 instance mask where the dataset has them, else None

Preprocessing (per dataset, from :data:`~logvmamba.data.registry.DATASETS`):

* normalisation: z-score per channel over the whole image (``zscore``:
  endoscopy, cell, acdc) or over non-zero voxels with background kept at 0
  (``zscore_nonzero``: BraTS, as the LoG-VMamba release);
* user datasets (:mod:`logvmamba.data.user`): ``nnunet``, per channel name as nnU-Net v2
  (CT: clip to the foreground's 0.5-99.5 percentiles and z-score with its mean and std;
  otherwise z-score, inside the non-zero mask when cropping removed over a quarter),
  resolved to per-channel dicts by :func:`resolved_normalization`;
* no resampling: ACDC is trained on an anisotropic patch (160 x 160 x 16 at
  native spacing), BraTS at its native 1 mm;
* patches: BraTS crops to the non-zero box, then takes uniform random
  ``128^3`` crops (release recipe); the others take nnU-Net-style
  foreground-aware crops (``RandCropByPosNegLabeld``, one patch in three
  centred on a labelled voxel); images smaller than the patch are zero-padded
  after normalisation;
* augmentation (training only): 2D rotation (p 0.2, +-180 deg) and scaling
  (p 0.2, x0.7-1.4); flips on every spatial axis (p 0.5); intensity scale and
  shift by up to 0.1 (p 0.5 each).

Determinism: a training epoch is a sequence of draws (case indices) made
from ``seed`` alone (:class:`EpochSampler`), and draw ``i`` reseeds the
transform chain from ``(seed, i)`` before it is read (:class:`SeededDraws`),
so its patch and augmentation depend on neither the number of workers nor
the number of processes. With ``world_size`` processes, ``batch_size`` is the
global batch: process ``rank`` takes its share of every global batch, and the
``world_size`` shares of batch ``k`` are the one-process batch ``k``.
Validation and test patches are drawn the same way, case ``i`` from ``(seed, i)``.

The training path imports neither MONAI nor torchvision: its transforms
(:mod:`logvmamba.data.augment`) do what MONAI's of the same names do, and the
loaders are torch's own.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from logvmamba.data.augment import (
    Compose, CropForegroundd, EnsureTyped, RandCropByPosNegLabeld, RandFlipd, RandRotated, RandScaleIntensityd,
    RandShiftIntensityd, RandSpatialCropd, RandZoomd, SpatialPadd,
)
from logvmamba.data.cases import (  # noqa: F401  (re-exported: inference reads cases through logvmamba.data.cases)
    LoadedCase, load_case, normalize, normalize_channels, resample, resampled_size, resolved_normalization,
)
from logvmamba.data.errors import DatasetError
from logvmamba.data.labels import label_to_regions, regions_to_label  # noqa: F401  (regions_to_label re-exported)
from logvmamba.data.raw import CaseData, CaseFiles, RawDataset, open_dataset
from logvmamba.data.splits import split_cases

__all__ = [
    "LoadCased",
    "LabelToRegionsd",
    "RawCaseDataset",
    "CachedRawCaseDataset",
    "LoadedCase",
    "open_dataset",
    "default_patch_size",
    "make_transforms",
    "normalizer",
    "resolved_normalization",
    "ResampleToSpacingd",
    "resampled_size",
    "resample",
    "ChannelNormalized",
    "ZScored",
    "normalize",
    "make_dataset",
    "make_loader",
    "EpochSampler",
    "SeededDraws",
    "epoch_loader",
    "load_case",
    "regions_to_label",
]

def default_patch_size(ds: RawDataset) -> tuple[int, ...]:
    """The registry's patch size (the synthetic one for synthetic datasets)."""
    if ds.info is None or ds.info.patch_size is None:
        raise ValueError(f"{ds.path}: no registered patch size (a user dataset's is planned, "
                         f"logvmamba.config.resolve_recipe); pass patch_size explicitly")
    return ds.info.synthetic_patch_size if ds.is_synthetic else ds.info.patch_size


# ----------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------

class LoadCased:
    """Read a case through :class:`RawDataset` (all validation applies).

    Input: a dict with ``"files"`` (:class:`CaseFiles`), or ``"case"`` (a
    :class:`CaseData` already read). Output: ``"image"`` ``(C, *spatial)``
    float32 tensor, ``"label"`` ``(1, *spatial)`` float32 tensor (when the
    case has one), ``"case_id"``, ``"spacing"`` (float64 tensor, one value per
    spatial axis); ``"files"`` / ``"case"`` are dropped.
    """

    def __init__(self, dataset: RawDataset):
        self.dataset = dataset

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        case: CaseData | None = data.pop("case", None)
        files: CaseFiles | None = data.pop("files", None)
        if case is None:
            case = self.dataset.read_case(files)
        data["case_id"] = case.case_id
        data["spacing"] = torch.tensor([float(v) for v in case.spacing], dtype=torch.float64)
        data["image"] = torch.from_numpy(np.ascontiguousarray(case.image))
        if case.label is not None:
            data["label"] = torch.from_numpy(case.label[None].astype(np.float32))
        return data


class ResampleToSpacingd:
    """Resample ``"image"`` (linear) and ``"label"`` (nearest) from the case's ``"spacing"`` to ``spacing``."""

    def __init__(self, spacing: Sequence[float]):
        self.spacing = [float(v) for v in spacing]

    def __call__(self, data: dict) -> dict:
        size = resampled_size(data["image"].shape[1:], data["spacing"].tolist(), self.spacing)
        out = dict(data, image=resample(data["image"], size))
        if "label" in data:
            out["label"] = resample(data["label"], size, label=True)
        out["spacing"] = torch.tensor(self.spacing, dtype=torch.float64)
        return out


class LabelToRegionsd:
    """Label map ``(1, *spatial)`` -> region targets ``(R, *spatial)`` float 0/1.

    ``regions`` lists, per output channel, the label values it covers (from
    dataset.json, e.g. BraTS ``[(1, 2, 3), (2, 3), (3,)]``).
    """

    def __init__(self, keys: str | Sequence[str], regions: Sequence[Sequence[int]]):
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.regions = [tuple(int(v) for v in r) for r in regions]

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        for key in self.keys:
            if key not in data:
                continue
            label = torch.as_tensor(data[key])
            label = label[0] if label.ndim > 0 and label.shape[0] == 1 else label
            data[key] = label_to_regions(label.round().long(), self.regions).float()
        return data


class RawCaseDataset(torch.utils.data.Dataset):
    """Item ``i`` is ``transform(items[i])``; a :class:`DatasetError` of a bad case comes through as it is."""

    def __init__(self, items: Sequence[dict], transform: Compose):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.transform(self.items[index])


class CachedRawCaseDataset(RawCaseDataset):
    """:class:`RawCaseDataset` that runs the deterministic head of ``transform`` (everything
    before its first random transform: reading, cropping to the foreground, normalising,
    padding) once per case when built, and only the rest per read. The transforms never
    write into their input, so the cached items stay as they were."""

    def __init__(self, items: Sequence[dict], transform: Compose):
        super().__init__(items, transform)
        self.start = transform.first_random
        self.cache = [transform(item, stop=self.start) for item in self.items]

    def __getitem__(self, index: int) -> dict:
        return self.transform(self.cache[index], start=self.start)


def _check_trainable(ds: RawDataset) -> None:
    path = ds.path / "dataset.json"
    if not ds.has_regions and ds.label_values != tuple(range(len(ds.label_values))):
        raise DatasetError(path, f"training needs consecutive labels 0..N-1, got {list(ds.label_values)}")
    info = ds.info
    if info is not None and info.output_kind == "sigmoid" and not ds.has_regions:
        raise DatasetError(path, f"{info.key} is trained on regions but dataset.json declares none (an nnU-Net "
                                 f"v1 conversion?); convert the release with `python -m logvmamba.data.convert "
                                 f"{info.key}`")
    if info is not None and ds.num_classes != info.num_outputs:
        raise DatasetError(path, f"{ds.num_classes} output classes/regions, {info.key} has {info.num_outputs}")


class ChannelNormalized:
    """Per-channel normalisation of ``data["image"]`` by nnU-Net v2's schemes
    (:func:`logvmamba.data.cases.normalize_channels`)."""

    def __init__(self, specs: Sequence[dict]):
        self.specs = [dict(s) for s in specs]

    def __call__(self, data: dict) -> dict:
        return {**data, "image": normalize_channels(data["image"], self.specs)}


class ZScored:
    """Per-channel z-score of ``data["image"]`` (:func:`logvmamba.data.cases.zscore`), what
    MONAI's ``NormalizeIntensityd(channel_wise=True)`` computes, in one function shared with inference."""

    def __init__(self, nonzero: bool = False):
        self.nonzero = nonzero

    def __call__(self, data: dict) -> dict:
        return {**data, "image": normalize(data["image"], "zscore_nonzero" if self.nonzero else "zscore")}


def normalizer(normalization):
    """The intensity normalisation of training and inference for the ``"image"`` key."""
    if isinstance(normalization, (list, tuple)):
        return ChannelNormalized(normalization)
    if normalization not in ("zscore", "zscore_nonzero"):
        raise ValueError(f"normalization must be 'zscore', 'zscore_nonzero' or per-channel dicts, got {normalization!r}")
    return ZScored(nonzero=normalization == "zscore_nonzero")


def make_transforms(ds: RawDataset, train: bool, patch_size: Sequence[int] | None = None,
                    augment: bool = True, sampling: str | None = None, normalization: str | None = None,
                    spacing: Sequence[float] | None = None):
    """The :class:`~logvmamba.data.augment.Compose` used by :func:`make_loader`.

    Args:
        ds: the dataset (for channels, labels, regions and registry defaults).
        train: random patches (and augmentation when ``augment``); otherwise
            whole images, deterministic, normalised as :func:`load_case` does.
        patch_size: training patch; required when ``train``.
        augment: apply the recipe's augmentations (training only).
        sampling: ``"foreground"`` or ``"random"``; default from the registry
            (``"foreground"`` for datasets outside it).
        normalization: ``"zscore"``, ``"zscore_nonzero"``, ``"nnunet"`` or per-channel dicts
            (:class:`ChannelNormalized`); default from the registry.
        spacing: resample every case to this spacing first (:class:`ResampleToSpacingd`).
    """
    info = ds.info
    normalization = resolved_normalization(ds, normalization)
    sampling = sampling or (info.sampling if info else "foreground")
    if sampling not in ("foreground", "random"):
        raise ValueError(f"sampling must be 'foreground' or 'random', got {sampling!r}")
    nonzero = normalization == "zscore_nonzero"
    normalize = normalizer(normalization)
    both = ["image", "label"]
    steps: list = [LoadCased(ds)]
    if spacing is not None:
        steps.append(ResampleToSpacingd(spacing))
    if train:
        if patch_size is None:
            raise ValueError("patch_size is required for training transforms")
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != ds.spatial_dims:
            raise ValueError(f"patch_size {patch} has {len(patch)} dims, {ds.name} is {ds.spatial_dims}D")
        if nonzero:  # the release crops to the brain box before sampling
            steps.append(CropForegroundd(both, source_key="image"))
        steps.append(normalize)
        steps.append(SpatialPadd(both, patch))
        if sampling == "random":
            steps.append(RandSpatialCropd(both, patch))
        else:
            steps.append(RandCropByPosNegLabeld(both, "label", patch, pos=1.0, neg=2.0))
        if augment:
            if ds.spatial_dims == 2:
                steps.append(RandRotated(both, range_x=np.pi, prob=0.2, mode=("bilinear", "nearest")))
                steps.append(RandZoomd(both, prob=0.2, min_zoom=0.7, max_zoom=1.4, mode=("bilinear", "nearest")))
            for axis in range(ds.spatial_dims):
                steps.append(RandFlipd(both, prob=0.5, spatial_axis=axis))
            steps.append(RandScaleIntensityd("image", factors=0.1, prob=0.5))
            steps.append(RandShiftIntensityd("image", offsets=0.1, prob=0.5))
    else:
        steps.append(normalize)
    if ds.has_regions:
        steps.append(LabelToRegionsd("label", [r for _, r in ds.regions]))
        steps.append(EnsureTyped(both, torch.float32, allow_missing_keys=True))
    else:
        steps.append(EnsureTyped("image", torch.float32))
        steps.append(EnsureTyped("label", torch.long, allow_missing_keys=True))
    return Compose(steps)


# ----------------------------------------------------------------------------
# training loader
# ----------------------------------------------------------------------------

def make_dataset(dataset: RawDataset | str | os.PathLike, split: str = "train", fold: int | str = 0,
                 patch_size: Sequence[int] | None = None, seed: int = 0, augment: bool | None = None,
                 sampling: str | None = None, normalization: str | None = None, cache: bool = False,
                 splits: list[dict] | None = None, root: str | os.PathLike | None = None,
                 spacing: Sequence[float] | None = None):
    """The dataset behind :func:`make_loader` (same arguments): item ``i`` is case ``i`` of the
    split through :func:`make_transforms`, its random transforms seeded with ``seed``."""
    ds = open_dataset(dataset, root)
    cases = split_cases(ds, split, fold, splits)
    if not cases:
        raise ValueError(f"{ds.path}: split {split!r} of fold {fold!r} is empty")
    items = [{"files": c} for c in cases]
    train = split == "train"
    if train:
        _check_trainable(ds)
        patch_size = patch_size or default_patch_size(ds)
    transform = make_transforms(ds, train=patch_size is not None, patch_size=patch_size,
                                augment=train if augment is None else augment,
                                sampling=sampling, normalization=normalization, spacing=spacing)
    transform.set_random_state(seed=seed)
    if cache:
        return CachedRawCaseDataset(items, transform)
    return RawCaseDataset(items, transform)


class EpochSampler(torch.utils.data.Sampler):
    """One epoch's draws of cases, the same for any number of processes; this process's share.

    The epoch draws ``num_samples`` case indices out of ``num_cases`` from ``seed``
    alone: with replacement (nnU-Net style), or a permutation when ``num_samples`` is
    None. Global batch ``k`` is draw positions ``k * batch_size`` to
    ``(k + 1) * batch_size - 1``; process ``rank`` of ``world_size`` takes the
    ``rank``-th of their ``world_size`` equal slices, so the processes' batches ``k``
    together are the one-process batch ``k``. Yields ``(position, case index)`` for
    :class:`SeededDraws`.

    Examples::

        >>> list(EpochSampler(5, 4, batch_size=2, seed=0, rank=1, world_size=2))  # positions 1 and 3
        [(1, 4), (3, 0)]
    """

    def __init__(self, num_cases: int, num_samples: int | None, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is the global batch and must divide by the "
                             f"{world_size} processes")
        total = num_cases if num_samples is None else int(num_samples)
        if world_size > 1 and total % batch_size:
            raise ValueError(f"{total} samples per epoch are not whole batches of {batch_size}; "
                             f"{world_size} processes need equal shares")
        self.num_cases, self.num_samples, self.total, self.batch_size = num_cases, num_samples, total, batch_size
        self.seed, self.rank, self.world_size = int(seed), rank, world_size

    def draws(self) -> list[int]:
        """The case index of every position of the epoch (all processes)."""
        generator = torch.Generator().manual_seed(self.seed)
        if self.num_samples is None:
            return torch.randperm(self.num_cases, generator=generator).tolist()
        return torch.randint(self.num_cases, (int(self.num_samples),), generator=generator).tolist()

    def positions(self) -> list[int]:
        """The draw positions of this process, in order."""
        share = self.batch_size // self.world_size
        return [p for start in range(0, self.total, self.batch_size)
                for p in range(start + self.rank * share, min(start + (self.rank + 1) * share, self.total))]

    def __iter__(self):
        draws = self.draws()
        return iter([(p, draws[p]) for p in self.positions()])

    def __len__(self) -> int:
        return len(self.positions())


def _draw_seed(seed: int, position: int) -> int:
    """The transform seed of draw ``position`` of an epoch seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(position)]).generate_state(1)[0])


class SeededDraws(torch.utils.data.Dataset):
    """Read ``(position, case index)`` from :class:`EpochSampler`: the transforms seeded by the position.

    Reseeding the chain from ``(seed, position)`` before every sample makes sample
    ``position`` the same patch and augmentation in any worker of any process. The
    random transforms share one generator, drawn from in chain order
    (:meth:`~logvmamba.data.augment.Compose.set_random_state`).
    """

    def __init__(self, data: RawCaseDataset, seed: int):
        self.data, self.seed = data, int(seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, draw: tuple[int, int]):
        position, index = draw
        self.data.transform.set_random_state(seed=_draw_seed(self.seed, position))
        return self.data[index]


def make_loader(dataset: RawDataset | str | os.PathLike, split: str = "train", fold: int | str = 0,
                patch_size: Sequence[int] | None = None, batch_size: int = 2, seed: int = 0,
                num_workers: int = 0, augment: bool | None = None, samples_per_epoch: int | None = None,
                sampling: str | None = None, normalization: str | None = None, cache: bool = False,
                splits: list[dict] | None = None, root: str | os.PathLike | None = None,
                rank: int = 0, world_size: int = 1, spacing: Sequence[float] | None = None):
    """A deterministic ``torch`` DataLoader over one split of one fold.

    Args:
        dataset: a :class:`RawDataset`, a dataset folder, or a name/key looked
            up under ``root`` (see :func:`~logvmamba.data.raw.resolve_dataset_dir`).
        split: ``"train"`` (random patches, augmented, shuffled), ``"val"`` or
            ``"test"`` (in order, no augmentation: whole images with batch size
            1, or, when ``patch_size`` is given, seeded random patches).
        fold: 0-4, or ``"all"`` (train on every training case).
        patch_size: patch (2D ``(H, W)``, 3D ``(X, Y, Z)``); for ``train`` it
            defaults to the registry's (synthetic datasets: the small synthetic
            patch); for ``val``/``test`` None means whole images.
        batch_size: patches per batch (training): the global batch, of which each
            of ``world_size`` processes loads ``batch_size / world_size``.
        seed: seeds transforms and sampling; same seed -> same batches (for
            training whatever ``num_workers`` and ``world_size``).
        num_workers: DataLoader workers (0: load in the main process).
        augment: override augmentation (default: on for ``train`` only).
        samples_per_epoch: draw this many patches per epoch with replacement
            (nnU-Net style, iterations x batch size); default one pass over
            the cases.
        sampling, normalization: override the registry (see :func:`make_transforms`).
        cache: cache the deterministic head of the pipeline (read + normalise) in memory.
        splits: splits to use instead of ``splits_final.json``.
        root: dataset root for name look-ups.
        rank, world_size: this process and the number of processes (training;
            see :class:`EpochSampler`).
        spacing: resample every case to this spacing (the config's ``resample``).

    Returns:
        A ``torch`` DataLoader yielding dicts ``image``, ``label``, ``case_id`` (a list),
        ``spacing`` (see the module docstring for shapes and dtypes).
    """
    data = make_dataset(dataset, split, fold, patch_size, seed, augment, sampling, normalization, cache,
                        splits, root, spacing)
    generator = torch.Generator().manual_seed(int(seed))
    if split != "train":  # in order; case i's patch (if any) drawn from (seed, i) in any worker
        return DataLoader(SeededDraws(data, seed), batch_size=1 if patch_size is None else batch_size,
                          sampler=[(i, i) for i in range(len(data))], num_workers=num_workers,
                          generator=generator)  # whole images differ in size
    return epoch_loader(data, batch_size, seed, samples_per_epoch, num_workers, rank, world_size)


def epoch_loader(data: RawCaseDataset, batch_size: int, seed: int, samples: int | None = None, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1) -> DataLoader:
    """One training epoch over ``data`` (a :func:`make_dataset`): this process's share of the
    draws of :class:`EpochSampler`, read through :class:`SeededDraws`."""
    sampler = EpochSampler(len(data), samples, batch_size, seed, rank, world_size)
    return DataLoader(SeededDraws(data, seed), batch_size=batch_size // world_size, sampler=sampler,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(int(seed)), drop_last=False,
                      persistent_workers=False)
