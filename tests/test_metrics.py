"""Scoring: metrics against hand-computed values, the four protocols, aggregation, folder evaluation."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from logvmamba.data import RawDataset
from logvmamba.data.formats import save_png
from logvmamba.evaluation import (
    aggregate,
    class_regions,
    dice,
    evaluate_folder,
    hausdorff_distance,
    image_diagonal,
    instance_f1,
    label_components,
    match_instances,
    remove_border_instances,
    score_acdc_case,
    score_brats_case,
    score_case,
    score_cell_case,
    score_endoscopy_case,
    surface_dice,
)


SQRT2, SQRT3 = math.sqrt(2), math.sqrt(3)


def square(shape, rows, cols, value=1, out=None):
    out = np.zeros(shape, dtype=np.int32) if out is None else out
    out[rows[0]:rows[1], cols[0]:cols[1]] = value
    return out


# ----------------------------------------------------------------------------
# Dice
# ----------------------------------------------------------------------------

def test_dice_of_two_squares_shifted_by_one_pixel():
    gt = square((8, 8), (2, 5), (2, 5))
    pred = square((8, 8), (2, 5), (3, 6))
    assert dice(gt, pred) == pytest.approx(2 * 6 / 18)  # two 3x3 squares overlapping in 2 columns


@pytest.mark.parametrize("gt_on, pred_on, expected", [(False, False, 1.0), (True, False, 0.0), (False, True, 0.0)])
def test_dice_empty_masks(gt_on, pred_on, expected):
    gt = square((6, 6), (1, 3), (1, 3)) * gt_on
    pred = square((6, 6), (1, 3), (1, 3)) * pred_on
    assert dice(gt, pred) == expected


def test_dice_rejects_a_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))


# ----------------------------------------------------------------------------
# HD95
# ----------------------------------------------------------------------------

def test_hd95_of_two_points_and_two_lines():
    a = square((10, 10), (2, 3), (2, 3))
    b = square((10, 10), (2, 3), (6, 7))
    # single pixels 4 columns apart (0.5 mm columns: 2 mm); lines 3 rows apart, every distance 3 rows
    assert hausdorff_distance(a, b) == pytest.approx(4.0)
    assert hausdorff_distance(a, b, spacing=(1.0, 0.5)) == pytest.approx(2.0)
    top = square((10, 10), (2, 3), (1, 6))
    bottom = square((10, 10), (5, 6), (1, 6))
    assert hausdorff_distance(top, bottom) == pytest.approx(3.0)
    assert hausdorff_distance(top, bottom, spacing=2.5) == pytest.approx(7.5)


def test_hd95_pools_both_directions_before_the_percentile():
    # 10-pixel line; the prediction adds one pixel 10 px away. Pooled distances: 20 zeros and one 10,
    # so the 95th percentile (index 0.95 * 20 = 19) is 0 (medpy / LoG-VMamba). The larger of the two
    # directed 95th percentiles (MONAI) would be 5 (index 9.5 of ten zeros and one 10).
    gt = square((12, 24), (5, 6), (0, 10))
    pred = gt.copy()
    pred[5, 19] = 1
    assert hausdorff_distance(gt, pred) == 0.0
    assert hausdorff_distance(gt, pred, percentile=100) == pytest.approx(10.0)


def test_hd95_empty_masks():
    mask = square((10, 20), (2, 4), (2, 4))
    empty = np.zeros_like(mask)
    # one side empty: the image diagonal, sqrt of the squared physical extents
    assert hausdorff_distance(empty, empty) == 0.0
    assert hausdorff_distance(mask, empty) == pytest.approx(math.sqrt(10 ** 2 + 20 ** 2))
    assert hausdorff_distance(empty, mask, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(20 ** 2 + 20 ** 2))
    assert hausdorff_distance(empty, mask, empty_penalty=373.13) == 373.13


def test_image_diagonal_is_the_brats_penalty_on_the_brats_grid():
    # sqrt(240^2 + 240^2 + 155^2) = 373.129..., the BraTS challenge's penalty for one empty mask
    assert image_diagonal((240, 240, 155)) == pytest.approx(373.13, abs=5e-3)


def test_hd95_3d_with_anisotropic_spacing():
    gt = np.zeros((6, 6, 6), bool)
    gt[2:4, 2:4, 1:3] = True
    pred = np.roll(gt, 1, axis=2)
    # 16 pooled distances: 8 zeros (shared slice) and 8 of one slice (5 mm); 95th percentile = 5
    assert hausdorff_distance(gt, pred, spacing=(1.5, 1.5, 5.0)) == pytest.approx(5.0)


def _blobs(seed: int, shape) -> tuple[np.ndarray, np.ndarray]:
    """Two random smooth non-empty masks of ``shape``."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < 2:
        mask = ndimage.gaussian_filter(rng.standard_normal(shape), 2) > 0.1
        if mask.any():
            out.append(mask)
    return out[0], out[1]


