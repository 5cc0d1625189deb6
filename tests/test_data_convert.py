"""Converters on fake release trees that mirror each official layout."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from logvmamba.data import DatasetError, RawDataset, get_info, load_case, make_loader
from logvmamba.data import convert as conv
from logvmamba.data.formats import save_nifti, save_png
from logvmamba.data.splits import get_splits, make_splits



def _only(folder):
    return sorted(p.name for p in folder.iterdir())


def test_convert_endoscopy(tmp_path, data_helpers):
    h = data_helpers
    src = h.make_umamba_endovis(tmp_path / "download")
    out = conv.convert("endoscopy", tmp_path / "download", tmp_path / "raw")  # the package's parent works too
    assert out == tmp_path / "raw" / "Dataset704_Endovis17"
    assert _only(tmp_path / "raw") == ["Dataset704_Endovis17"]
    ds = RawDataset(out)
    assert ds.key == "endoscopy" and not ds.is_synthetic
    assert ds.json["labels"]["Ultrasound Probe"] == 7 and ds.json["numTraining"] == 6
    assert ds.case_ids() == sorted(p.name[:-9] for p in (src / "imagesTr").iterdir())
    assert ds.validate() == 8 and len(ds.case_ids("Ts")) == 2
    assert (out / "imagesTr" / "seq1_frame000_0000.png").read_bytes() == \
        (src / "imagesTr" / "seq1_frame000_0000.png").read_bytes()
    assert get_splits(out) == make_splits(ds.case_ids())
    batch = next(iter(make_loader(out, "train", patch_size=(16, 16), batch_size=2, seed=0)))
    assert batch["image"].shape == (2, 3, 16, 16)


def test_convert_cell_with_instance_masks(tmp_path, data_helpers):
    h = data_helpers
    h.make_umamba_cell(tmp_path / "download")
    out = conv.convert_cell(tmp_path / "download" / "Dataset703_NeurIPSCell", tmp_path / "raw")
    ds = RawDataset(out)
    assert ds.validate() == 8
    assert ds.case_ids("Ts") == ["cell_00001", "cell_00002"]
    case = ds.read_case("cell_00002", "Ts")  # grayscale source became RGB
    assert case.image.shape == (3, 20, 22)
    assert np.array_equal(case.image[0], case.image[2])
    inst = ds.read_instances("cell_00002", "Ts")
    assert inst.max() == 3 and (out / "labelsTs-instance" / "cell_00002.tiff").is_file()
    assert case.label[4, 5] == 1 and case.label[4, 8] == 2 and case.label[4, 9] == 2 and case.label[0, 0] == 0
    loaded = load_case(out, "cell_00001", subset="Ts")
    assert np.array_equal(loaded.instances, inst)


def test_convert_brats2020(tmp_path, data_helpers):
    h = data_helpers
    h.make_brats2020(tmp_path / "download")
    out = conv.convert("brats", tmp_path / "download", tmp_path / "raw")  # parent of the training folder
    assert out.name == "Dataset082_BraTS2020"
    ds = RawDataset(out)
    assert ds.key == "brats" and ds.json["brats_release"] == "2020"
    assert ds.case_ids() == [f"BraTS20_Training_{i:03d}" for i in range(1, 8)]
    assert ds.json["labels"] == get_info("brats").dataset_json()["labels"]
    assert ds.validate() == 7
    for i in (1, 3):  # case 3: uncompressed .nii and an odd segmentation name
        case = ds.read_case(f"BraTS20_Training_{i:03d}")
        raw = h.brats_seg(i)
        assert case.image.shape == (4, *h.BRATS_SHAPE)
        expected = np.select([raw == 2, raw == 1, raw == 4], [1, 2, 3], 0)
        assert np.array_equal(case.label, expected)
        assert case.affine[1, 3] == 239  # geometry kept
    t1ce = nib.load(str(out / "imagesTr" / "BraTS20_Training_002_0001.nii.gz")).get_fdata()
    src = nib.load(str(tmp_path / "download" / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_002" /
                       "BraTS20_Training_002_t1ce.nii.gz")).get_fdata()
    assert np.array_equal(t1ce, src)  # channel 1 is T1ce
    splits = json.loads((out / "splits_final.json").read_text())
    assert all("test" in fold for fold in splits) and len(splits[0]["test"]) == 2
    regions = load_case(out, "BraTS20_Training_001").regions
    assert regions[0].sum() == ((h.brats_seg(1) > 0).sum())            # whole tumour = 1, 2, 4
    assert regions[1].sum() == np.isin(h.brats_seg(1), [1, 4]).sum()   # tumour core = 1, 4
    assert regions[2].sum() == (h.brats_seg(1) == 4).sum()             # enhancing = 4


def test_convert_brats2021(tmp_path, data_helpers):
    h = data_helpers
    src = h.make_brats2021(tmp_path / "download")
    out = conv.convert_brats(src, tmp_path / "raw")
    assert out.name == "Dataset137_BraTS2021"
    ds = RawDataset(out)
    assert ds.case_ids()[0] == "BraTS2021_00000" and ds.validate() == 7
    with pytest.raises(DatasetError, match="asked for BraTS 2020 but the case folders are BraTS 2021"):
        conv.convert_brats(src, tmp_path / "raw2", release="2020")


def test_convert_acdc(tmp_path, data_helpers):
    h = data_helpers
    h.make_acdc(tmp_path / "download")
    out = conv.convert("acdc", tmp_path / "download", tmp_path / "raw")  # finds ACDC/database/training
    ds = RawDataset(out)
    assert ds.case_ids()[:2] == ["patient001_frame01", "patient001_frame09"]
    assert len(ds.case_ids()) == 10 and len(ds.case_ids("Ts")) == 4
    assert ds.validate() == 14
    case = ds.read_case("patient002_frame10")
    assert case.image.shape == (1, *h.ACDC_SHAPE) and case.spacing == pytest.approx((1.5625, 1.5625, 10.0))
    assert not any("_4d" in p.name for p in (out / "imagesTr").iterdir())
    splits = get_splits(out)
    for fold in splits:  # both frames of a patient in the same fold
        assert not {c[:10] for c in fold["train"]} & {c[:10] for c in fold["val"]}


def test_convert_acdc_test_without_ground_truth(tmp_path, data_helpers):
    h = data_helpers
    h.make_acdc(tmp_path / "download", test_gt=False)
    out = conv.convert_acdc(tmp_path / "download", tmp_path / "raw")
    ds = RawDataset(out)
    assert len(ds.case_ids("Ts")) == 4 and not (out / "labelsTs").exists()
    assert ds.read_case("patient006_frame01", "Ts").label is None


def _no_leftovers(root):
    assert not root.exists() or list(root.iterdir()) == []


def test_failing_converter_leaves_nothing_behind(tmp_path, data_helpers):
    h = data_helpers
    bad = np.zeros(h.BRATS_SHAPE, np.uint8)
    bad[1, 1, 1] = 3  # not a BraTS label
    h.make_brats2020(tmp_path / "download", seg_values={6: bad})
    with pytest.raises(DatasetError) as info:
        conv.convert_brats(tmp_path / "download", tmp_path / "raw")
    assert str(info.value).startswith(str(tmp_path / "download"))
    assert "BraTS20_Training_006_seg.nii.gz: label values [3] are not BraTS labels" in str(info.value)
    _no_leftovers(tmp_path / "raw")


def test_converter_errors_name_the_file(tmp_path, data_helpers):
    h = data_helpers
    src = h.make_umamba_endovis(tmp_path / "endo")
    label = src / "labelsTr" / "seq1_frame001.png"
    save_png(label, np.full((24, 32), 9, np.uint8))
    with pytest.raises(DatasetError, match=r"seq1_frame001.png: label values \[9\]"):
        conv.convert_endoscopy(src, tmp_path / "raw")
    save_png(label, np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match=r"seq1_frame001.png: label shape \(10, 10\) does not match"):
        conv.convert_endoscopy(src, tmp_path / "raw")
    save_png(label, np.zeros((24, 32), np.uint8))
    (src / "imagesTr" / "seq1_frame002_0000.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=r"seq1_frame002_0000.png: cannot read image"):
        conv.convert_endoscopy(src, tmp_path / "raw")
    _no_leftovers(tmp_path / "raw")

    cell = h.make_umamba_cell(tmp_path / "cell")
    (cell / "labelsVal-instance-mask" / "cell_00002_label.tiff").unlink()
    with pytest.raises(DatasetError, match=r"cell_00002_label.tiff: instance mask file missing"):
        conv.convert_cell(cell, tmp_path / "raw")
    _no_leftovers(tmp_path / "raw")

    acdc = h.make_acdc(tmp_path / "acdc")
    cfg = acdc / "database" / "training" / "patient003" / "Info.cfg"
    cfg.write_text("Group: NOR\n")
    with pytest.raises(DatasetError, match=r"patient003/Info.cfg: malformed: no integer ED frame"):
        conv.convert_acdc(acdc, tmp_path / "raw")
    cfg.unlink()
    with pytest.raises(DatasetError, match=r"patient003/Info.cfg: missing"):
        conv.convert_acdc(acdc, tmp_path / "raw")
    _no_leftovers(tmp_path / "raw")

    brats = h.make_brats2021(tmp_path / "brats")
    (brats / "BraTS2021_00004" / "BraTS2021_00004_flair.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"BraTS2021_00004_flair.nii.gz: flair channel file missing"):
        conv.convert_brats(brats, tmp_path / "raw")
    save_nifti(brats / "BraTS2021_00004" / "BraTS2021_00004_flair.nii.gz", np.zeros((5, 5, 5), np.int16))
    with pytest.raises(DatasetError, match=r"BraTS2021_00004_flair.nii.gz: image shape \(5, 5, 5\) does not match"):
        conv.convert_brats(brats, tmp_path / "raw")
    _no_leftovers(tmp_path / "raw")

    with pytest.raises(DatasetError, match="no BraTS training cases found"):
        conv.convert_brats(tmp_path / "endo", tmp_path / "raw")
    with pytest.raises(DatasetError, match="not the U-Mamba Dataset703_NeurIPSCell package"):
        conv.convert_cell(tmp_path / "acdc", tmp_path / "raw")
    with pytest.raises(DatasetError, match="source folder not found"):
        conv.convert_acdc(tmp_path / "nowhere", tmp_path / "raw")


def test_existing_destination_is_kept_unless_overwrite(tmp_path, data_helpers):
    h = data_helpers
    h.make_acdc(tmp_path / "download")
    out = conv.convert_acdc(tmp_path / "download", tmp_path / "raw")
    marker = out / "splits_final.json"
    before = marker.read_bytes()
    with pytest.raises(DatasetError, match="already exists"):
        conv.convert_acdc(tmp_path / "download", tmp_path / "raw")
    conv.convert_acdc(tmp_path / "download", tmp_path / "raw", overwrite=True)
    assert marker.read_bytes() == before  # same input -> same files
    assert _only(tmp_path / "raw") == ["Dataset027_ACDC"]


def test_convert_command(tmp_path, capsys, data_helpers):
    h = data_helpers
    h.make_umamba_cell(tmp_path / "download")
    assert conv.main(["cell", str(tmp_path / "download"), str(tmp_path / "raw")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "raw" / "Dataset703_NeurIPSCell")
    assert conv.main(["cell", str(tmp_path / "download"), str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        conv.main(["cell", str(tmp_path), str(tmp_path), "--release", "2020"])
