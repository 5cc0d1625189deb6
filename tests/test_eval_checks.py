"""Evaluation refuses what it cannot score honestly: foreign label values, probabilities,
missing or unknown predictions; ``--allow-missing`` scores a missing case as empty."""

from __future__ import annotations

import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from logvmamba.data import DatasetError, RawDataset, get_info
from logvmamba.data.splits import evaluation_cases
from logvmamba.evaluation import evaluate_predictions
from logvmamba.evaluation.evaluate import main as evaluate_main


def _dataset(synth_root, key) -> RawDataset:
    return RawDataset(synth_root / get_info(key).synthetic_name)


def _copy_labels(ds, cases, pred_dir):
    pred_dir.mkdir(exist_ok=True)
    for case in cases:
        shutil.copy(ds.get(case).label, pred_dir / f"{case}{ds.file_ending}")


def _score(ds, pred_dir, cases, tmp_path, **kwargs):
    return evaluate_predictions(ds, pred_dir, cases, tmp_path / "s.json", tmp_path / "c.csv", **kwargs)


def test_raw_brats_labels_are_refused(synth_root, tmp_path):
    ds = _dataset(synth_root, "brats")
    case = next(c for c in ds.case_ids("Tr") if (np.asarray(nib.load(str(ds.get(c).label)).dataobj) == 3).any())
    img = nib.load(str(ds.get(case).label))
    raw = np.asarray(img.dataobj).copy()
    raw[raw == 3] = 4  # BraTS' own enhancing label
    pred = tmp_path / "pred"
    pred.mkdir()
    nib.save(nib.Nifti1Image(raw, img.affine), str(pred / f"{case}.nii.gz"))
    with pytest.raises(DatasetError, match=r"label value\(s\) 4 are not in dataset.json's labels .*raw BraTS") as err:
        _score(ds, pred, [case], tmp_path)
    assert str(pred / f"{case}.nii.gz") in str(err.value)
    assert not (tmp_path / "s.json").exists()


def test_a_map_of_200_is_refused(synth_root, tmp_path):
    ds = _dataset(synth_root, "endoscopy")
    case = ds.case_ids("Tr")[0]
    shape = np.asarray(Image.open(ds.get(case).label)).shape
    pred = tmp_path / "pred"
    pred.mkdir()
    Image.fromarray(np.full(shape, 200, np.uint8)).save(pred / f"{case}.png")
    with pytest.raises(DatasetError, match=r"label value\(s\) 200 are not in dataset.json's labels \(0, 1, 2, 3, 4, 5, 6, 7\)"):
        _score(ds, pred, [case], tmp_path)


def test_a_probability_map_is_refused(synth_root, tmp_path):
    ds = _dataset(synth_root, "acdc")
    case = ds.case_ids("Tr")[0]
    img = nib.load(str(ds.get(case).label))
    probabilities = (np.asarray(img.dataobj) > 0).astype(np.float32) * 0.8 + 0.1  # 0.1 / 0.9
    pred = tmp_path / "pred"
    pred.mkdir()
    nib.save(nib.Nifti1Image(probabilities, img.affine), str(pred / f"{case}.nii.gz"))
    with pytest.raises(DatasetError, match="not a label map: .* not whole numbers"):
        _score(ds, pred, [case], tmp_path)
    # the same map as whole numbers stored in float is a label map
    nib.save(nib.Nifti1Image(np.rint(probabilities), img.affine), str(pred / f"{case}.nii.gz"))
    assert _score(ds, pred, [case], tmp_path)["n_cases"] == 1


def test_a_missing_prediction_is_an_error_or_scored_empty(synth_root, tmp_path):
    ds = _dataset(synth_root, "acdc")
    cases = ds.case_ids("Tr")[:3]
    pred = tmp_path / "pred"
    _copy_labels(ds, cases[:2], pred)
    with pytest.raises(FileNotFoundError, match=rf"no prediction for 1 of 3 scored case\(s\): {cases[2]}"):
        _score(ds, pred, cases, tmp_path)
    summary = _score(ds, pred, cases, tmp_path, allow_missing=True)
    assert summary["missing"] == [cases[2]] and summary["n_cases"] == 3
    table = pd.read_csv(tmp_path / "c.csv")
    assert list(table["missing"]) == [False, False, True]

    # independent: the same case with an all-background prediction written to disk
    empty = tmp_path / "empty"
    empty.mkdir()
    img = nib.load(str(ds.get(cases[2]).label))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(empty / f"{cases[2]}.nii.gz"))
    (tmp_path / "ref").mkdir()
    reference = evaluate_predictions(ds, empty, [cases[2]], tmp_path / "ref" / "s.json", tmp_path / "ref" / "c.csv")
    row = table[table["case_id"] == cases[2]].iloc[0]
    assert row["Dice_LV"] == reference["Dice_LV"] == 0.0
    assert summary["Dice_mean"] == pytest.approx((2 * 1.0 + reference["Dice_mean"]) / 3)


def test_a_prediction_of_an_unknown_case_is_named(synth_root, tmp_path):
    ds = _dataset(synth_root, "cell")
    case = ds.case_ids("Tr")[0]
    pred = tmp_path / "pred"
    _copy_labels(ds, [case], pred)
    shutil.copy(ds.get(case).label, pred / "cell_9999.png")
    with pytest.raises(DatasetError, match="cell_9999.png: prediction for a case that Dataset903_SynthCell does not have"):
        _score(ds, pred, [case], tmp_path)
    with pytest.raises(DatasetError, match="cell_9999.png"):
        _score(ds, pred, None, tmp_path)


def test_predictions_of_cases_not_scored_are_ignored_with_a_warning(synth_root, tmp_path, caplog):
    ds = _dataset(synth_root, "cell")
    first, second = ds.case_ids("Tr")[:2]
    pred = tmp_path / "pred"
    _copy_labels(ds, [first, second], pred)
    with caplog.at_level(logging.WARNING, logger="logvmamba.evaluation"):
        summary = _score(ds, pred, [first], tmp_path)
    assert summary["n_cases"] == 1
    assert any(f"not scored ignored: {second}" in r.getMessage() for r in caplog.records)


def test_command_scores_the_test_set_and_names_a_missing_case(synth_root, tmp_path, capsys):
    ds = _dataset(synth_root, "endoscopy")
    test_cases = evaluation_cases(ds, 0)
    assert test_cases == ds.case_ids("Ts") and len(test_cases) == 2
    pred = tmp_path / "pred"
    _copy_labels(ds, test_cases[:1], pred)
    assert evaluate_main([str(ds.path), str(pred), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {pred}: no prediction for 1 of 2") and test_cases[1] in err
    assert not (tmp_path / "out").exists()

    assert evaluate_main([str(ds.path), str(pred), str(tmp_path / "out"), "--allow-missing"]) == 0
    assert "1 without a prediction scored empty" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["missing"] == [test_cases[1]] and summary["n_cases"] == 2

    with pytest.raises(FileNotFoundError):  # --debug: the traceback instead of the line
        evaluate_main([str(ds.path), str(pred), str(tmp_path / "out2"), "--debug"])