def _monai(mask):
    import torch

    return torch.as_tensor(mask[None, None], dtype=torch.float64)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape, spacing", [((24, 30), (1.0, 2.0)), ((12, 14, 10), (1.5, 1.0, 3.0))])
def test_hausdorff_distance_matches_monai(seed, shape, spacing):
    # MONAI's HD95 is the larger of the two directed 95th percentiles, ours (medpy, LoG-VMamba) the 95th
    # percentile of both directions pooled; the two agree at the 100th percentile, and at the 95th when
    # we pool MONAI's own directed surface distances.
    from monai.metrics import compute_hausdorff_distance
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    gt, pred = _blobs(seed, shape)
    hd = compute_hausdorff_distance(_monai(pred), _monai(gt), percentile=None, spacing=list(spacing)).item()
    assert hausdorff_distance(gt, pred, spacing, percentile=100) == pytest.approx(hd, rel=1e-6)  # MONAI computes in float32
    edges_pred, edges_gt = get_mask_edges(pred, gt, crop=True)
    pooled = np.concatenate([get_surface_distance(edges_pred, edges_gt, "euclidean", spacing=spacing),
                             get_surface_distance(edges_gt, edges_pred, "euclidean", spacing=spacing)])
    assert hausdorff_distance(gt, pred, spacing) == pytest.approx(float(np.percentile(pooled, 95)), rel=1e-6)


# ----------------------------------------------------------------------------
# NSD
# ----------------------------------------------------------------------------

def test_nsd_of_two_single_pixels_three_apart():
    # each pixel has 4 corner elements of equal size; the two corners facing the other pixel are 2 px
    # from its nearest corners, the two far ones 3 px
    a = square((8, 10), (2, 3), (2, 3))
    b = square((8, 10), (2, 3), (5, 6))
    for mode in ("slab", "contour"):
        assert surface_dice(a, b, 1.0, mode=mode) == 0.0
        assert surface_dice(a, b, 2.0, mode=mode) == pytest.approx(0.5)
        assert surface_dice(a, b, 3.0, mode=mode) == pytest.approx(1.0)


def test_nsd_of_two_squares_one_column_apart_by_hand():
    # 3x3 squares, columns 2-4 and 8-10: corner grid 4 x 4 per square; at tolerance 1 only the column
    # of corners facing the other square counts.
    gt = square((9, 14), (3, 6), (2, 5))
    pred = square((9, 14), (3, 6), (6, 9))
    # DeepMind 2D contour: 8 edge corners of length 1, 4 outer corners of sqrt(2)/2
    contour = (2 + SQRT2) / (8 + 2 * SQRT2)
    assert surface_dice(gt, pred, 1.0, mode="contour") == pytest.approx(contour)
    # U-Mamba's slab: 4 inner corners of area 1, 8 edge corners sqrt(2)/2, 4 outer corners sqrt(3)/8
    slab = (2 * SQRT3 / 8 + 2 * SQRT2 / 2) / (4 + 8 * SQRT2 / 2 + 4 * SQRT3 / 8)
    assert surface_dice(gt, pred, 1.0, mode="slab") == pytest.approx(slab)
    for mode in ("slab", "contour"):
        assert surface_dice(gt, pred, 2.0, mode=mode) == pytest.approx(0.5)


def test_nsd_matches_deepmind_surface_distance():
    # reference values from DeepMind surface-distance 0.1: compute_surface_dice_at_tolerance(
    # compute_surface_distances(g[..., None], p[..., None], [1, 1, 1]), tol) for "slab" (U-Mamba's
    # call) and compute_surface_distances(g, p, [1, 1]) for "contour"
    yy, xx = np.mgrid[:40, :48]
    gt = (yy - 18) ** 2 + (xx - 20) ** 2 <= 11 ** 2
    pred = (np.abs(yy - 21) <= 8) & (np.abs(xx - 25) <= 12)
    expected = {("slab", 2.0): 0.829142070354027, ("contour", 2.0): 0.36941238380968905,
                ("slab", 1.0): 0.7694691162040168, ("contour", 1.0): 0.22456358002894014}
    for (mode, tol), value in expected.items():
        assert surface_dice(gt, pred, tol, mode=mode) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tolerance", [1.0, 2.0])
