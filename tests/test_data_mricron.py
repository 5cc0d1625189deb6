"""Real NIfTI files that no one here wrote, read through the suite's reader and loader.

The Debian package ``mricron-data`` ships the Colin27 ("ch2") T1 template, its
skull-stripped version (``ch2bet``) and the AAL atlas on the same 1 mm grid.
The test builds a one-case nnU-Net raw dataset that links to them unchanged
(channels ch2bet, ch2; label aal) and reads it like any other dataset.
CI installs the package (``apt-get install -y mricron-data``). Without it the
tests are skipped with the reason, except under ``CI=true``, where
:func:`test_mricron_data_is_installed` fails.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from logvmamba.data import RawDataset, load_case, make_loader

TEMPLATES = Path(os.environ.get("MRICRON_TEMPLATES", "/usr/share/mricron/templates"))
FILES = ("ch2bet.nii.gz", "ch2.nii.gz", "aal.nii.gz")

MISSING = [f for f in FILES if not (TEMPLATES / f).is_file()]
REASON = (f"Debian package mricron-data not installed (no {', '.join(MISSING)} in {TEMPLATES}); "
          f"install it with `apt-get install -y mricron-data`")
needs_templates = pytest.mark.skipif(bool(MISSING), reason=REASON)


def test_mricron_data_is_installed():
    """CI must run the real-NIfTI tests; elsewhere missing data only skips them."""
    if MISSING and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {REASON}")
    if MISSING:
        pytest.skip(REASON)


def _link(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src)
    except OSError:  # file systems without symlinks
        dst.write_bytes(src.read_bytes())


@pytest.fixture(scope="module")
def mricron_dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mricron") / "Dataset950_MricronColin27"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    _link(TEMPLATES / "ch2bet.nii.gz", folder / "imagesTr" / "colin27_0000.nii.gz")
    _link(TEMPLATES / "ch2.nii.gz", folder / "imagesTr" / "colin27_0001.nii.gz")
    _link(TEMPLATES / "aal.nii.gz", folder / "labelsTr" / "colin27.nii.gz")
    labels = {"background": 0}
    names = TEMPLATES / "aal.nii.txt"
    for line in names.read_text().splitlines() if names.is_file() else []:
        match = re.match(r"^\s*(\d+)\s+(\S+)", line)
        if match:
            labels[match.group(2)] = int(match.group(1))
    if len(labels) == 1:  # no name table: declare the values the atlas holds
        values = np.unique(np.asanyarray(nib.load(str(TEMPLATES / "aal.nii.gz")).dataobj))
        labels.update({f"region_{int(v)}": int(v) for v in values if v != 0})
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1_brain", "1": "T1"}, "labels": labels, "numTraining": 1,
        "file_ending": ".nii.gz", "name": folder.name,
        "description": "Colin27 template and AAL atlas from the Debian package mricron-data"}))
    return folder


@needs_templates
def test_reader_reads_real_nifti(mricron_dataset):
    ds = RawDataset(mricron_dataset)
    assert ds.key == "Dataset950" and ds.info.user and ds.spatial_dims == 3 and ds.num_channels == 2
    assert ds.case_ids() == ["colin27"]
    case = ds.read_case("colin27")
    reference = nib.load(str(TEMPLATES / "ch2bet.nii.gz"))
    assert case.image.shape == (2, *reference.shape)
    assert case.spacing == pytest.approx(tuple(float(z) for z in reference.header.get_zooms()[:3]))
    assert np.allclose(case.affine, reference.affine)
    assert np.array_equal(case.image[0], np.asanyarray(reference.dataobj).astype(np.float32))
    atlas = np.asanyarray(nib.load(str(TEMPLATES / "aal.nii.gz")).dataobj)
    assert np.array_equal(case.label, atlas)
    assert set(np.unique(case.label).tolist()) <= set(ds.label_values)
    assert (case.label[case.image[0] == 0] == 0).mean() > 0.9  # atlas regions lie inside the brain
    assert ds.validate() == 1


@needs_templates
def test_loader_and_inference_on_real_nifti(mricron_dataset):
    ds = RawDataset(mricron_dataset)
    splits = [{"train": ["colin27"], "val": ["colin27"]}]
    loader = make_loader(ds, "train", fold=0, patch_size=(32, 32, 32), batch_size=1, seed=0, splits=splits,
                         normalization="zscore_nonzero")
    batch = next(iter(loader))
    assert batch["image"].shape == (1, 2, 32, 32, 32) and batch["label"].shape == (1, 1, 32, 32, 32)
    assert batch["label"].dtype == torch.long and int(batch["label"].max()) <= max(ds.label_values)
    case = load_case(ds, "colin27", normalization="zscore_nonzero")
    brain = case.image[0] != 0
    assert float(case.image[0][brain].mean()) == pytest.approx(0.0, abs=1e-3)
    assert torch.equal(brain, torch.from_numpy(ds.read_case("colin27").image[0] != 0))
