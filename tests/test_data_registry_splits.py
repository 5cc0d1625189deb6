"""Dataset registry, dataset-folder look-up and split generation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from logvmamba.data import DATASETS, DatasetError, RawDataset, get_info, resolve_dataset_dir
from logvmamba.data.registry import find_info
from logvmamba.data.splits import (
    brats_holdout_split,
    get_splits,
    kfold_split,
    load_splits,
    make_splits,
    patient_kfold_split,
    patient_of,
    split_case_ids,
)



def test_registry_holds_the_four_datasets():
    assert list(DATASETS) == ["endoscopy", "cell", "brats", "acdc"]
    expect = {  # key: (nnU-Net name, dims, channels, outputs, kind, patch)
        "endoscopy": ("Dataset704_Endovis17", 2, 3, 8, "softmax", (384, 640)),
        "cell": ("Dataset703_NeurIPSCell", 2, 3, 3, "softmax", (512, 512)),
        "brats": ("Dataset082_BraTS2020", 3, 4, 3, "sigmoid", (128, 128, 128)),
        "acdc": ("Dataset027_ACDC", 3, 1, 4, "softmax", (160, 160, 16)),
    }
    for key, (name, dims, channels, outputs, kind, patch) in expect.items():
        info = get_info(key)
        assert (info.nnunet_name, info.spatial_dims, info.in_channels, info.num_outputs,
                info.output_kind, info.patch_size) == (name, dims, channels, outputs, kind, patch)
        assert len(info.channel_names) == info.in_channels
        assert len(info.class_names) == info.num_outputs
        assert len(info.synthetic_patch_size) == info.spatial_dims
        assert info.url.startswith("https://")
        assert info.synthetic_name.startswith("Dataset9") and "Synth" in info.synthetic_name
    assert get_info("brats").alt_nnunet_names == ("Dataset137_BraTS2021",)
    assert get_info("endoscopy").nnunet_id == 704 and get_info("acdc").synthetic_id == 927


def test_registry_lookups():
    assert find_info("Dataset137_BraTS2021").key == "brats"
    assert find_info("/data/raw/Dataset903_SynthCell/").key == "cell"
    assert find_info("Dataset001_Other") is None
    with pytest.raises(KeyError, match="known: endoscopy, cell, brats, acdc"):
        get_info("kits")


def test_brats_dataset_json_matches_nnunet_converter():
    content = get_info("brats").dataset_json()
    assert content["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    assert content["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                 "enhancing tumor": [3]}
    assert content["regions_class_order"] == [1, 2, 3]


def test_resolve_dataset_dir(synth_root, tmp_path, monkeypatch):
    folder = synth_root / "Dataset904_SynthEndoscopy"
    assert resolve_dataset_dir(folder) == folder
    assert resolve_dataset_dir("Dataset904_SynthEndoscopy", root=synth_root) == folder
    assert resolve_dataset_dir("904", root=synth_root) == folder
    assert resolve_dataset_dir("endoscopy", root=synth_root, synthetic=True) == folder
    monkeypatch.setenv("nnUNet_raw", str(synth_root))       # fallback only
    assert resolve_dataset_dir("Dataset982_SynthBraTS") == synth_root / "Dataset982_SynthBraTS"
    with pytest.raises(DatasetError, match="Dataset982_SynthBraTS: dataset folder not found"):
        resolve_dataset_dir("Dataset982_SynthBraTS", root=tmp_path)  # an explicit root wins


def test_resolve_dataset_dir_needs_no_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(DatasetError, match="pass root=.*nnUNet_raw"):
        resolve_dataset_dir("Dataset704_Endovis17")
    (tmp_path / "Dataset137_BraTS2021").mkdir()
    assert resolve_dataset_dir("brats", root=tmp_path) == tmp_path / "Dataset137_BraTS2021"


@pytest.mark.parametrize("n", [5, 7, 30, 369, 1251])
def test_kfold_matches_sklearn(n):
    sklearn = pytest.importorskip("sklearn.model_selection", reason="scikit-learn not installed")
    ids = [f"case_{i:04d}" for i in range(n)]
    expected = [{"train": [ids[i] for i in tr], "val": [ids[i] for i in te]}
                for tr, te in sklearn.KFold(5, shuffle=True, random_state=12345).split(ids)]
    assert kfold_split(list(reversed(ids))) == expected  # sorted first, as nnU-Net does


def test_kfold_is_a_partition():
    ids = [f"c{i}" for i in range(23)]
    splits = kfold_split(ids)
    assert len(splits) == 5
    assert sorted(sum((f["val"] for f in splits), [])) == sorted(ids)
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(ids)
    with pytest.raises(ValueError, match="cannot make 5 folds from 3"):
        kfold_split(ids[:3])


def test_brats_holdout_protocol_sizes():
    ids = [f"BraTS20_Training_{i:03d}" for i in range(1, 370)]
    splits = brats_holdout_split(ids)
    test = splits[0]["test"]
    assert len(test) == 74
    assert test == kfold_split(ids)[0]["val"]
    for fold in splits:
        assert (len(fold["train"]), len(fold["val"])) == (236, 59)
        assert fold["test"] == test
        assert not set(test) & set(fold["train"] + fold["val"])
        assert sorted(fold["train"] + fold["val"] + test) == ids
    assert sorted(sum((f["val"] for f in splits), [])) == sorted(set(ids) - set(test))


def test_acdc_split_is_grouped_by_patient():
    ids = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 101) for f in (1, 7 + p % 9)]
    splits = patient_kfold_split(ids)
    assert patient_of("patient012_frame01") == "patient012"
    for fold in splits:
        train_patients = {patient_of(c) for c in fold["train"]}
        val_patients = {patient_of(c) for c in fold["val"]}
        assert not train_patients & val_patients
        assert len(val_patients) == 20 and len(fold["val"]) == 40
    assert sorted(sum((f["val"] for f in splits), [])) == sorted(ids)
    assert make_splits(ids, "patient_kfold") == splits
    with pytest.raises(ValueError, match="unknown split protocol"):
        make_splits(ids, "random")


@pytest.mark.parametrize("key", list(DATASETS))
def test_generated_splits_are_deterministic(synth_root, key, tmp_path):
    ds = RawDataset(synth_root / get_info(key).synthetic_name)
    written = (ds.path / "splits_final.json").read_text()
    assert json.loads(written) == make_splits(ds.case_ids(), get_info(key).split_protocol)
    # same input -> same file
    copy = tmp_path / "splits_final.json"
    from logvmamba.data.splits import write_splits
    write_splits(copy, make_splits(ds.case_ids(), get_info(key).split_protocol))
    assert copy.read_text() == written
    assert get_splits(ds) == json.loads(written)


def test_get_splits_generates_when_absent(synth_root, tmp_path):
    import shutil
    folder = tmp_path / "Dataset903_SynthCell"
    shutil.copytree(synth_root / "Dataset903_SynthCell", folder)
    (folder / "splits_final.json").unlink()
    splits = get_splits(folder)
    assert (folder / "splits_final.json").is_file()
    assert splits == kfold_split(RawDataset(folder).case_ids())


def test_split_case_ids(synth_root):
    brats = RawDataset(synth_root / "Dataset982_SynthBraTS")
    splits = get_splits(brats)
    assert split_case_ids(brats, "test", 0) == splits[0]["test"]
    assert split_case_ids(brats, "val", 2) == splits[2]["val"]
    all_train = split_case_ids(brats, "train", "all")
    assert sorted(all_train + splits[0]["test"]) == brats.case_ids()
    assert split_case_ids(brats, "val", "all") == []
    cell = RawDataset(synth_root / "Dataset903_SynthCell")
    assert split_case_ids(cell, "test", 0) == cell.case_ids("Ts") and len(cell.case_ids("Ts")) == 2
    with pytest.raises(ValueError, match="fold must be"):
        split_case_ids(cell, "train", 5)
    with pytest.raises(ValueError, match="split must be"):
        split_case_ids(cell, "training", 0)


def test_nnunet_preprocessed_splits_are_used(synth_root, tmp_path, monkeypatch):
    import shutil
    folder = tmp_path / "raw" / "Dataset903_SynthCell"
    shutil.copytree(synth_root / "Dataset903_SynthCell", folder)
    (folder / "splits_final.json").unlink()
    ids = RawDataset(folder).case_ids()
    theirs = tmp_path / "pre" / "Dataset903_SynthCell"
    theirs.mkdir(parents=True)
    custom = [{"train": ids[:6], "val": ids[6:]}]
    (theirs / "splits_final.json").write_text(json.dumps(custom))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert get_splits(folder) == custom
    assert not (folder / "splits_final.json").exists()


def test_malformed_splits_file(tmp_path):
    path = tmp_path / "splits_final.json"
    path.write_text("[{\"train\": [\"a\"]}]")
    with pytest.raises(DatasetError, match=r"splits_final.json: malformed: fold 0 must be an object"):
        load_splits(path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"splits_final.json: malformed JSON"):
        load_splits(path)
    path.write_text(json.dumps([{"train": ["a", "zz"], "val": ["b"]}]))
    with pytest.raises(DatasetError, match=r"lists case\(s\) not in imagesTr: zz"):
        load_splits(path, known_ids=["a", "b"])
    assert np.all([isinstance(x, str) for x in load_splits(path)[0]["train"]])