def test_nsd_slab_matches_monai_subvoxel_surface_dice(seed, tolerance):
    # U-Mamba's slab is DeepMind's 3D surface Dice of the image as a one-voxel slab, which MONAI's
    # compute_surface_dice(use_subvoxels=True) implements independently
    from monai.metrics import compute_surface_dice

    gt, pred = _blobs(seed, (30, 34))
    expected = compute_surface_dice(_monai(pred[..., None]), _monai(gt[..., None]), [tolerance],
                                    include_background=True, use_subvoxels=True, spacing=[1.0, 1.0, 1.0]).item()
    assert surface_dice(gt, pred, tolerance, mode="slab") == pytest.approx(expected, abs=1e-6)


def test_nsd_empty_masks_and_arguments():
    mask = square((6, 6), (1, 3), (1, 3))
    empty = np.zeros_like(mask)
    assert surface_dice(empty, empty) == 1.0
    assert surface_dice(mask, empty) == 0.0
    assert surface_dice(empty, mask, mode="contour") == 0.0
    with pytest.raises(ValueError, match="mode"):
        surface_dice(mask, mask, mode="3d")
    with pytest.raises(ValueError, match="spacing"):
        surface_dice(mask, mask, spacing=(1.0, 2.0), mode="slab")
    with pytest.raises(ValueError, match="2D"):
        surface_dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)))


# ----------------------------------------------------------------------------
# instances
# ----------------------------------------------------------------------------

def test_label_components_is_8_connected_by_default():
    mask = np.zeros((5, 5), bool)
    mask[1, 1] = mask[2, 2] = True
    assert label_components(mask).max() == 1
    assert label_components(mask, connectivity=1).max() == 2


def test_remove_border_instances_drops_cells_in_the_two_pixel_frame():
    inst = np.zeros((12, 12), np.int32)
    inst[1:4, 5:8] = 7    # reaches row 1: in the frame
    inst[4:7, 4:7] = 3    # interior
    inst[8:10, 2:5] = 9   # starts at column 2: just inside
    out = remove_border_instances(inst)
    assert out.max() == 2 and set(np.unique(out)) == {0, 1, 2}
    assert (out[4:7, 4:7] == 1).all() and (out[8:10, 2:5] == 2).all() and not out[1:4, 5:8].any()


def test_match_instances_is_one_to_one():
    gt = np.zeros((6, 8), np.int32)
    gt[1:3, 2:6] = 5                      # one 8-pixel cell
    pred = np.zeros_like(gt)
    pred[1:3, 2:4], pred[1:3, 4:6] = 1, 2  # two halves, each IoU 4/8 = 0.5
    assert match_instances(gt, pred) == {"n_true": 1, "n_pred": 2, "tp": 1, "fp": 1, "fn": 0}
    assert match_instances(gt, pred, threshold=0.51)["tp"] == 0


def cell_scene():
    """24 x 24 image: gt cells A, B, C inside, D on the border; predictions by IoU 1, 0.5, 7/16, 1, plus a stray E."""
    shape = (24, 24)
    inst = square(shape, (3, 7), (3, 7), 1)              # A: 16 px
    square(shape, (3, 7), (10, 14), 2, inst)            # B: 16 px
    square(shape, (10, 14), (3, 7), 3, inst)            # C: 16 px
    square(shape, (0, 4), (18, 22), 4, inst)            # D: touches the top border
    pred = square(shape, (3, 7), (3, 7), 1)             # A exactly
    square(shape, (3, 7), (10, 12), 1, pred)            # half of B: IoU 8/16 = 0.5 -> match
    square(shape, (10, 14), (3, 4), 1, pred)            # 7 px of C: IoU 7/16 < 0.5 -> no match
    square(shape, (10, 13), (4, 5), 1, pred)
    square(shape, (0, 4), (18, 22), 1, pred)            # D exactly (ignored by default)
    square(shape, (18, 20), (10, 12), 1, pred)          # E: a false positive
    return pred, inst


