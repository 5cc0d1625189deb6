"""Datasets of the suite: one on-disk format, converters, synthetic stand-ins, loaders.

Every dataset lives on disk as an nnU-Net v2 raw dataset
(``<root>/DatasetXXX_Name/{dataset.json, imagesTr, labelsTr, ...}``); users who
already have nnU-Net raw datasets point the suite at them unchanged. The four
benchmarks are keyed ``endoscopy``, ``cell``, ``brats``, ``acdc``
(:data:`DATASETS`); docs/datasets.md says where to get each and how to convert
it.

API (all errors about data on disk are :class:`DatasetError`, one line,
naming the file):

Registry (:mod:`logvmamba.data.registry`)
    ``DATASETS[key] -> DatasetInfo`` (nnU-Net name/id, spatial_dims,
    in_channels, num_outputs, output_kind, labels, patch_size,
    synthetic_name, synthetic_patch_size, url, ...); ``get_info(key)``;
    ``find_info(name_or_key)``.
Locating and reading (:mod:`logvmamba.data.raw`)
    ``resolve_dataset_dir(name_or_path, root=None, synthetic=False) -> Path``
    (``root`` from the config; ``$nnUNet_raw`` only as a fallback);
    ``open_dataset(dataset, root=None) -> RawDataset`` (a dataset, folder or name);
    ``RawDataset(path)``: ``.cases(subset) / .case_ids(subset) /
    .read_case(case_id) -> CaseData / .read_instances(case_id) /
    .validate()``, plus ``.labels``, ``.regions``, ``.num_channels``,
    ``.num_classes``, ``.spatial_dims``, ``.is_synthetic``, ``.info``.
File formats (:mod:`logvmamba.data.formats`)
    ``read_image_file(path) -> (array, meta)``; ``save_png``, ``save_nifti(path,
    array, like=reference)``, ``save_image_file(path, array, like=None)`` (by
    file ending), ``save_instance_mask``, ``write_dataset_json``,
    ``staged_dataset_dir``; every writer replaces its file atomically.
Label conversions (:mod:`logvmamba.data.labels`)
    ``instance_to_semantic(instances)``; ``label_to_regions(label, regions)``;
    ``regions_to_label(masks, regions_class_order)``.
Splits (:mod:`logvmamba.data.splits`)
    ``get_splits(dataset, protocol=None, seed=None, write=True) -> list[dict]``
    (``splits_final.json``, generated when absent);
    ``split_case_ids(dataset, split, fold) -> list[str]``;
    ``make_splits(case_ids, protocol, seed)``.
Loading (:mod:`logvmamba.data.loading`, imports torch on first use)
    ``make_loader(dataset, split="train", fold=0, patch_size=None,
    batch_size=2, seed=0, num_workers=0, augment=None,
    samples_per_epoch=None, ...) -> DataLoader`` of dicts ``image``
    ``(B, C, *patch)``, ``label`` (``(B, 1, *patch)`` int64 classes, or
    ``(B, R, *patch)`` float regions for BraTS), ``case_id``;
    ``load_case(dataset, case_id, subset=None) -> LoadedCase`` (``image``
    normalised as training normalises, without MONAI, ``label``, ``regions``,
    ``spacing``, ``affine``, ``header``, ``instances``).
Writing datasets
    ``synthetic.generate(key, dest_root, seed=0, num_cases=None)`` and
    ``python -m logvmamba.data.synthetic <key|all> <dest_root> [--seed N] [--cases N]``
    (one generator per key in ``synthetic.GENERATORS``);
    ``convert.convert(key, source_dir, dest_dir)`` and
    ``python -m logvmamba.data.convert <key> <source_dir> <dest_dir>``
    (one converter per key in ``convert.CONVERTERS``).

Examples::

    >>> from logvmamba.data import DATASETS, make_loader, load_case   # doctest: +SKIP
    >>> from logvmamba.data.synthetic import generate                  # doctest: +SKIP
    >>> folder = generate("brats", "/tmp/raw", seed=0)                 # doctest: +SKIP
    >>> batch = next(iter(make_loader(folder, "train", fold=0, seed=1)))  # doctest: +SKIP
    >>> batch["image"].shape, batch["label"].shape                     # doctest: +SKIP
    (torch.Size([2, 4, 32, 32, 32]), torch.Size([2, 3, 32, 32, 32]))
"""

from __future__ import annotations

import importlib

from logvmamba.data.errors import DatasetError
from logvmamba.data.formats import read_image_file, save_image_file, save_instance_mask, save_nifti, save_png
from logvmamba.data.labels import instance_to_semantic, label_to_regions, regions_to_label
from logvmamba.data.raw import CaseData, CaseFiles, RawDataset, open_dataset, resolve_dataset_dir
from logvmamba.data.registry import DATASETS, DatasetInfo, find_info, get_info
from logvmamba.data.splits import get_splits, make_splits, split_case_ids

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetError",
    "get_info",
    "find_info",
    "resolve_dataset_dir",
    "open_dataset",
    "RawDataset",
    "CaseFiles",
    "CaseData",
    "read_image_file",
    "save_png",
    "save_nifti",
    "save_image_file",
    "save_instance_mask",
    "instance_to_semantic",
    "label_to_regions",
    "regions_to_label",
    "get_splits",
    "make_splits",
    "split_case_ids",
    "make_loader",
    "load_case",
    "LoadedCase",
]

_LAZY = {"make_loader", "load_case", "LoadedCase"}


def __getattr__(name: str):
    # the loaders import torch; keep `import logvmamba.data` light for converters
    if name in _LAZY:
        module = "logvmamba.data.loading" if name == "make_loader" else "logvmamba.data.cases"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
