"""Every bad input gets a one-line DatasetError that names the file at fault."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from logvmamba.data import DatasetError, RawDataset, make_loader, resolve_dataset_dir
from logvmamba.data.formats import save_nifti, save_png



def _raises(fn, *path_and_text):
    with pytest.raises(DatasetError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for text in path_and_text:
        assert str(text) in message, message
    return message


@pytest.fixture
def cell_copy(synth_root, tmp_path):
    folder = tmp_path / "Dataset903_SynthCell"
    shutil.copytree(synth_root / "Dataset903_SynthCell", folder)
    return folder


@pytest.fixture
def brats_copy(synth_root, tmp_path):
    folder = tmp_path / "Dataset982_SynthBraTS"
    shutil.copytree(synth_root / "Dataset982_SynthBraTS", folder)
    return folder


def test_missing_dataset_folder_names_where_to_get_it(tmp_path):
    missing = tmp_path / "Dataset704_Endovis17"
    msg = _raises(lambda: RawDataset(missing), missing, "dataset folder not found",
                  "https://endovissub2017-roboticinstrumentsegmentation.grand-challenge.org/",
                  "python -m logvmamba.data.convert endoscopy")
    assert msg.startswith(str(missing))
    _raises(lambda: resolve_dataset_dir("brats", root=tmp_path), tmp_path / "Dataset082_BraTS2020",
            "https://www.med.upenn.edu/cbica/brats2020/data.html")
    _raises(lambda: resolve_dataset_dir("acdc", root=tmp_path), "https://acdc.creatis.insa-lyon.fr/")
    _raises(lambda: resolve_dataset_dir(tmp_path / "Dataset703_NeurIPSCell"),
            "https://neurips22-cellseg.grand-challenge.org/")
    _raises(lambda: resolve_dataset_dir("cell", root=tmp_path, synthetic=True),
            "python -m logvmamba.data.synthetic cell")


def test_dataset_json_missing(cell_copy):
    (cell_copy / "dataset.json").unlink()
    _raises(lambda: RawDataset(cell_copy), cell_copy / "dataset.json", "missing")


@pytest.mark.parametrize("content, text", [
    ("{\"channel_names\": ", "malformed JSON"),
    ("[1, 2]", "top level must be a JSON object"),
    (json.dumps({"labels": {"background": 0}, "file_ending": ".png"}), "'channel_names'"),
    (json.dumps({"channel_names": {"1": "R"}, "labels": {"background": 0}, "file_ending": ".png"}),
     "keys must be"),
    (json.dumps({"channel_names": {"0": "R"}, "labels": {"cell": 1}, "file_ending": ".png"}),
     "background label with value 0"),
    (json.dumps({"channel_names": {"0": "R"}, "labels": {"background": 0, "x": -2}, "file_ending": ".png"}),
     "non-negative int"),
    (json.dumps({"channel_names": {"0": "R"}, "labels": {"background": 0, "a": 1, "b": 1},
                 "file_ending": ".png"}), "share the value 1"),
    (json.dumps({"channel_names": {"0": "R"}, "labels": {"background": 0, "wt": [1, 2]},
                 "file_ending": ".png"}), "regions_class_order"),
    (json.dumps({"channel_names": {"0": "R"}, "labels": {"background": 0}, "file_ending": ".jpg"}),
     "'file_ending'"),
    (json.dumps({"channel_names": {"0": "R"}, "labels": {"background": 0}, "file_ending": ".png",
                 "numTraining": "ten"}), "'numTraining'"),
])
def test_dataset_json_malformed(cell_copy, content, text):
    (cell_copy / "dataset.json").write_text(content)
    _raises(lambda: RawDataset(cell_copy), cell_copy / "dataset.json", text)


def test_numtraining_mismatch(cell_copy):
    content = json.loads((cell_copy / "dataset.json").read_text())
    content["numTraining"] = 99
    (cell_copy / "dataset.json").write_text(json.dumps(content))
    _raises(lambda: RawDataset(cell_copy).cases(), cell_copy / "dataset.json", "numTraining is 99")


def test_channel_file_missing(brats_copy):
    victim = brats_copy / "imagesTr" / "BraTS_00004_0002.nii.gz"
    victim.unlink()
    _raises(lambda: RawDataset(brats_copy).cases(), victim, "channel file missing for case 'BraTS_00004'")


def test_extra_channel_file(brats_copy):
    extra = brats_copy / "imagesTr" / "BraTS_00004_0004.nii.gz"
    shutil.copy(brats_copy / "imagesTr" / "BraTS_00004_0000.nii.gz", extra)
    _raises(lambda: RawDataset(brats_copy).cases(), extra, "lists only 4 channel(s)")


def test_label_file_missing(cell_copy):
    victim = cell_copy / "labelsTr" / "cell_0003.png"
    victim.unlink()
    _raises(lambda: RawDataset(cell_copy).cases(), victim, "label file missing")


def test_label_without_image(cell_copy):
    (cell_copy / "imagesTr" / "cell_0003_0000.png").unlink()
    _raises(lambda: RawDataset(cell_copy).cases(), cell_copy / "imagesTr" / "cell_0003_0000.png",
            "label cell_0003.png has no image")


def test_badly_named_image_file(cell_copy):
    bad = cell_copy / "imagesTr" / "cell_0003-copy.png"
    shutil.copy(cell_copy / "imagesTr" / "cell_0003_0000.png", bad)
    _raises(lambda: RawDataset(cell_copy).cases(), bad, "_CCCC.png")
    bad.unlink()
    ambiguous = cell_copy / "imagesTr" / "cell_0003.png"  # reads as case 'cell', channel 3
    shutil.copy(cell_copy / "imagesTr" / "cell_0003_0000.png", ambiguous)
    _raises(lambda: RawDataset(cell_copy).cases(), cell_copy / "imagesTr" / "cell_0000.png",
            "channel file missing for case 'cell'", "found cell_0003.png")


def test_image_label_shape_mismatch(cell_copy):
    label = cell_copy / "labelsTr" / "cell_0002.png"
    save_png(label, np.zeros((50, 60), np.uint8))
    _raises(lambda: RawDataset(cell_copy).read_case("cell_0002"), label,
            "label shape (50, 60) does not match image shape (96, 96)")


def test_channel_shape_mismatch(brats_copy):
    victim = brats_copy / "imagesTr" / "BraTS_00001_0003.nii.gz"
    save_nifti(victim, np.ones((48, 48, 40), np.int16))
    _raises(lambda: RawDataset(brats_copy).read_case("BraTS_00001"), victim, "differs from BraTS_00001_0000.nii.gz")


def test_wrong_channel_count_in_png(cell_copy):
    image = cell_copy / "imagesTr" / "cell_0001_0000.png"
    save_png(image, np.zeros((96, 96), np.uint8))  # grayscale where RGB is declared
    _raises(lambda: RawDataset(cell_copy).read_case("cell_0001"), image, "has 1 channel(s)",
            "dataset.json lists 3")


def test_label_values_outside_dataset_json(cell_copy, brats_copy):
    label = cell_copy / "labelsTr" / "cell_0005.png"
    array = np.zeros((96, 96), np.uint8)
    array[3, 3], array[4, 4] = 7, 9
    save_png(label, array)
    _raises(lambda: RawDataset(cell_copy).read_case("cell_0005"), label, "label values [7, 9] are not in "
            "dataset.json labels (allowed [0, 1, 2])")
    # BraTS on disk uses nnU-Net's remapped labels: a raw BraTS label 4 is an error
    seg = brats_copy / "labelsTr" / "BraTS_00002.nii.gz"
    array = np.zeros((48, 48, 48), np.uint8)
    array[20, 20, 20] = 4
    save_nifti(seg, array, np.diag([-1.0, -1.0, 1.0, 1.0]))
    _raises(lambda: RawDataset(brats_copy).read_case("BraTS_00002"), seg, "label values [4]")
    # and the loader reports it the same way
    splits = [{"train": ["BraTS_00002"], "val": []}]
    _raises(lambda: next(iter(make_loader(brats_copy, "train", fold=0, splits=splits))), seg, "label values [4]")


def test_corrupt_png(cell_copy):
    image = cell_copy / "imagesTr" / "cell_0004_0000.png"
    image.write_bytes(image.read_bytes()[:200])  # truncated
    _raises(lambda: RawDataset(cell_copy).read_case("cell_0004"), image, "cannot read image")
    label = cell_copy / "labelsTr" / "cell_0006.png"
    label.write_bytes(b"not a png at all")
    _raises(lambda: RawDataset(cell_copy).read_case("cell_0006"), label, "cannot read label")


def test_corrupt_nifti(brats_copy):
    image = brats_copy / "imagesTr" / "BraTS_00003_0001.nii.gz"
    image.write_bytes(gzip.compress(b"garbage" * 100))
    _raises(lambda: RawDataset(brats_copy).read_case("BraTS_00003"), image, "cannot read image")
    label = brats_copy / "labelsTr" / "BraTS_00005.nii.gz"
    label.write_bytes(label.read_bytes()[:1000])  # truncated gzip stream
    _raises(lambda: RawDataset(brats_copy).read_case("BraTS_00005"), label, "cannot read label")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's reader, when tifffile is absent
def test_corrupt_instance_mask(synth_root, tmp_path):
    folder = tmp_path / "Dataset903_SynthCell"
    shutil.copytree(synth_root / "Dataset903_SynthCell", folder)
    victim = next((folder / "labelsTs-instance").iterdir())
    victim.write_bytes(b"II*\x00garbage")
    ds = RawDataset(folder)
    _raises(lambda: ds.read_instances(victim.stem, "Ts"), victim, "cannot read instance mask")
    victim.write_bytes(b"definitely not a tiff")
    _raises(lambda: ds.read_instances(victim.stem, "Ts"), victim, "cannot read instance mask")
    _raises(lambda: ds.validate(), victim)


def test_images_folder_missing(cell_copy):
    shutil.rmtree(cell_copy / "imagesTr")
    _raises(lambda: RawDataset(cell_copy), cell_copy / "imagesTr", "missing")


def test_training_needs_consecutive_labels(cell_copy):
    content = json.loads((cell_copy / "dataset.json").read_text())
    content["labels"] = {"background": 0, "interior": 1, "boundary": 5}
    (cell_copy / "dataset.json").write_text(json.dumps(content))
    _raises(lambda: make_loader(cell_copy, "train", fold=0), cell_copy / "dataset.json", "consecutive labels")


def test_brats_without_regions_is_refused_for_training(brats_copy):
    content = json.loads((brats_copy / "dataset.json").read_text())
    content["labels"] = {"background": 0, "edema": 1, "enhancing": 2, "necrosis": 3}  # nnU-Net v1 Task082
    del content["regions_class_order"]
    (brats_copy / "dataset.json").write_text(json.dumps(content))
    _raises(lambda: make_loader(brats_copy, "train", fold=0), brats_copy / "dataset.json",
            "declares none", "python -m logvmamba.data.convert brats")