def test_cell_f1_by_hand():
    pred, inst = cell_scene()
    out = score_cell_case(pred, instances=inst)
    assert (out["n_true"], out["n_pred"], out["tp"], out["fp"], out["fn"]) == (3, 4, 2, 2, 1)
    # from cell_scene's docstring: A and B match (tp 2), C unmatched (fn), C's piece and E stray (fp 2)
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["F1"] == pytest.approx(4 / 7)
    # foreground Dice over all cells, border ones included: overlap 16+8+7+16, sizes 64 and 51
    assert out["DSC"] == pytest.approx(2 * 47 / (64 + 51))
    assert out["DSC_interior"] == out["DSC"]  # no boundary class predicted


def test_cell_f1_border_cells_and_threshold():
    pred, inst = cell_scene()
    # counting D: tp 3 of 4 true and 5 predicted -> F1 6 / 9; strict: tp 1, precision 1/4, recall 1/3
    counted = score_cell_case(pred, instances=inst, count_border_cells=True)
    assert (counted["n_true"], counted["n_pred"], counted["tp"]) == (4, 5, 3)
    assert counted["F1"] == pytest.approx(2 / 3)
    strict = score_cell_case(pred, instances=inst, threshold=0.51)  # B's IoU of exactly 0.5 now fails
    assert strict["tp"] == 1 and strict["F1"] == pytest.approx(2 * (1 / 4) * (1 / 3) / (1 / 4 + 1 / 3))


def test_cell_instances_are_components_of_the_interior_class():
    inst = square((16, 16), (4, 8), (4, 8), 1)
    pred = square((16, 16), (4, 8), (4, 8), 2)         # the cell predicted as boundary only
    out = score_cell_case(pred, instances=inst)
    assert out["n_pred"] == 0 and out["F1"] == 0.0
    assert out["DSC"] == 1.0 and out["DSC_interior"] == 0.0
    pred[5:7, 5:7] = 1                                  # a 4-px interior: IoU 4/16
    assert score_cell_case(pred, instances=inst)["tp"] == 0
    pred[4:8, 4:8] = 1
    assert score_cell_case(pred, instances=inst)["F1"] == 1.0


def test_cell_falls_back_to_interior_components_without_an_instance_mask():
    gt = square((16, 16), (4, 8), (4, 8), 2)
    gt[5:7, 5:7] = 1
    out = score_cell_case(gt, gt)
    assert (out["n_true"], out["tp"], out["F1"], out["DSC"]) == (1, 1, 1.0, 1.0)
    with pytest.raises(ValueError, match="instance mask or label map"):
        score_cell_case(gt)


def test_cell_empty_images():
    empty = np.zeros((16, 16), np.int32)
    cell = square((16, 16), (4, 8), (4, 8), 1)
    both = score_cell_case(empty, instances=empty)
    assert (both["F1"], both["precision"], both["recall"], both["DSC"]) == (1.0, 1.0, 1.0, 1.0)
    missed = score_cell_case(empty, instances=cell)
    assert (missed["F1"], missed["recall"], missed["fn"], missed["DSC"]) == (0.0, 0.0, 1, 0.0)
    stray = score_cell_case(cell, instances=empty)
    assert (stray["F1"], stray["precision"], stray["fp"], stray["DSC"]) == (0.0, 0.0, 1, 0.0)
    assert instance_f1(0, 0, 0) == {"precision": 1.0, "recall": 1.0, "F1": 1.0}


def test_cell_large_images_are_scored_in_tiles():
    inst = square((40, 40), (5, 9), (5, 9), 1)
    square((40, 40), (8, 12), (18, 22), 2, inst)        # crosses the tile edge at column 20
    pred = (inst > 0).astype(np.int32)
    whole = score_cell_case(pred, instances=inst)
    tiled = score_cell_case(pred, instances=inst, tile_size=20, tile_min_pixels=40 * 40)
    assert (whole["n_true"], whole["tp"]) == (2, 2)
    assert (tiled["n_true"], tiled["n_pred"], tiled["tp"]) == (1, 1, 1)


# ----------------------------------------------------------------------------
# endoscopy
# ----------------------------------------------------------------------------

