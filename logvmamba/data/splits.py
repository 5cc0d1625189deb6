"""Cross-validation splits in nnU-Net's ``splits_final.json`` schema.

The file is a JSON list with one object per fold, ``{"train": [...], "val":
[...]}`` (case ids). The suite keeps it in the raw dataset folder
(``<dataset>/splits_final.json``); a file that nnU-Net wrote to
``$nnUNet_preprocessed/<DatasetName>/splits_final.json`` is used when the raw
folder has none. When neither exists the splits are generated, written to the
raw folder, and are the same for the same case ids every time:

``kfold`` (endoscopy, cell, any other dataset)
    nnU-Net's default: ``KFold(5, shuffle=True, random_state=12345)`` over the
    sorted training case ids (reproduced exactly, including the order of the
    ``val`` lists).
``patient_kfold`` (acdc)
    grouped by patient as nnU-Net's ACDC converter does: sorted unique patient
    ids (case id without ``_frameNN``) shuffled by
    ``np.random.RandomState(1234)``; fold ``k`` validates on patients
    ``k::5``; both frames of a patient always fall in the same fold.
``brats_holdout`` (brats, the LoG-VMamba protocol)
    fold 0 of ``KFold(5, shuffle=True, random_state=seed)`` over the sorted
    case ids is the held-out test set; the remaining cases are split again with
    the same KFold into 5 train/val folds. Every fold object carries the
    held-out ids under an extra ``"test"`` key (nnU-Net reads only
    ``train``/``val`` and ignores it). 369 cases -> 74 test, 236 train, 59 val.

``split="test"`` is that ``"test"`` list when present, else the ``imagesTs``
cases. ``fold="all"`` trains on every training case (nnU-Net's ``all``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from logvmamba.data.errors import DatasetError
from logvmamba.data.raw import CaseFiles, RawDataset
from logvmamba.io import atomic_write_text

__all__ = [
    "EVALUATE_ON",
    "evaluation_cases",
    "NNUNET_SPLIT_SEED",
    "ACDC_SPLIT_SEED",
    "SPLITS_FILE",
    "PROTOCOLS",
    "kfold_split",
    "patient_kfold_split",
    "brats_holdout_split",
    "make_splits",
    "load_splits",
    "write_splits",
    "get_splits",
    "split_cases",
    "split_case_ids",
    "patient_of",
]

NNUNET_SPLIT_SEED = 12345
ACDC_SPLIT_SEED = 1234
SPLITS_FILE = "splits_final.json"
PROTOCOLS = ("kfold", "patient_kfold", "brats_holdout")


def _kfold_test_indices(n: int, n_splits: int, seed: int) -> list[np.ndarray]:
    """sklearn ``KFold(n_splits, shuffle=True, random_state=seed)`` test indices, fold by fold."""
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    if n < n_splits:
        raise ValueError(f"cannot make {n_splits} folds from {n} case(s)")
    indices = np.arange(n)
    np.random.RandomState(seed).shuffle(indices)
    sizes = np.full(n_splits, n // n_splits, dtype=int)
    sizes[: n % n_splits] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [indices[bounds[k]:bounds[k + 1]] for k in range(n_splits)]


def kfold_split(case_ids: Sequence[str], n_splits: int = 5, seed: int = NNUNET_SPLIT_SEED) -> list[dict]:
    """nnU-Net's default split: KFold(shuffle, seed) over the *sorted* case ids.

    Identical to nnU-Net's ``generate_crossval_split`` (both lists in sorted
    order, as sklearn's KFold returns index masks).
    """
    ids = sorted(str(c) for c in case_ids)
    splits = []
    for test in _kfold_test_indices(len(ids), n_splits, seed):
        mask = np.ones(len(ids), dtype=bool)
        mask[test] = False
        splits.append({"train": [ids[i] for i in np.flatnonzero(mask)], "val": [ids[i] for i in np.sort(test)]})
    return splits


def patient_of(case_id: str) -> str:
    """Patient id of a case: the case id without a trailing ``_frameNN``."""
    return re.sub(r"_frame\d+$", "", case_id)


def patient_kfold_split(case_ids: Sequence[str], n_splits: int = 5, seed: int = ACDC_SPLIT_SEED) -> list[dict]:
    """Folds grouped by patient, as nnU-Net's ACDC converter makes them."""
    ids = sorted(str(c) for c in case_ids)
    patients = np.unique([patient_of(c) for c in ids])
    if len(patients) < n_splits:
        raise ValueError(f"cannot make {n_splits} folds from {len(patients)} patient(s)")
    np.random.RandomState(seed).shuffle(patients)
    splits = []
    for fold in range(n_splits):
        val_patients = set(patients[fold::n_splits].tolist())
        splits.append({"train": [c for c in ids if patient_of(c) not in val_patients],
                       "val": [c for c in ids if patient_of(c) in val_patients]})
    return splits


