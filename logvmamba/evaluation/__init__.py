"""Scoring: the four datasets' protocols, per case and over a test set.

API
    ``score_case(dataset, pred, gt, spacing=None, instances=None, **options) -> dict``
    (``gt`` a label map, or a ``LoadedCase`` whose label / spacing / instances are used)
    dispatching to ``score_endoscopy_case`` (DSC, NSD at 2 px), ``score_cell_case``
    (instance precision / recall / F1 at IoU 0.5, DSC), ``score_brats_case``
    (Dice, HD95 for WT / TC / ET) and ``score_acdc_case`` (Dice, HD95 in mm for
    RV / MYO / LV); ``aggregate(per_case, dataset) -> dict`` with the dataset's
    main score under ``"main"`` (endoscopy DSC, cell mean F1, BraTS and ACDC
    mean Dice over classes); ``evaluate_predictions(dataset, pred_dir, case_ids,
    summary_path, per_case_path)`` and ``evaluate_folder(pred_dir, dataset,
    out_dir)`` (writing ``summary.json`` and ``per_case.csv``) for a folder of
    predicted label files.
    Metric functions (:mod:`logvmamba.evaluation.metrics`): ``dice``,
    ``hausdorff_distance``, ``surface_dice``, ``label_components``,
    ``remove_border_instances``, ``match_instances``, ``instance_f1``.

The protocols, their sources (U-Mamba's evaluation scripts, StarDist's
matching, DeepMind's surface-distance, medpy's HD95 as LoG-VMamba uses it)
and the empty-mask rules are described in
:mod:`logvmamba.evaluation.protocols` and :mod:`logvmamba.evaluation.metrics`.

Examples::

    >>> import numpy as np
    >>> from logvmamba.evaluation import score_case, aggregate
    >>> gt = np.zeros((8, 8), int); gt[2:5, 2:5] = 1
    >>> pred = np.roll(gt, 1, axis=1)
    >>> score_case("endoscopy", pred, gt)["DSC"]
    0.6666666666666666
    >>> aggregate([score_case("endoscopy", pred, gt)], "endoscopy")["main"]
    0.6666666666666666
"""

from __future__ import annotations

from logvmamba.evaluation.evaluate import (
    PER_CASE_FILE,
    SUMMARY_FILE,
    evaluate_folder,
    evaluate_predictions,
)
from logvmamba.evaluation.metrics import (
    dice,
    hausdorff_distance,
    image_diagonal,
    instance_f1,
    label_components,
    match_instances,
    remove_border_instances,
    surface_dice,
)
from logvmamba.evaluation.protocols import (
    PROTOCOLS,
    aggregate,
    class_regions,
    score_acdc_case,
    score_brats_case,
    score_case,
    score_cell_case,
    score_endoscopy_case,
)

__all__ = [
    "PER_CASE_FILE",
    "PROTOCOLS",
    "SUMMARY_FILE",
    "aggregate",
    "class_regions",
    "dice",
    "evaluate_folder",
    "evaluate_predictions",
    "hausdorff_distance",
    "image_diagonal",
    "instance_f1",
    "label_components",
    "match_instances",
    "remove_border_instances",
    "score_acdc_case",
    "score_brats_case",
    "score_case",
    "score_cell_case",
    "score_endoscopy_case",
    "surface_dice",
]