def test_endoscopy_averages_over_labels_in_either_map():
    gt = square((16, 16), (2, 6), (2, 6), 1)
    square((16, 16), (9, 13), (9, 13), 2, gt)           # label 2 missed by the prediction
    pred = square((16, 16), (2, 6), (3, 7), 1)          # label 1 shifted by one pixel
    square((16, 16), (9, 12), (2, 5), 3, pred)          # label 3 only in the prediction
    out = score_endoscopy_case(pred, gt)
    assert out["n_labels"] == 3
    assert out["DSC"] == pytest.approx((2 * 12 / 32 + 0 + 0) / 3)
    assert out["NSD"] == pytest.approx((1 + 0 + 0) / 3)  # every element of label 1 within 2 px
    assert score_endoscopy_case(pred, gt, nsd_mode="contour")["NSD"] == pytest.approx(1 / 3)


def test_endoscopy_empty_images():
    empty = np.zeros((8, 8), np.int32)
    tool = square((8, 8), (2, 5), (2, 5), 4)
    assert score_endoscopy_case(empty, empty) == {"DSC": 1.0, "NSD": 1.0, "n_labels": 0}
    assert score_endoscopy_case(tool, empty) == {"DSC": 0.0, "NSD": 0.0, "n_labels": 1}
    assert score_endoscopy_case(empty, tool) == {"DSC": 0.0, "NSD": 0.0, "n_labels": 1}
    assert score_endoscopy_case(tool, tool) == {"DSC": 1.0, "NSD": 1.0, "n_labels": 1}


# ----------------------------------------------------------------------------
# BraTS and ACDC
# ----------------------------------------------------------------------------

def test_class_regions_come_from_the_registry():
    assert class_regions("brats") == [("WT", (1, 2, 3)), ("TC", (2, 3)), ("ET", (3,))]
    assert class_regions("acdc") == [("RV", (1,)), ("MYO", (2,)), ("LV", (3,))]


def brats_pair():
    gt = np.zeros((10, 10, 10), np.int32)
    gt[2:6, 2:6, 2:6] = 1
    gt[3:5, 3:5, 3:5] = 3          # enhancing core
    pred = gt.copy()
    pred[3:5, 3:5, 3:5] = 2        # the core predicted as necrosis: TC right, ET missing
    return pred, gt


def test_brats_regions_by_hand():
    pred, gt = brats_pair()
    out = score_brats_case(pred, gt)
    assert out["Dice_WT"] == 1.0 and out["HD95_WT"] == 0.0
    assert out["Dice_TC"] == 1.0 and out["HD95_TC"] == 0.0
    # ET predicted empty: HD95 is the diagonal of the 10^3 grid, sqrt(3 * 10^2)
    assert out["Dice_ET"] == 0.0 and out["HD95_ET"] == pytest.approx(math.sqrt(300))
    assert aggregate([out], "brats")["main"] == pytest.approx(2 / 3)


def test_brats_accepts_region_masks_and_probabilities():
    pred, gt = brats_pair()
    regions = [v for _, v in class_regions("brats")]
    masks = np.stack([np.isin(pred, r) for r in regions])
    expected = score_brats_case(pred, gt)
    assert score_brats_case(masks, gt) == expected
    assert score_brats_case(np.where(masks, 0.9, 0.2).astype(np.float32), gt) == expected
    with pytest.raises(ValueError, match="region channels"):
        score_brats_case(masks[:2], gt)


def test_brats_empty_cases():
    empty = np.zeros((8, 8, 8), np.int32)
    tumour = empty.copy()
    tumour[2:5, 2:5, 2:5] = 3
    both = score_brats_case(empty, empty)
    assert all(both[f"Dice_{r}"] == 1.0 and both[f"HD95_{r}"] == 0.0 for r in ("WT", "TC", "ET"))
    missed = score_brats_case(empty, tumour, spacing=(1.0, 1.0, 1.0))
    assert all(missed[f"Dice_{r}"] == 0.0 for r in ("WT", "TC", "ET"))
    # the empty-mask penalty: the diagonal of the 8^3 grid
    assert all(missed[f"HD95_{r}"] == pytest.approx(math.sqrt(3 * 64)) for r in ("WT", "TC", "ET"))


