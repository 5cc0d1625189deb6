"""The four scoring protocols, per case (:func:`score_case`) and over cases (:func:`aggregate`).

Inputs are integer label maps as stored on disk (``(H, W)`` or ``(X, Y, Z)``);
BraTS also takes region masks ``(R, X, Y, Z)``. Each ``score_*_case`` returns a
flat ``dict`` of floats (and a few integer counts), one row of the per-case
table; :func:`aggregate` turns the table into the dataset's summary, with the
dataset's main score (``DatasetInfo.main_metric``) under ``"main"``. Both
dispatch on ``DatasetInfo.scoring`` through :data:`PROTOCOLS`; the sections
below are named by dataset, with their protocol name.

endoscopy, ``endovis`` (U-Mamba ``endoscopy_DSC_Eval.py`` / ``endoscopy_NSD_Eval.py``)
    Per image, the labels present in ground truth *or* prediction (background
    0 excluded): a label only in the prediction scores DSC 0 and NSD 0; a
    label only in the ground truth scores 0 as well (DeepMind's Dice and
    surface Dice of an empty prediction); otherwise DSC and NSD at 2 pixels
    (:func:`~logvmamba.evaluation.metrics.surface_dice`, ``nsd_mode="slab"``
    reproduces U-Mamba's numbers, ``"contour"`` is DeepMind's 2D definition).
    The image score is the mean over those labels; the dataset score the mean
    over images. An image with no foreground on either side (U-Mamba's script
    stops on an assertion there) scores DSC 1 and NSD 1, ``n_labels`` 0.
    U-Mamba rounds each image to 4 decimals before averaging; we do not.
cell, ``instances`` (U-Mamba ``compute_cell_metric.py``, from StarDist's matching)
    Predicted instances are the 8-connected components of the interior class
    (``measure.label(seg == 1)``: no dilation into the boundary class, no
    small-object removal, exactly as U-Mamba). Ground truth instances are the
    instance mask (``labels*-instance``); without one, the 8-connected
    components of the ground-truth interior class stand in. Unless
    ``count_border_cells``, instances with a pixel in the outer 2 pixels are
    removed on both sides. Images of 25 M pixels or more are scored in
    2000-pixel tiles (zero-padded to whole tiles, border cells removed per
    tile, counts summed), as U-Mamba does. Matching at IoU >= 0.5; precision,
    recall, F1 per image (no true positive -> 0; no instance on either side ->
    1, where U-Mamba gives 0); the summary gives the mean and the median F1.
    ``DSC`` is the semantic foreground Dice, prediction ``> 0`` (interior or
    boundary) against ground-truth cells (instance mask ``> 0``, else label
    ``> 0``), computed before border removal; ``DSC_interior`` is U-Mamba's
    ``dice`` column, prediction interior only against ground-truth cells.
brats, ``regions`` (LoG-VMamba / BraTS)
    Regions from the registry's dataset.json labels (whole tumour {1,2,3},
    tumour core {2,3}, enhancing tumour {3} in nnU-Net's remapped labels):
    Dice and HD95 per region. Both empty -> Dice 1, HD95 0; one empty ->
    Dice 0, HD95 = the image diagonal (373.13 on BraTS' 240 x 240 x 155 1 mm
    grid, the BraTS challenge penalty). Spacing from the NIfTI (1 mm for
    BraTS). Main score: mean Dice over WT, TC, ET.
acdc, ``classes``
    Dice and HD95 (mm, from the NIfTI spacing) for RV, MYO, LV (labels 1, 2,
    3), with the same empty rules as BraTS. Main score: mean Dice over the
    three classes.

HD95 is medpy's definition (95th percentile of both directed surface-distance
sets pooled), which LoG-VMamba's BraTS evaluation uses; see
:mod:`logvmamba.evaluation.metrics`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from logvmamba.data.labels import label_to_regions
from logvmamba.data.registry import DatasetInfo, find_info, registered, short_names
from logvmamba.evaluation import metrics as M

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "aggregate",
    "class_regions",
    "score_acdc_case",
    "score_brats_case",
    "score_case",
    "score_cell_case",
    "score_endoscopy_case",
]

def _info(dataset) -> DatasetInfo:
    """A dataset key / folder name, a :class:`DatasetInfo` or a ``RawDataset`` -> its :class:`DatasetInfo`."""
    if isinstance(dataset, DatasetInfo):
        return dataset
    if isinstance(dataset, (str, os.PathLike)):
        info = find_info(os.fspath(dataset))
    else:  # a RawDataset: its registry entry, else its folder name
        info = getattr(dataset, "info", None)
        if info is None and isinstance(getattr(dataset, "path", None), (str, os.PathLike)):
            info = find_info(os.fspath(dataset.path))
    if info is None:
        raise KeyError(f"unknown dataset {dataset!r}; known: {', '.join(registered())}")
    return info


def class_regions(dataset) -> list[tuple[str, tuple[int, ...]]]:
    """The scored classes of a dataset: ``(short name, label values)`` from the registry.

    Region datasets (BraTS): the dataset.json regions in order, e.g.
    ``[("WT", (1, 2, 3)), ("TC", (2, 3)), ("ET", (3,))]``. Class datasets: the
    non-background classes, e.g. ACDC ``[("RV", (1,)), ("MYO", (2,)), ("LV", (3,))]``.
    """
    info = _info(dataset)
    regions = [(k, v) for k, v in info.labels.items() if isinstance(v, tuple)]
    if regions:
        return list(zip(short_names([name for name, _ in regions]), [tuple(int(x) for x in v) for _, v in regions]))
    classes = [(value, name) for value, name in enumerate(info.class_names) if value > 0]
    return list(zip(short_names([name for _, name in classes]), [(value,) for value, _ in classes]))


def _label_map(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        if np.issubdtype(x.dtype, np.bool_):
            return x.astype(np.int32)
        rounded = np.rint(x)
        if not np.array_equal(rounded, x):
            raise ValueError(f"{name} must be an integer label map, got non-integer values")
        x = rounded
    return x.astype(np.int32, copy=False)


# ----------------------------------------------------------------------------
# endoscopy
# ----------------------------------------------------------------------------

def score_endoscopy_case(pred, gt, tolerance: float = 2.0, nsd_mode: str = "slab") -> dict[str, float]:
    """DSC and NSD of one endoscopy image, averaged over the labels present in either map."""
    pred, gt = _label_map(pred, "prediction"), _label_map(gt, "ground truth")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}")
    labels = sorted((set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())) - {0})
    dsc, nsd = [], []
    for value in labels:
        g, p = gt == value, pred == value
        dsc.append(M.dice(g, p))
        nsd.append(M.surface_dice(g, p, tolerance, mode=nsd_mode))
    if not labels:
        return {"DSC": 1.0, "NSD": 1.0, "n_labels": 0}
    return {"DSC": float(np.mean(dsc)), "NSD": float(np.mean(nsd)), "n_labels": len(labels)}


# ----------------------------------------------------------------------------
# cell
# ----------------------------------------------------------------------------

def _tiles(shape: tuple[int, int], size: int) -> Iterable[tuple[slice, slice]]:
    for y in range(0, shape[0], size):
        for x in range(0, shape[1], size):
            yield slice(y, y + size), slice(x, x + size)


def score_cell_case(pred, gt=None, instances=None, threshold: float = 0.5, count_border_cells: bool = False,
                    border_width: int = 2, tile_size: int = 2000, tile_min_pixels: int = 25_000_000,
                    interior_label: int = 1) -> dict[str, float]:
    """Instance F1 (and semantic DSC) of one cell image.

    Args:
        pred: predicted label map (0 background, 1 interior, 2 boundary).
        gt: ground-truth label map (same classes); needed only when
            ``instances`` is None.
        instances: ground-truth instance mask (0 background, ids > 0).
        threshold: IoU needed for a match.
        count_border_cells: keep cells touching the image border.
        border_width: width of the border frame in pixels.
        tile_size, tile_min_pixels: images with at least ``tile_min_pixels``
            pixels are scored tile by tile.
    """
    pred = _label_map(pred, "prediction")
    if instances is not None:
        gt_inst = _label_map(instances, "instance mask")
        gt_fg = gt_inst > 0
    elif gt is not None:
        gt = _label_map(gt, "ground truth")
        gt_inst = M.label_components(gt == interior_label)
        gt_fg = gt > 0
    else:
        raise ValueError("score_cell_case needs the ground-truth instance mask or label map")
    if pred.shape != gt_inst.shape or pred.ndim != 2:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {gt_inst.shape} (2D)")
    pred_inst = M.label_components(pred == interior_label)
    out = {"DSC": M.dice(gt_fg, pred > 0), "DSC_interior": M.dice(gt_fg, pred == interior_label)}

    if gt_inst.size < tile_min_pixels:
        windows = [(slice(None), slice(None))]
        gt_pad, pred_pad = gt_inst, pred_inst
    else:
        padded = tuple(-(-n // tile_size) * tile_size for n in gt_inst.shape)
        gt_pad = np.zeros(padded, np.int32)
        pred_pad = np.zeros(padded, np.int32)
        gt_pad[: gt_inst.shape[0], : gt_inst.shape[1]] = gt_inst
        pred_pad[: pred_inst.shape[0], : pred_inst.shape[1]] = pred_inst
        windows = list(_tiles(padded, tile_size))
    counts = {"n_true": 0, "n_pred": 0, "tp": 0, "fp": 0, "fn": 0}
    for window in windows:
        g, p = gt_pad[window], pred_pad[window]
        if not count_border_cells:
            g, p = M.remove_border_instances(g, border_width), M.remove_border_instances(p, border_width)
        for key, value in M.match_instances(g, p, threshold).items():
            counts[key] += value
    out.update(M.instance_f1(counts["tp"], counts["n_true"], counts["n_pred"]))
    out.update(counts)
    return out


# ----------------------------------------------------------------------------
# BraTS and ACDC: Dice and HD95 per class / region
# ----------------------------------------------------------------------------

def _masks(x, classes: Sequence[tuple[str, tuple[int, ...]]], name: str) -> list[np.ndarray]:
    """Binary masks per class from a label map, or from stacked region masks ``(R, *spatial)``."""
    x = np.asarray(x)
    if x.ndim == 4:
        if x.shape[0] != len(classes):
            raise ValueError(f"{name}: {x.shape[0]} region channels, expected {len(classes)}")
        stack = x > 0.5 if np.issubdtype(x.dtype, np.floating) else x.astype(bool)
        return list(stack)
    return list(label_to_regions(_label_map(x, name), [values for _, values in classes]))


def _dice_hd95(pred, gt, classes, spacing) -> dict[str, float]:
    pred_masks = _masks(pred, classes, "prediction")
    gt_masks = _masks(gt, classes, "ground truth")
    if pred_masks[0].shape != gt_masks[0].shape:
        raise ValueError(f"prediction shape {pred_masks[0].shape} does not match ground truth shape "
                         f"{gt_masks[0].shape}")
    out = {}
    for (name, _), p, g in zip(classes, pred_masks, gt_masks):
        out[f"Dice_{name}"] = M.dice(g, p)
        out[f"HD95_{name}"] = M.hausdorff_distance(g, p, spacing, 95.0)
    return out


def score_brats_case(pred, gt, spacing=None, regions=None) -> dict[str, float]:
    """Dice and HD95 for WT, TC, ET of one BraTS case.

    Args:
        pred, gt: label maps in nnU-Net's remapped convention (1 oedema, 2
            necrosis / non-enhancing, 3 enhancing), or region masks
            ``(3, X, Y, Z)`` (bool, or sigmoid probabilities thresholded at 0.5).
        spacing: voxel size in mm (default 1).
        regions: ``[(name, label values), ...]``; default from the registry.
    """
    return _dice_hd95(pred, gt, regions or class_regions("brats"), spacing)


def score_acdc_case(pred, gt, spacing=None) -> dict[str, float]:
    """Dice and HD95 (in the units of ``spacing``, mm) for RV, MYO, LV of one ACDC volume."""
    return _dice_hd95(pred, gt, class_regions("acdc"), spacing)


def score_case(dataset, pred, gt, spacing=None, instances=None, **options) -> dict[str, float]:
    """Score one case by its dataset's protocol.

    Args:
        dataset: a dataset key (``"brats"``), folder name, :class:`DatasetInfo`
            or ``RawDataset``.
        pred: predicted label map (BraTS: or region masks).
        gt: ground-truth label map, or a case object with ``.label`` (and
            ``.spacing`` / ``.instances``, used when the arguments are None),
            e.g. :func:`logvmamba.data.load_case`'s ``LoadedCase``.
        spacing: voxel size (BraTS / ACDC HD95).
        instances: cell ground-truth instance mask.
        options: passed to the protocol function.
    """
    info = _info(dataset)
    if hasattr(gt, "label"):
        spacing = getattr(gt, "spacing", None) if spacing is None else spacing
        instances = getattr(gt, "instances", None) if instances is None else instances
        gt = gt.label
    pred = np.asarray(pred) if pred is not None else None
    gt = np.asarray(gt) if gt is not None else None
    return _protocol(info).score(info, pred, gt, spacing=spacing, instances=instances, **options)


# ----------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------

def aggregate(per_case, dataset) -> dict:
    """The dataset summary from the per-case table (a DataFrame or a list of dicts).

    Keys: endoscopy ``DSC``, ``NSD`` (means over images); cell ``F1``,
    ``F1_median``, ``precision``, ``recall``, ``DSC``, ``DSC_interior``
    (means) and the pooled counts; brats / acdc ``Dice_<C>``, ``HD95_<C>``
    per class and ``Dice_mean``, ``HD95_mean`` over classes. Always
    ``main`` (the dataset's main score), ``main_metric`` (its key) and
    ``n_cases``.
    """
    import pandas as pd

    info = _info(dataset)
    table = per_case if isinstance(per_case, pd.DataFrame) else pd.DataFrame(list(per_case))
    n = len(table)
    out = _protocol(info).aggregate(info, table)
    main = info.main_metric
    out.update({"main": out[main], "main_metric": main, "n_cases": n})
    return out


def _mean(table, col: str) -> float:
    return float(table[col].mean()) if len(table) else float("nan")


def _score_endovis(info, pred, gt, spacing=None, instances=None, **options):
    return score_endoscopy_case(pred, gt, **options)


def _score_instances(info, pred, gt, spacing=None, instances=None, **options):
    return score_cell_case(pred, gt, instances=instances, **options)


def _score_per_class(info, pred, gt, spacing=None, instances=None, regions=None):
    return _dice_hd95(pred, gt, regions or class_regions(info), spacing)


def _aggregate_endovis(info, table) -> dict:
    return {"DSC": _mean(table, "DSC"), "NSD": _mean(table, "NSD")}


def _aggregate_instances(info, table) -> dict:
    out = {"F1": _mean(table, "F1"), "F1_median": float(table["F1"].median()) if len(table) else float("nan"),
           "precision": _mean(table, "precision"), "recall": _mean(table, "recall"),
           "DSC": _mean(table, "DSC"), "DSC_interior": _mean(table, "DSC_interior")}
    out.update({k: int(table[k].sum()) for k in ("n_true", "n_pred", "tp", "fp", "fn")})
    return out


def _aggregate_per_class(info, table) -> dict:
    names = [name for name, _ in class_regions(info)]
    out = {}
    for metric in ("Dice", "HD95"):
        for name in names:
            out[f"{metric}_{name}"] = _mean(table, f"{metric}_{name}")
        out[f"{metric}_mean"] = float(np.mean([out[f"{metric}_{name}"] for name in names]))
    return out


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A scoring protocol: ``score(info, pred, gt, spacing=, instances=, **options) -> row`` and
    ``aggregate(info, table) -> summary`` (without ``main``, ``main_metric``, ``n_cases``)."""

    score: Callable[..., dict]
    aggregate: Callable[..., dict]


#: ``DatasetInfo.scoring`` -> its protocol
PROTOCOLS = {
    "endovis": Protocol(_score_endovis, _aggregate_endovis),
    "instances": Protocol(_score_instances, _aggregate_instances),
    "regions": Protocol(_score_per_class, _aggregate_per_class),
    "classes": Protocol(_score_per_class, _aggregate_per_class),
}


def _protocol(info: DatasetInfo) -> Protocol:
    try:
        return PROTOCOLS[info.scoring]
    except KeyError:
        raise KeyError(f"{info.key}: unknown scoring protocol {info.scoring!r}; known: "
                       f"{', '.join(PROTOCOLS)}") from None
