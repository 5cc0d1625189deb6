"""The file-format layer: one png and one NIfTI writer, atomic, keeping a reference image's geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from logvmamba.data import RawDataset, get_info, load_case
from logvmamba.data.formats import (
    read_image_file,
    save_image_file,
    save_instance_mask,
    save_nifti,
    save_png,
    write_dataset_json,
)


def _reference(tmp_path):
    """A NIfTI whose qform and sform differ, with sform code 4 (MNI) and intensity scaling."""
    affine = np.array([[-1.2, 0, 0, 10], [0, 1.1, 0.1, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), affine)
    image.set_qform(np.diag([-1.2, 1.1, 3.0, 1.0]), code=1)
    image.set_sform(affine, code=4)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_slope_inter(2.0, 1.0)
    path = tmp_path / "ref.nii.gz"
    nib.save(image, str(path))
    return path


def test_save_nifti_like_keeps_the_reference_geometry(tmp_path):
    ref = nib.load(str(_reference(tmp_path)))
    _, meta = read_image_file(tmp_path / "ref.nii.gz")
    for like in (ref, ref.header, meta):
        out = save_nifti(tmp_path / "pred.nii.gz", np.ones((4, 5, 6), np.uint8), like=like)
        written = nib.load(str(out))
        q, q_code = written.header.get_qform(coded=True)
        s, s_code = written.header.get_sform(coded=True)
        ref_q, ref_q_code = ref.header.get_qform(coded=True)
        ref_s, ref_s_code = ref.header.get_sform(coded=True)
        assert (int(q_code), int(s_code)) == (int(ref_q_code), int(ref_s_code)) == (1, 4)
        assert np.allclose(q, ref_q) and np.allclose(s, ref_s) and np.allclose(written.affine, ref.affine)
        assert written.header.get_xyzt_units() == ("mm", "sec")
        assert written.get_data_dtype() == np.uint8
        assert np.array_equal(np.asanyarray(written.dataobj), np.ones((4, 5, 6)))  # no scaling applied
    with pytest.raises(ValueError, match="not both"):
        save_nifti(tmp_path / "x.nii.gz", np.ones((4, 5, 6)), affine=np.eye(4), like=ref)
    with pytest.raises(ValueError, match="NIfTI header"):
        save_nifti(tmp_path / "x.nii.gz", np.ones((4, 5, 6)), like={"header": None})


def test_save_nifti_without_reference_writes_scanner_codes(tmp_path):
    out = nib.load(str(save_nifti(tmp_path / "a.nii.gz", np.zeros((3, 4, 5), np.uint8), spacing=(1.5, 1.5, 5.0))))
    assert np.allclose(out.affine, np.diag([1.5, 1.5, 5.0, 1.0]))
    assert int(out.header["qform_code"]) == int(out.header["sform_code"]) == 1


def test_prediction_like_a_loaded_case_keeps_its_geometry(synth_root, tmp_path):
    case = load_case(synth_root / get_info("brats").synthetic_name, "BraTS_00001")
    source = nib.load(str(case.files.images[0]))
    out = save_image_file(tmp_path / "BraTS_00001.nii.gz", case.label.numpy().astype(np.uint8), like=case)
    written = nib.load(str(out))
    assert np.allclose(written.affine, source.affine)
    assert int(written.header["sform_code"]) == int(source.header["sform_code"])
    assert int(written.header["qform_code"]) == int(source.header["qform_code"])
    assert np.array_equal(np.asanyarray(written.dataobj), case.label.numpy())


def test_cases_carry_their_header(synth_root):
    brats = RawDataset(synth_root / get_info("brats").synthetic_name).read_case("BraTS_00001")
    assert brats.header is not None and np.allclose(brats.header.get_best_affine(), brats.affine)
    cell = RawDataset(synth_root / get_info("cell").synthetic_name)
    assert cell.read_case(cell.case_ids()[0]).header is None


def test_save_image_file_picks_the_format_by_ending(tmp_path):
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    array, meta = read_image_file(save_image_file(tmp_path / "a.png", label))
    assert np.array_equal(array[0], label) and meta["header"] is None
    with pytest.raises(ValueError, match="unsupported"):
        save_image_file(tmp_path / "a.jpg", label)


def test_writers_replace_files_atomically(tmp_path, monkeypatch):
    from PIL import Image

    path = save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    before = path.read_bytes()

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(path, np.ones((4, 4), np.uint8))
    with pytest.raises(OSError, match="disk full"):
        save_instance_mask(tmp_path / "b.tiff", np.ones((4, 4), np.int32))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary file left


def test_nifti_and_dataset_json_leave_no_temporary_files(tmp_path):
    save_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2), np.uint8))
    save_nifti(tmp_path / "a.nii.gz", np.ones((2, 2, 2), np.uint8))
    write_dataset_json(tmp_path, {"name": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "dataset.json"]
    assert np.asanyarray(nib.load(str(tmp_path / "a.nii.gz")).dataobj).sum() == 8