def test_acdc_by_hand_in_millimetres():
    spacing = (1.5, 1.5, 5.0)
    gt = np.zeros((8, 8, 4), np.int32)
    gt[1:3, 1:3, 0:2] = 1                      # RV: predicted exactly
    gt[5:7, 5:7, 0:1] = 2                      # MYO: missed
    gt[2:4, 5:7, 1:3] = 3                      # LV: predicted one slice off
    pred = gt.copy()
    pred[gt == 2] = 0
    pred[gt == 3] = 0
    pred[2:4, 5:7, 2:4] = 3
    out = score_acdc_case(pred, gt, spacing)
    assert out["Dice_RV"] == 1.0 and out["HD95_RV"] == 0.0
    # MYO missed: the diagonal of 8 x 8 x 4 voxels of 1.5 x 1.5 x 5 mm; LV one 5 mm slice off, as in the
    # anisotropic HD95 test: half the pooled distances 0, half 5 mm
    assert out["Dice_MYO"] == 0.0 and out["HD95_MYO"] == pytest.approx(math.sqrt(12 ** 2 + 12 ** 2 + 20 ** 2))
    assert out["Dice_LV"] == pytest.approx(0.5) and out["HD95_LV"] == pytest.approx(5.0)
    empty = score_acdc_case(np.zeros_like(gt), np.zeros_like(gt), spacing)
    assert empty == {f"{m}_{c}": (1.0 if m == "Dice" else 0.0) for c in ("RV", "MYO", "LV") for m in ("Dice", "HD95")}


def test_score_case_dispatches_by_dataset():
    pred, gt = brats_pair()
    assert score_case("brats", pred, gt) == score_brats_case(pred, gt)
    assert score_case("Dataset027_ACDC", gt, gt, spacing=(1, 1, 2)) == score_acdc_case(gt, gt, (1, 1, 2))
    cell_pred, inst = cell_scene()
    assert score_case("cell", cell_pred, None, instances=inst) == score_cell_case(cell_pred, instances=inst)
    flat = gt[:, :, 3]
    assert score_case("endoscopy", flat, flat, nsd_mode="contour")["DSC"] == 1.0
    with pytest.raises(KeyError, match="unknown dataset"):
        score_case("lungs", gt, gt)


# ----------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------

def test_aggregate_keys_and_main_scores():
    endo = aggregate(pd.DataFrame([{"DSC": 0.5, "NSD": 0.7, "n_labels": 2}, {"DSC": 1.0, "NSD": 0.9, "n_labels": 1}]),
                     "endoscopy")
    assert set(endo) == {"DSC", "NSD", "main", "main_metric", "n_cases"}
    assert (endo["main"], endo["main_metric"], endo["NSD"], endo["n_cases"]) == (0.75, "DSC", pytest.approx(0.8), 2)

    rows = [score_cell_case(*p) for p in [(cell_scene()[0], None, cell_scene()[1])]]
    rows += [{**rows[0], "F1": 1.0}, {**rows[0], "F1": 0.0}]
    cell = aggregate(rows, "cell")
    assert {"F1", "F1_median", "precision", "recall", "DSC", "DSC_interior", "tp", "n_true", "main"} <= set(cell)
    # means and median of the per-case F1 rows 4/7 (cell_scene), 1 and 0; tp 2 per row
    assert cell["main"] == pytest.approx((4 / 7 + 1) / 3) and cell["F1_median"] == pytest.approx(4 / 7)
    assert cell["tp"] == 6 and cell["main_metric"] == "F1"

    pred, gt = brats_pair()
    brats = aggregate([score_brats_case(pred, gt), score_brats_case(gt, gt)], "brats")
    # ET: Dice 0 and 1, HD95 sqrt(300) and 0 over the two cases; WT and TC perfect in both
    assert brats["Dice_ET"] == 0.5 and brats["Dice_mean"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert brats["HD95_mean"] == pytest.approx(math.sqrt(300) / 2 / 3)
    assert brats["main"] == brats["Dice_mean"]
    assert {f"{m}_{r}" for m in ("Dice", "HD95") for r in ("WT", "TC", "ET")} <= set(brats)
    acdc = aggregate([score_acdc_case(gt, gt)], "acdc")
    assert acdc["main"] == 1.0 and acdc["HD95_mean"] == 0.0 and acdc["main_metric"] == "Dice_mean"


# ----------------------------------------------------------------------------
# folder evaluation on the synthetic stand-ins
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["endoscopy", "cell", "brats", "acdc"])
def test_evaluate_folder_scores_perfect_predictions(synth_root, tmp_path, key):
    ds = RawDataset(next(p for p in synth_root.iterdir() if p.name.endswith(
        {"endoscopy": "Endoscopy", "cell": "Cell", "brats": "BraTS", "acdc": "ACDC"}[key])))
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    cases = ds.cases("Tr")[:3]
    for files in cases:
        shutil.copy(files.label, pred_dir / files.label.name)
    summary = evaluate_folder(pred_dir, ds, tmp_path / "out")
    assert summary["dataset"] == key and summary["synthetic"] is True and summary["n_cases"] == 3
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    table = pd.read_csv(tmp_path / "out" / "per_case.csv")
    assert list(table["case_id"]) == [c.case_id for c in cases]
    if key == "cell":  # interior components against whole cells: F1 as the protocol gives it
        assert table["DSC"].eq(1.0).all()
        assert summary["main"] == pytest.approx(table["F1"].mean())
    else:
        assert summary["main"] == 1.0
    if key in ("brats", "acdc"):
        assert summary["HD95_mean"] == 0.0


