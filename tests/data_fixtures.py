"""Fixtures shared by the tests/test_data_*.py files (loaded with ``pytest_plugins``).

``synth_root``: the four synthetic datasets, generated once per session.
``data_helpers``: this module, whose builders make fake release trees that
mirror the official layouts at toy size (see docs/datasets.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from logvmamba.data import synthetic
from logvmamba.data.formats import save_instance_mask, save_nifti, save_png

SYNTH_SEED = 7

#: one small synthetic set per dataset (training cases); enough for 5 folds
SYNTH_CASES = {"endoscopy": 10, "cell": 10, "brats": 10, "acdc": 10}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """All four synthetic datasets, small, generated once per test session."""
    root = tmp_path_factory.mktemp("synthetic_raw")
    for key, n in SYNTH_CASES.items():
        synthetic.generate(key, root, seed=SYNTH_SEED, num_cases=n, num_test=2)
    return root


@pytest.fixture(scope="session")
def data_helpers():
    """The builders and constants of this module."""
    return sys.modules[__name__]


def tree_files(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file below ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------
# fake official releases
# ----------------------------------------------------------------------------

def _rng(i: int) -> np.random.Generator:
    return np.random.default_rng(1000 + i)


def make_umamba_endovis(root: Path, n_train: int = 6, n_test: int = 2) -> Path:
    """U-Mamba's Dataset704_Endovis17 package: imagesTr/labelsTr/imagesTs/labelsTs pngs + dataset.json."""
    base = root / "Dataset704_Endovis17"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (base / sub).mkdir(parents=True)
    for i in range(n_train + n_test):
        sub = "Tr" if i < n_train else "Ts"
        case = f"seq{1 + i // 3}_frame{i % 3:03d}"
        rng = _rng(i)
        save_png(base / f"images{sub}" / f"{case}_0000.png", rng.integers(0, 256, (3, 24, 32)))
        save_png(base / f"labels{sub}" / f"{case}.png", rng.integers(0, 8, (24, 32)))
    (base / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0}, "numTraining": n_train,
        "file_ending": ".png", "name": "Dataset704_Endovis17"}))
    return base


def make_umamba_cell(root: Path, n_train: int = 6, n_val: int = 2) -> Path:
    """U-Mamba's Dataset703_NeurIPSCell package: imagesTr/labelsTr, imagesVal + labelsVal-instance-mask tiffs."""
    base = root / "Dataset703_NeurIPSCell"
    for sub in ("imagesTr", "labelsTr", "imagesVal", "labelsVal-instance-mask"):
        (base / sub).mkdir(parents=True)
    for i in range(n_train):
        case = f"cell_{i + 1:05d}"
        rng = _rng(i)
        save_png(base / "imagesTr" / f"{case}_0000.png", rng.integers(0, 256, (3, 20, 22)))
        save_png(base / "labelsTr" / f"{case}.png", rng.integers(0, 3, (20, 22)))
    for i in range(n_val):
        case = f"cell_{i + 1:05d}"
        image = _rng(50 + i).integers(0, 256, (20, 22))
        # the second validation image is grayscale: the converter must make it RGB
        save_png(base / "imagesVal" / f"{case}_0000.png", image if i == 1 else np.stack([image] * 3))
        instances = np.zeros((20, 22), np.int32)
        instances[2:8, 2:9], instances[2:8, 9:15], instances[12:18, 4:12] = 1, 2, 3
        save_instance_mask(base / "labelsVal-instance-mask" / f"{case}_label.tiff", instances)
    return base


BRATS_SHAPE = (10, 12, 8)


def brats_seg(i: int) -> np.ndarray:
    """The raw BraTS segmentation of fake case ``i`` (labels 0, 1, 2, 4)."""
    seg = np.zeros(BRATS_SHAPE, np.uint8)
    seg[2:8, 3:9, 2:6] = 2
    seg[3:7, 4:8, 3:5] = 4
    seg[4:6, 5:7, 3:5] = 1
    seg[0, 0, i % BRATS_SHAPE[2]] = 0
    return seg


def make_brats2020(root: Path, n: int = 7, seg_values=None) -> Path:
    """``MICCAI_BraTS2020_TrainingData/BraTS20_Training_NNN/BraTS20_Training_NNN_{t1,t1ce,t2,flair,seg}``.

    Case 3 is stored as uncompressed ``.nii`` with its segmentation under
    another name, as one case of the real 2020 release is.
    """
    base = root / "MICCAI_BraTS2020_TrainingData"
    base.mkdir(parents=True)
    (base / "name_mapping.csv").write_text("BraTS_2020_subject_ID\n")
    affine = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    for i in range(1, n + 1):
        case = f"BraTS20_Training_{i:03d}"
        folder = base / case
        folder.mkdir()
        ending = ".nii" if i == 3 else ".nii.gz"
        for m, mod in enumerate(("t1", "t1ce", "t2", "flair")):
            vol = (_rng(i * 10 + m).random(BRATS_SHAPE) * 500 + 1).astype(np.int16)
            save_nifti(folder / f"{case}_{mod}{ending}", vol, affine)
        seg = brats_seg(i) if seg_values is None or i not in seg_values else seg_values[i]
        seg_name = "W39_1998.09.19_Segm.nii" if i == 3 else f"{case}_seg{ending}"
        save_nifti(folder / seg_name, seg, affine)
    return base


def make_brats2021(root: Path, n: int = 7) -> Path:
    """BraTS 2021 training folder: ``BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz``."""
    base = root / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData"
    base.mkdir(parents=True)
    for i in range(n):
        case = f"BraTS2021_{i:05d}"
        (base / case).mkdir()
        for m, mod in enumerate(("t1", "t1ce", "t2", "flair")):
            vol = (_rng(i * 10 + m).random(BRATS_SHAPE) * 500 + 1).astype(np.int16)
            save_nifti(base / case / f"{case}_{mod}.nii.gz", vol)
        save_nifti(base / case / f"{case}_seg.nii.gz", brats_seg(i))
    return base


ACDC_SHAPE = (16, 14, 5)


def make_acdc(root: Path, n_train: int = 5, n_test: int = 2, test_gt: bool = True) -> Path:
    """``training/patientNNN/{Info.cfg, patientNNN_4d.nii.gz, patientNNN_frameMM[_gt].nii.gz}`` (+ testing/)."""
    base = root / "ACDC" / "database"
    spacing = (1.5625, 1.5625, 10.0)
    for i in range(1, n_train + n_test + 1):
        folder = base / ("training" if i <= n_train else "testing") / f"patient{i:03d}"
        folder.mkdir(parents=True)
        es = 8 + i
        folder.joinpath("Info.cfg").write_text(
            f"ED: 1\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
        save_nifti(folder / f"patient{i:03d}_4d.nii.gz", np.zeros((*ACDC_SHAPE, 3), np.int16), spacing=spacing)
        for frame in (1, es):
            rng = _rng(i * 100 + frame)
            save_nifti(folder / f"patient{i:03d}_frame{frame:02d}.nii.gz",
                       rng.integers(0, 400, ACDC_SHAPE).astype(np.int16), spacing=spacing)
            if i <= n_train or test_gt:
                save_nifti(folder / f"patient{i:03d}_frame{frame:02d}_gt.nii.gz",
                           rng.integers(0, 4, ACDC_SHAPE).astype(np.uint8), spacing=spacing)
    return root / "ACDC"