def brats_holdout_split(case_ids: Sequence[str], n_splits: int = 5, seed: int = NNUNET_SPLIT_SEED) -> list[dict]:
    """The LoG-VMamba BraTS protocol: KFold fold 0 held out as test, the rest KFold again."""
    outer = kfold_split(case_ids, n_splits, seed)[0]
    test = list(outer["val"])
    return [dict(fold, test=test) for fold in kfold_split(outer["train"], n_splits, seed)]


def make_splits(case_ids: Sequence[str], protocol: str = "kfold", seed: int | None = None,
                n_splits: int = 5) -> list[dict]:
    """Generate splits with one of :data:`PROTOCOLS` (default seeds as documented above)."""
    if protocol == "kfold":
        return kfold_split(case_ids, n_splits, NNUNET_SPLIT_SEED if seed is None else seed)
    if protocol == "patient_kfold":
        return patient_kfold_split(case_ids, n_splits, ACDC_SPLIT_SEED if seed is None else seed)
    if protocol == "brats_holdout":
        return brats_holdout_split(case_ids, n_splits, NNUNET_SPLIT_SEED if seed is None else seed)
    raise ValueError(f"unknown split protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def write_splits(path: str | os.PathLike, splits: list[dict]) -> Path:
    """Write splits as ``splits_final.json`` (indent 4, key order kept)."""
    return atomic_write_text(path, json.dumps(splits, indent=4) + "\n")


def load_splits(path: str | os.PathLike, known_ids: Sequence[str] | None = None) -> list[dict]:
    """Read and check a ``splits_final.json``.

    Raises:
        DatasetError: malformed file, a listed case id not in ``known_ids``, or a case in two
            of one fold's ``train``, ``val`` and ``test``.
    """
    path = Path(path)
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(path, "missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(path, f"malformed JSON ({err})") from None
    if not isinstance(splits, list) or not splits:
        raise DatasetError(path, "malformed: expected a non-empty list of {\"train\": [...], \"val\": [...]}")
    known = None if known_ids is None else set(known_ids)
    for k, fold in enumerate(splits):
        if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
            raise DatasetError(path, f"malformed: fold {k} must be an object with 'train' and 'val' lists")
        for key, ids in fold.items():
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise DatasetError(path, f"malformed: fold {k} {key!r} must be a list of case ids")
            if known is not None and key in ("train", "val", "test"):
                unknown = [i for i in ids if i not in known]
                if unknown:
                    raise DatasetError(path, f"fold {k} {key!r} lists case(s) not in imagesTr: "
                                             f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}")
        _check_disjoint(path, k, fold)
    return splits


def _check_disjoint(path: Path, k: int, fold: dict) -> None:
    """A case validated (or held out) while it trains makes the fold's scores meaningless."""
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(fold.get(a, ())) & set(fold.get(b, ())))
        if both:
            raise DatasetError(path, f"fold {k} lists {len(both)} case(s) in both {a!r} and {b!r}: "
                                     f"{', '.join(both[:5])}{', ...' if len(both) > 5 else ''}")


def _protocol_of(ds: RawDataset) -> str:
    return "kfold" if ds.info is None else ds.info.split_protocol


def get_splits(dataset: RawDataset | str | os.PathLike, protocol: str | None = None, seed: int | None = None,
               write: bool = True) -> list[dict]:
    """The splits of a dataset: read ``splits_final.json``, or generate and write it.

    Args:
        dataset: a :class:`RawDataset` or its folder.
        protocol: generation protocol when no file exists (default: the
            dataset's ``split_protocol`` from the registry, else ``kfold``).
        seed: generation seed (default: the protocol's documented seed).
        write: write a generated split to ``<dataset>/splits_final.json``.
    """
    ds = dataset if isinstance(dataset, RawDataset) else RawDataset(dataset)
    ids = ds.case_ids("Tr")
    own = ds.path / SPLITS_FILE
    if own.is_file():
        return load_splits(own, ids)
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if preprocessed:
        theirs = Path(preprocessed) / ds.path.name / SPLITS_FILE
        if theirs.is_file():
            return load_splits(theirs, ids)
    splits = make_splits(ids, protocol or _protocol_of(ds), seed)
    if write:
        try:
            write_splits(own, splits)
        except OSError as err:
            warnings.warn(f"{own}: could not write generated splits ({err}); using them in memory", stacklevel=2)
    return splits


def split_cases(dataset: RawDataset | str | os.PathLike, split: str = "train", fold: int | str = 0,
                splits: list[dict] | None = None) -> list[CaseFiles]:
    """The cases (:class:`CaseFiles`) of ``split`` in ``fold``; see :func:`split_case_ids`."""
    ds = dataset if isinstance(dataset, RawDataset) else RawDataset(dataset)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    splits = get_splits(ds) if splits is None else splits
    if fold == "all":
        entry = {"train": ds.case_ids("Tr"), "val": []}
        if "test" in splits[0]:
            held_out = set(splits[0]["test"])
            entry = {"train": [c for c in entry["train"] if c not in held_out], "val": [],
                     "test": list(splits[0]["test"])}
    elif isinstance(fold, (int, np.integer)) and not isinstance(fold, bool) and 0 <= int(fold) < len(splits):
        entry = splits[int(fold)]
    else:
        raise ValueError(f"fold must be 'all' or an int in [0, {len(splits) - 1}], got {fold!r}")
    if split == "test" and "test" not in entry:
        return ds.cases("Ts")
    by_id = {c.case_id: c for c in ds.cases("Tr")}
    missing = [c for c in entry[split] if c not in by_id]
    if missing:
        raise DatasetError(ds.path / SPLITS_FILE, f"fold {fold} {split!r} lists case(s) not in imagesTr: "
                                                  f"{', '.join(missing[:5])}")
    return [by_id[c] for c in entry[split]]


def split_case_ids(dataset: RawDataset | str | os.PathLike, split: str = "train", fold: int | str = 0,
                   splits: list[dict] | None = None) -> list[str]:
    """Case ids of ``split`` (``"train"``, ``"val"``, ``"test"``) in ``fold`` (int or ``"all"``).

    ``test`` is the fold's ``"test"`` list (BraTS protocol; those cases live in
    imagesTr) when present, else every imagesTs case. ``fold="all"`` trains on
    every training case not held out as test, with an empty ``val``.
    """
    return [c.case_id for c in split_cases(dataset, split, fold, splits)]


#: what a run is scored on: ``protocol`` (the held-out test cases) or ``validation``
EVALUATE_ON = ("protocol", "validation")


def evaluation_cases(ds: RawDataset, fold: int, evaluate_on: str = "protocol") -> list[str]:
    """The cases a run scores. ``protocol``: the held-out test cases (imagesTs, or BraTS' held-out
    fold), else the fold's validation cases; ``validation``: the fold's validation cases."""
    if evaluate_on not in EVALUATE_ON:
        raise ValueError(f"evaluate_on {evaluate_on!r} is not one of {EVALUATE_ON}")
    cases = split_case_ids(ds, "test", fold) if evaluate_on == "protocol" else []
    return cases or split_case_ids(ds, "val", fold)
