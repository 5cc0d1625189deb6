"""Score a folder of predictions against a raw dataset; write ``summary.json`` and ``per_case.csv``.

Predictions are label files named like the ground truth, ``<case_id><file_ending>``
(what ``nnUNetv2_predict`` writes: png for 2D, NIfTI for 3D; BraTS as the
label map of nnU-Net's ``regions_class_order``). A prediction must hold only
dataset.json's label values (no probabilities, no raw BraTS 4s); every scored
case needs one unless ``allow_missing``, which scores a missing one as empty
and reports it. Both outputs are written atomically.

Usage::

    python -m logvmamba.evaluation <dataset> <pred_dir> <out_dir> [--root ROOT] [--cases test|val|files]
        [--fold N] [--allow-missing] [--subset Tr|Ts]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from logvmamba.cli import add_debug_flag, command
from logvmamba.data.errors import DatasetError
from logvmamba.data.formats import read_image_file
from logvmamba.data.raw import open_dataset
from logvmamba.data.splits import evaluation_cases
from logvmamba.evaluation.protocols import aggregate, score_case
from logvmamba.io import atomic_write, atomic_write_text

__all__ = ["PER_CASE_FILE", "SUMMARY_FILE", "evaluate_folder", "evaluate_predictions", "main"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
PER_CASE_FILE = "per_case.csv"


def _read_label(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    array, meta = read_image_file(path, "label")
    if array.shape[0] != 1:
        raise DatasetError(path, f"a label file must have one channel, got {array.shape[0]}")
    return np.rint(array[0]).astype(np.int32), tuple(meta["spacing"])


def _read_prediction(path: Path, allowed: Sequence[int], dataset_key: str | None) -> np.ndarray:
    """A predicted label map, refused unless it holds integers among ``allowed`` only."""
    array, _ = read_image_file(path, "prediction")
    if array.shape[0] != 1:
        raise DatasetError(path, f"a prediction must be a one-channel label map, got {array.shape[0]} channels")
    array = array[0]
    if not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_):
        # NIfTI readers hand back floats; a label map stored that way still holds whole numbers
        off = ~np.isfinite(array) | (np.abs(array - np.rint(array)) > 1e-3)
        if off.any():
            raise DatasetError(path, f"not a label map: {int(off.sum())} voxel(s) are not whole numbers "
                                     f"(values {float(np.nanmin(array)):.4g} to {float(np.nanmax(array)):.4g}); "
                                     f"write the argmax labels, not probabilities")
    labels = np.rint(array).astype(np.int64)
    values = np.unique(labels)
    unknown = np.setdiff1d(values, np.asarray(allowed))
    if unknown.size:
        hint = ""
        if dataset_key == "brats" and 4 in unknown:
            hint = ("; 4 is the raw BraTS enhancing label: predictions use nnU-Net's convention "
                    "(1 oedema, 2 necrosis, 3 enhancing)")
        raise DatasetError(path, f"label value(s) {', '.join(str(int(v)) for v in unknown[:8])} are not in "
                                 f"dataset.json's labels ({', '.join(str(v) for v in allowed)}){hint}")
    return labels.astype(np.int32)


def evaluate_predictions(dataset, pred_dir: str | os.PathLike, case_ids: Sequence[str] | None,
                         summary_path: str | os.PathLike, per_case_path: str | os.PathLike, *,
                         subset: str | None = None, root: str | os.PathLike | None = None,
                         allow_missing: bool = False, **options) -> dict:
    """Score the predictions in ``pred_dir``; write the summary (JSON) and the per-case table (CSV).

    Args:
        dataset: a :class:`~logvmamba.data.RawDataset`, a dataset folder, or a
            name / key under ``root``.
        pred_dir: folder of predicted label files ``<case_id><file_ending>``.
        case_ids: score exactly these cases (every prediction must exist, other
            files of known cases are ignored with a warning); None: every
            prediction file in ``pred_dir``.
        summary_path, per_case_path: the two outputs, each written atomically.
        subset: look cases up in ``"Tr"`` or ``"Ts"`` only (default: Tr, then Ts).
        allow_missing: score a case without a prediction as an empty prediction;
            the summary's ``missing`` and the table's ``missing`` column name them.
        options: passed to the protocol (e.g. ``nsd_mode="contour"``,
            ``count_border_cells=True``).

    Returns:
        The summary dict as written: :func:`~logvmamba.evaluation.aggregate`'s
        keys plus ``dataset``, ``dataset_name``, ``synthetic``, ``options``,
        ``pred_dir``, ``missing``.

    Raises:
        FileNotFoundError: a listed case has no prediction (without
            ``allow_missing``), or ``pred_dir`` holds none.
        DatasetError: a prediction names a case the dataset does not have, or
            holds values that are not dataset.json labels.
    """
    import pandas as pd

    ds = open_dataset(dataset, root)
    info = ds.info
    if info is None:
        raise KeyError(f"{ds.path}: not one of the suite's datasets (endoscopy, cell, brats, acdc) and not named "
                       f"DatasetXXX_Name as a user dataset is")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: prediction folder missing")
    ending = ds.file_ending
    present = sorted(f.name[: -len(ending)] for f in pred_dir.iterdir()
                     if f.name.endswith(ending) and not f.name.startswith("."))
    known = set(ds.case_ids("Tr") if subset in (None, "Tr") else []) | set(ds.case_ids("Ts") if subset in (None, "Ts") else [])
    unknown = [c for c in present if c not in known]
    if unknown:
        raise DatasetError(pred_dir / f"{unknown[0]}{ending}",
                           f"prediction for a case that {ds.name} does not have"
                           + (f" ({len(unknown)} such files: {_listing(unknown)})" if len(unknown) > 1 else ""))
    if case_ids is None:
        case_ids = present
        if not case_ids:
            raise FileNotFoundError(f"{pred_dir}: no prediction files (*{ending})")
    else:
        case_ids = list(case_ids)
        extra = sorted(set(present) - set(case_ids))
        if extra:
            logger.warning("%s: %d prediction(s) of cases that are not scored ignored: %s", pred_dir, len(extra),
                           _listing(extra))
    missing = [c for c in case_ids if c not in set(present)]
    if missing and not allow_missing:
        raise FileNotFoundError(f"{pred_dir}: no prediction for {len(missing)} of {len(case_ids)} scored case(s): "
                                f"{_listing(missing)} (--allow-missing scores them as empty predictions)")
    if missing:
        logger.warning("%s: %d case(s) without a prediction scored as empty: %s", pred_dir, len(missing), _listing(missing))
    allowed = ds.label_values

    from tqdm import tqdm

    logger.info("scoring %d case(s) of %s in %s (%s protocol)", len(case_ids), ds.name, pred_dir, info.scoring)
    rows = []
    for case_id in tqdm(case_ids, desc="score", unit="case", disable=not sys.stderr.isatty(), leave=False):
        files = ds.get(case_id, subset)
        if files.label is None:
            raise FileNotFoundError(f"{ds.path}: case {case_id!r} has no ground-truth label file")
        gt, spacing = _read_label(files.label)
        pred_file = pred_dir / f"{case_id}{ending}"
        if case_id in missing:
            pred = np.zeros_like(gt)
        else:
            pred = _read_prediction(pred_file, allowed, info.key)
        if pred.shape != gt.shape:
            raise DatasetError(pred_file, f"shape {pred.shape} does not match the ground truth {gt.shape}")
        instances = ds.read_instances(files) if info.instance_labels else None
        row = {"case_id": case_id, **score_case(info, pred, gt, spacing=spacing, instances=instances, **options)}
        if allow_missing:
            row["missing"] = case_id in missing
        rows.append(row)

    table = pd.DataFrame(rows)
    summary = {"dataset": info.key, "dataset_name": ds.name, "synthetic": ds.is_synthetic,
               **aggregate(table.drop(columns=["missing"], errors="ignore"), info),
               "options": {k: options[k] for k in sorted(options)},
               "pred_dir": str(pred_dir), "missing": missing}
    with atomic_write(per_case_path) as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    logger.info("wrote %s and %s", summary_path, per_case_path)
    return summary


def _listing(cases: Sequence[str], limit: int = 10) -> str:
    return ", ".join(cases[:limit]) + (", ..." if len(cases) > limit else "")


def evaluate_folder(pred_dir: str | os.PathLike, dataset, out_dir: str | os.PathLike, *,
                    case_ids: Sequence[str] | None = None, **kwargs) -> dict:
    """:func:`evaluate_predictions` writing ``<out_dir>/summary.json`` and ``<out_dir>/per_case.csv``."""
    out_dir = Path(out_dir)
    return evaluate_predictions(dataset, pred_dir, case_ids, out_dir / SUMMARY_FILE, out_dir / PER_CASE_FILE,
                                **kwargs)


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logvmamba.evaluation", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="dataset key, folder name or path")
    parser.add_argument("pred_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--root", default=None, help="folder holding the raw datasets")
    parser.add_argument("--cases", choices=("test", "val", "files"), default="test",
                        help="score the protocol's test cases of --fold (imagesTs, BraTS' held-out fold; default), "
                             "the fold's validation cases, or every prediction file present")
    parser.add_argument("--fold", type=int, default=0, help="the fold whose test / validation cases are scored")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score a case without a prediction as an empty prediction (and report it)")
    parser.add_argument("--subset", choices=("Tr", "Ts"), default=None, help="look cases up in this subset only")
    add_debug_flag(parser)
    parser.add_argument("--nsd-mode", choices=("slab", "contour"), default=None,
                        help="endoscopy NSD: U-Mamba's 'slab' (default) or DeepMind's 2D 'contour'")
    parser.add_argument("--count-border-cells", action="store_true", help="cell: keep cells on the image border")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = {}
    if args.nsd_mode:
        options["nsd_mode"] = args.nsd_mode
    if args.count_border_cells:
        options["count_border_cells"] = True
    case_ids = None
    if args.cases != "files":
        ds = open_dataset(args.dataset, args.root)
        case_ids = evaluation_cases(ds, args.fold, "protocol" if args.cases == "test" else "validation")
        args.dataset = ds
    summary = evaluate_folder(args.pred_dir, args.dataset, args.out_dir, case_ids=case_ids, subset=args.subset,
                              root=args.root, allow_missing=args.allow_missing, **options)
    missing = f", {len(summary['missing'])} without a prediction scored empty" if summary["missing"] else ""
    print(f"{summary['dataset_name']}: {summary['main_metric']} = {summary['main']:.4f} "
          f"over {summary['n_cases']} case(s){missing}")
    return 0
