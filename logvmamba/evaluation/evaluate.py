"""Score a folder of predictions against a raw dataset; write ``summary.json`` and ``per_case.csv``.

Predictions are label files named like the ground truth, ``<case_id><file_ending>``
(what ``nnUNetv2_predict`` writes: png for 2D, NIfTI for 3D; BraTS as the
label map of nnU-Net's ``regions_class_order``). Both outputs are written
atomically.

Usage::

    python -m logvmamba.evaluation <dataset> <pred_dir> <out_dir> [--root ROOT] [--subset Tr|Ts]
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

from logvmamba.data.formats import read_image_file
from logvmamba.data.raw import open_dataset
from logvmamba.evaluation.protocols import aggregate, score_case
from logvmamba.io import atomic_write, atomic_write_text

__all__ = ["PER_CASE_FILE", "SUMMARY_FILE", "evaluate_folder", "evaluate_predictions", "main"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
PER_CASE_FILE = "per_case.csv"


def _read_label(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    array, meta = read_image_file(path, "label")
    if array.shape[0] != 1:
        raise ValueError(f"{path}: a label file must have one channel, got {array.shape[0]}")
    return np.rint(array[0]).astype(np.int32), tuple(meta["spacing"])


def evaluate_predictions(dataset, pred_dir: str | os.PathLike, case_ids: Sequence[str] | None,
                         summary_path: str | os.PathLike, per_case_path: str | os.PathLike, *,
                         subset: str | None = None, root: str | os.PathLike | None = None, **options) -> dict:
    """Score the predictions in ``pred_dir``; write the summary (JSON) and the per-case table (CSV).

    Args:
        dataset: a :class:`~logvmamba.data.RawDataset`, a dataset folder, or a
            name / key under ``root``.
        pred_dir: folder of predicted label files ``<case_id><file_ending>``.
        case_ids: score exactly these cases (every prediction must exist);
            None: every prediction file in ``pred_dir``.
        summary_path, per_case_path: the two outputs, each written atomically.
        subset: look cases up in ``"Tr"`` or ``"Ts"`` only (default: Tr, then Ts).
        options: passed to the protocol (e.g. ``nsd_mode="contour"``,
            ``count_border_cells=True``).

    Returns:
        The summary dict as written: :func:`~logvmamba.evaluation.aggregate`'s
        keys plus ``dataset``, ``dataset_name``, ``synthetic``, ``options``,
        ``pred_dir``.

    Raises:
        FileNotFoundError: a listed case has no prediction, or ``pred_dir`` holds none.
        KeyError: a prediction names a case the dataset does not have.
    """
    import pandas as pd

    ds = open_dataset(dataset, root)
    info = ds.info
    if info is None:
        raise KeyError(f"{ds.path}: not one of the suite's datasets (endoscopy, cell, brats, acdc) and not named "
                       f"DatasetXXX_Name as a user dataset is")
    pred_dir = Path(pred_dir)
    ending = ds.file_ending
    if case_ids is None:
        files = sorted(f for f in pred_dir.iterdir() if f.name.endswith(ending) and not f.name.startswith("."))
        case_ids = [f.name[: -len(ending)] for f in files]
        if not case_ids:
            raise FileNotFoundError(f"{pred_dir}: no prediction files (*{ending})")
    else:
        missing = [c for c in case_ids if not (pred_dir / f"{c}{ending}").is_file()]
        if missing:
            raise FileNotFoundError(f"{pred_dir}: no prediction for {len(missing)} case(s): "
                                    f"{', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}")

    from tqdm import tqdm

    logger.info("scoring %d case(s) of %s in %s (%s protocol)", len(case_ids), ds.name, pred_dir, info.scoring)
    rows = []
    for case_id in tqdm(case_ids, desc="score", unit="case", disable=not sys.stderr.isatty(), leave=False):
        files = ds.get(case_id, subset)
        if files.label is None:
            raise FileNotFoundError(f"{ds.path}: case {case_id!r} has no ground-truth label file")
        gt, spacing = _read_label(files.label)
        pred_file = pred_dir / f"{case_id}{ending}"
        pred, _ = _read_label(pred_file)
        if pred.shape != gt.shape:
            raise ValueError(f"{pred_file}: shape {pred.shape} does not match the ground truth {gt.shape}")
        instances = ds.read_instances(files) if info.instance_labels else None
        rows.append({"case_id": case_id, **score_case(info, pred, gt, spacing=spacing, instances=instances,
                                                      **options)})

    table = pd.DataFrame(rows)
    summary = {"dataset": info.key, "dataset_name": ds.name, "synthetic": ds.is_synthetic,
               **aggregate(table, info), "options": {k: options[k] for k in sorted(options)},
               "pred_dir": str(pred_dir)}
    with atomic_write(per_case_path) as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    logger.info("wrote %s and %s", summary_path, per_case_path)
    return summary


def evaluate_folder(pred_dir: str | os.PathLike, dataset, out_dir: str | os.PathLike, *,
                    case_ids: Sequence[str] | None = None, **kwargs) -> dict:
    """:func:`evaluate_predictions` writing ``<out_dir>/summary.json`` and ``<out_dir>/per_case.csv``."""
    out_dir = Path(out_dir)
    return evaluate_predictions(dataset, pred_dir, case_ids, out_dir / SUMMARY_FILE, out_dir / PER_CASE_FILE,
                                **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logvmamba.evaluation", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="dataset key, folder name or path")
    parser.add_argument("pred_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--root", default=None, help="folder holding the raw datasets")
    parser.add_argument("--subset", choices=("Tr", "Ts"), default=None)
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
    summary = evaluate_folder(args.pred_dir, args.dataset, args.out_dir, subset=args.subset, root=args.root,
                              **options)
    print(f"{summary['dataset_name']}: {summary['main_metric']} = {summary['main']:.4f} "
          f"over {summary['n_cases']} case(s)")
    return 0
