"""What would break training later is refused up front: NaN / inf voxels, overlapping splits,
a patch a model cannot take, overrides under a name the config does not train.

Expected counts and names are the ones these tests plant; the dry runs run Snakemake on a copy
of the default config with one key changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from logvmamba.config import ConfigError, check_overrides, check_patch_sizes, load_config, register_datasets
from logvmamba.data import DatasetError, RawDataset
from logvmamba.data.fingerprint import compute_fingerprint
from logvmamba.data.splits import get_splits, load_splits
from logvmamba.pipeline import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
NAME = "Dataset991_NanCheck"
SHAPE = (6, 5, 4)


def _nan_dataset(root: Path, bad_case: int = 1, bad_channel: int = 1) -> Path:
    """Three 2-channel NIfTI cases; ``bad_case`` holds 3 NaN and 1 inf voxel in ``bad_channel``."""
    folder = root / NAME
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    rs = np.random.RandomState(0)
    for i in range(3):
        label = np.zeros(SHAPE, np.uint8)
        label[1:4, 1:4, 1:3] = 1
        for c in range(2):
            image = rs.normal(100.0, 10.0, SHAPE).astype(np.float32)
            if (i, c) == (bad_case, bad_channel):
                image[0, 0, :3] = np.nan
                image[5, 4, 3] = np.inf
            nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "imagesTr" / f"nan_{i:03d}_{c:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "labelsTr" / f"nan_{i:03d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "organ": 1}, "numTraining": 3,
        "file_ending": ".nii.gz", "name": "NanCheck"}))
    return folder


MESSAGE = (r"nan_001_0001\.nii\.gz: image holds NaN or infinite values in 4 voxel\(s\) of 120 "
           r"\(case 'nan_001', channel 1\)")


def test_validation_names_the_file_case_channel_and_count_of_non_finite_voxels(tmp_path):
    ds = RawDataset(_nan_dataset(tmp_path))
    with pytest.raises(DatasetError, match=MESSAGE) as err:
        ds.validate()
    assert "\n" not in str(err.value)


def test_the_prepare_data_step_refuses_non_finite_images(tmp_path):
    folder = _nan_dataset(tmp_path)
    marker = tmp_path / "prepared.json"
    with pytest.raises(DatasetError, match=MESSAGE):
        prepare_dataset("Dataset991", str(tmp_path), False, marker, folder=folder)
    assert not marker.exists()


def test_the_fingerprint_names_the_case_and_channel_too(tmp_path):
    folder = _nan_dataset(tmp_path, bad_case=2, bad_channel=0)
    with pytest.raises(DatasetError, match=r"nan_002_0000\.nii\.gz: image holds NaN or infinite values "
                                           r"in 4 voxel\(s\) of 120 \(case 'nan_002', channel 0\)"):
        compute_fingerprint(folder, intensity_samples=30)


def test_a_finite_dataset_still_validates(tmp_path):
    ds = RawDataset(_nan_dataset(tmp_path, bad_case=-1))
    assert ds.validate() == 3


# ----------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------

IDS = ["c0", "c1", "c2", "c3"]


@pytest.mark.parametrize("fold1, keys, shown", [
    ({"train": ["c0", "c1", "c2"], "val": ["c2", "c3"]}, "'train' and 'val'", "c2"),
    ({"train": ["c0", "c1"], "val": ["c2"], "test": ["c3", "c1", "c0"]}, "'train' and 'test'", "c0, c1"),
])
def test_a_case_in_two_parts_of_one_fold_is_an_error(tmp_path, fold1, keys, shown):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": ["c0", "c1"], "val": ["c2", "c3"]}, fold1]))
    with pytest.raises(DatasetError, match=rf"splits_final\.json: fold 1 lists \d case\(s\) in both {keys}: {shown}$"):
        load_splits(path, IDS)


def test_the_split_step_reads_the_dataset_file_and_refuses_overlap(tmp_path):
    ds = RawDataset(_nan_dataset(tmp_path, bad_case=-1))
    (ds.path / "splits_final.json").write_text(json.dumps([{"train": ["nan_000", "nan_001"],
                                                            "val": ["nan_001", "nan_002"]}]))
    with pytest.raises(DatasetError, match=r"fold 0 lists 1 case\(s\) in both 'train' and 'val': nan_001"):
        get_splits(ds)


def test_disjoint_splits_load(tmp_path):
    splits = [{"train": ["c0", "c1"], "val": ["c2", "c3"], "test": []}, {"train": ["c2", "c3"], "val": ["c0", "c1"]}]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(splits))
    assert load_splits(path, IDS) == splits


# ----------------------------------------------------------------------------
# the config: patch sizes and overrides, refused at parse time
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_config():
    config = load_config(ROOT / "config/config.yaml")
    register_datasets(config)
    return config


def test_a_patch_the_model_cannot_take_names_key_dataset_model_and_multiple(default_config):
    # logvmamba's 2D network (Swin-UMamba-dagger) needs each side a multiple of 32
    config = dict(default_config, patch_size={"endoscopy": [60, 90]})
    with pytest.raises(ConfigError, match=r"^patch_size: endoscopy: \[60, 90\] cannot train model 'logvmamba' "
                                          r"\(logvmamba_test\): .*multiple of 32.*"
                                          r"nearest patch it takes is \[64, 96\]$"):
        check_patch_sizes(config)


def test_patches_the_models_take_pass(default_config):
    check_patch_sizes(default_config)  # no patch_size entries: nothing to check
    check_patch_sizes(dict(default_config, patch_size={"endoscopy": [64, 96], "brats": [32, 32, 32]}))
    # swin_unetr's recipe rounds the patch up to a multiple of 32 itself, as training does
    swin = dict(default_config, models=["swin_unetr"], ablations={}, report={"reference": "swin_unetr"})
    check_patch_sizes(dict(swin, patch_size={"endoscopy": [60, 90]}))


def test_overrides_under_a_model_the_config_does_not_train_are_an_error(default_config):
    config = dict(default_config, overrides={"nnunett": {"brats": {"lr": 0.1}}})
    with pytest.raises(ConfigError, match=r"^overrides: 'nnunett' is not a model this config trains "
                                          r"\(models and ablations: logvmamba, nnunet, logvmamba_vanilla"):
        check_overrides(config)


def test_overrides_under_an_unconfigured_user_dataset_are_an_error(default_config):
    config = dict(default_config, overrides={"nnunet": {"Dataset925": {"lr": 0.1}}})
    with pytest.raises(ConfigError, match=r"^overrides: nnunet: 'Dataset925' is not a configured dataset "
                                          r"\(datasets: endoscopy, cell, brats, acdc\)$"):
        check_overrides(config)


def test_overrides_the_config_uses_pass(default_config):
    check_overrides(default_config)
    # a base's overrides apply to its variants: only the ablations train a logvmamba recipe here
    only_ablations = dict(default_config, models=["nnunet"], ablations={"datasets": ["endoscopy"],
                                                                        "mixers": ["logvmamba_local"]})
    check_overrides(only_ablations)
    # the four are known datasets: a shared config may keep their overrides while running fewer
    check_overrides(dict(default_config, datasets=["brats"]))


def _dry_run(tmp_path: Path, **changes) -> tuple[int, str]:
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "-n", "all_metrics", "--configfile", str(path),
           "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("changes, message", [
    ({"patch_size": {"endoscopy": [60, 90]}},
     "patch_size: endoscopy: [60, 90] cannot train model 'logvmamba' (logvmamba_test)"),
    ({"overrides": {"nnunett": {"brats": {"lr": 0.1}}}}, "overrides: 'nnunett' is not a model this config trains"),
])
def test_the_dry_run_refuses_the_config(tmp_path, changes, message):
    code, out = _dry_run(tmp_path, **changes)
    assert code != 0 and message in out, out[-3000:]
    assert not (tmp_path / "results").exists()