def test_evaluate_folder_errors_and_imperfect_predictions(synth_root, tmp_path):
    ds = RawDataset(synth_root / "Dataset904_SynthEndoscopy")
    a, b = ds.cases("Tr")[:2]
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    shutil.copy(a.label, pred_dir / a.label.name)
    with pytest.raises(FileNotFoundError, match=b.case_id):
        evaluate_folder(pred_dir, ds, tmp_path / "out", case_ids=[a.case_id, b.case_id])
    assert not (tmp_path / "out" / "summary.json").exists()
    gt_b = ds.read_case(b).label
    save_png(pred_dir / b.label.name, np.zeros_like(gt_b, dtype=np.uint8))
    summary = evaluate_folder(pred_dir, ds, tmp_path / "out", case_ids=[a.case_id, b.case_id],
                              nsd_mode="contour")
    assert summary["main"] == pytest.approx(0.5 if gt_b.any() else 1.0)
    assert summary["options"] == {"nsd_mode": "contour"}
    with pytest.raises(FileNotFoundError, match="no prediction files"):
        evaluate_folder(tmp_path / "out", ds, tmp_path / "out2")


@pytest.mark.parametrize("key", ["cell", "acdc"])
def test_score_case_takes_a_raw_dataset_and_a_loaded_case(synth_root, key):
    from logvmamba.data import load_case

    ds = RawDataset(synth_root / {"cell": "Dataset903_SynthCell", "acdc": "Dataset927_SynthACDC"}[key])
    case = load_case(ds, ds.case_ids()[0])
    out = score_case(ds, case.label, case)
    if key == "cell":  # the instance mask of the case is used: gt cells are whole instances
        assert out["DSC"] == 1.0 and out["n_true"] == len(np.unique(remove_border_instances(case.instances))) - 1
    else:  # spacing from the case: a one-voxel shift along the last axis costs its spacing in HD95
        assert aggregate([out], ds)["main"] == 1.0
        shifted = score_case(ds, np.roll(case.label.numpy(), 1, axis=-1), case)
        assert max(shifted[f"HD95_{c}"] for c in ("RV", "MYO", "LV")) >= case.spacing[-1] - 1e-6


def test_evaluate_predictions_writes_the_named_files(synth_root, tmp_path):
    from logvmamba.evaluation import evaluate_predictions

    ds = RawDataset(synth_root / "Dataset982_SynthBraTS")
    case = ds.cases("Tr")[0]
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    shutil.copy(case.label, pred_dir / case.label.name)
    summary = evaluate_predictions(ds, pred_dir, [case.case_id], tmp_path / "s.json", tmp_path / "c.csv")
    assert summary["main"] == 1.0 and summary["main_metric"] == "Dice_mean"
    assert json.loads((tmp_path / "s.json").read_text())["n_cases"] == 1
    assert list(pd.read_csv(tmp_path / "c.csv")["case_id"]) == [case.case_id]


def test_command_line(synth_root, tmp_path, capsys):
    from logvmamba.evaluation.evaluate import main

    ds = RawDataset(synth_root / "Dataset903_SynthCell")
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for files in ds.cases("Tr")[:2]:
        shutil.copy(files.label, pred_dir / files.label.name)
    assert main([str(ds.path), str(pred_dir), str(tmp_path / "out"), "--count-border-cells", "--cases", "files"]) == 0
    assert "F1 = " in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["options"] == {"count_border_cells": True} and summary["n_cases"] == 2
