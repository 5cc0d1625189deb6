"""Synthetic stand-ins: same format as the real data, deterministic, with learnable structure."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from logvmamba.data import DATASETS, RawDataset, get_info
from logvmamba.data import synthetic
from logvmamba.data.labels import instance_to_semantic



@pytest.mark.parametrize("key", list(DATASETS))
def test_synthetic_dataset_reads_back(synth_root, key, data_helpers):
    info = get_info(key)
    ds = RawDataset(synth_root / info.synthetic_name)
    assert ds.key == key and ds.is_synthetic
    assert ds.json["name"] == info.synthetic_name
    assert "SYNTHETIC" in ds.json["description"] and ds.json["stands_in_for"] == info.nnunet_name
    assert ds.channel_names == info.channel_names and ds.num_channels == info.in_channels
    assert ds.labels == info.dataset_json()["labels"]
    assert ds.num_classes == info.num_outputs
    assert ds.spatial_dims == info.spatial_dims
    n_train = data_helpers.SYNTH_CASES[key]
    assert len(ds.case_ids("Tr")) == n_train == ds.json["numTraining"]
    assert ds.validate() == n_train + ds.json["numTest"]
    seen = set()
    for case in ds:
        assert case.image.shape[0] == info.in_channels
        assert case.image.dtype == np.float32 and case.label.shape == case.spatial_shape
        seen |= set(np.unique(case.label).tolist())
    assert seen == set(ds.label_values)  # every label occurs


def test_endoscopy_frames_are_rgb_with_instruments(synth_root):
    ds = RawDataset(synth_root / "Dataset904_SynthEndoscopy")
    case = ds.read_case(ds.case_ids()[0])
    assert case.image.shape == (3, 96, 128) and case.files.images[0].name.endswith("_0000.png")
    assert len(case.files.images) == 1  # one RGB png holds the three channels
    assert 0.02 < (case.label > 0).mean() < 0.6
    # instruments and tissue differ in colour statistics
    fg, bg = case.image[:, case.label > 0], case.image[:, case.label == 0]
    assert abs(fg[0].mean() - fg[1].mean()) < abs(bg[0].mean() - bg[1].mean())


def test_endoscopy_classes_have_their_own_colour(synth_root):
    """Each instrument class's median colour is far (> 60 of 255 in some channel) from the
    tissue's and from every other class's, over the whole stand-in."""
    ds = RawDataset(synth_root / "Dataset904_SynthEndoscopy")
    pixels = {}
    for case_id in ds.case_ids():
        case = ds.read_case(case_id)
        inner = ndimage.binary_erosion(case.label > 0, iterations=2)  # away from blurred edges
        for value in np.unique(case.label):
            where = (case.label == value) & (inner if value else ~ndimage.binary_dilation(case.label > 0, iterations=4))
            pixels.setdefault(int(value), []).append(case.image[:, where])
    medians = {k: np.median(np.concatenate(v, axis=1), axis=1) for k, v in pixels.items()}
    assert set(medians) == set(range(8))
    for a in medians:
        for b in medians:
            if a < b:
                assert np.abs(medians[a] - medians[b]).max() > 60, (a, b, medians[a], medians[b])


def test_endoscopy_instruments_have_a_shadow_rim(synth_root):
    """The two pixels outside an instrument are darker than the tissue further out."""
    ds = RawDataset(synth_root / "Dataset904_SynthEndoscopy")
    case = ds.read_case(ds.case_ids()[0])
    tool = case.label > 0
    rim = ndimage.binary_dilation(tool, iterations=2) & ~tool
    tissue = ~ndimage.binary_dilation(tool, iterations=5)
    brightness = case.image.astype(float).mean(0)
    assert brightness[rim].mean() < 0.6 * brightness[tissue].mean()


def test_cell_instances_touch_and_match_semantic_labels(synth_root):
    ds = RawDataset(synth_root / "Dataset903_SynthCell")
    touching = 0
    for subset in ("Tr", "Ts"):
        for files in ds.cases(subset):
            assert files.instances is not None and files.instances.suffix == ".tiff"
            inst = ds.read_instances(files)
            label = ds.read_case(files).label
            assert np.array_equal(instance_to_semantic(inst), label)
            assert set(np.unique(inst)) == set(range(inst.max() + 1))  # 0..N, consecutive
            # two different cells side by side somewhere
            a, b = inst[:, :-1], inst[:, 1:]
            touching += int(((a > 0) & (b > 0) & (a != b)).any())
    assert touching >= 5


def test_instance_to_semantic_rule():
    inst = np.zeros((6, 8), np.int32)
    inst[1:5, 1:4], inst[1:5, 4:7] = 1, 2
    sem = instance_to_semantic(inst)
    assert sem[0].tolist() == [0] * 8
    assert sem[2].tolist() == [0, 2, 1, 2, 2, 1, 2, 0]  # touching cells get boundary on both sides


def test_brats_volumes_are_skull_stripped_with_nested_regions(synth_root):
    ds = RawDataset(synth_root / "Dataset982_SynthBraTS")
    assert ds.regions == (("whole tumor", (1, 2, 3)), ("tumor core", (2, 3)), ("enhancing tumor", (3,)))
    assert ds.json["regions_class_order"] == [1, 2, 3]
    for case_id in ds.case_ids()[:4]:
        case = ds.read_case(case_id)
        assert case.image.shape == (4, 48, 48, 48) and case.spacing == (1.0, 1.0, 1.0)
        brain = case.image[0] > 0
        assert 0.2 < brain.mean() < 0.7 and (case.image > 0).all(axis=0)[brain].all()
        assert not brain[0].any() and not brain[:, :, -1].any()  # background is 0 around the brain
        assert (case.label[~brain] == 0).all()
        # enhancing tumour is bright on T1ce, oedema on FLAIR
        enh, oed = case.label == 3, case.label == 1
        if enh.any():
            assert case.image[1][enh].mean() > case.image[1][brain & ~enh].mean()
        assert case.image[3][oed].mean() > case.image[3][brain & (case.label == 0)].mean()


def test_acdc_volumes_are_anisotropic_with_ed_and_es(synth_root, data_helpers):
    ds = RawDataset(synth_root / "Dataset927_SynthACDC")
    ids = ds.case_ids()
    assert ids[0] == "patient001_frame01" and len(ids) == data_helpers.SYNTH_CASES["acdc"]
    patients = {i.split("_frame")[0] for i in ids}
    assert len(patients) * 2 == len(ids)
    for case_id in ids[:4]:
        files = ds.get(case_id)
        header = nib.load(str(files.images[0])).header
        zooms = header.get_zooms()
        assert zooms[2] >= 5.0 and zooms[0] < 2.0 and zooms[0] == zooms[1]  # anisotropic, in the header
        case = ds.read_case(case_id)
        assert case.spacing == pytest.approx(tuple(float(z) for z in zooms))
        assert 8 <= case.image.shape[-1] <= 12
    ed, es = (ds.read_case(i).label for i in ids[:2])
    assert (ed == 3).sum() > (es == 3).sum()  # the LV cavity shrinks at end-systole


@pytest.mark.parametrize("key", list(DATASETS))
def test_generation_is_deterministic(tmp_path, key, data_helpers):
    n = {"acdc": 10, "brats": 7}.get(key, 5)
    a = synthetic.generate(key, tmp_path / "a", seed=3, num_cases=n, num_test=0)
    b = synthetic.generate(key, tmp_path / "b", seed=3, num_cases=n, num_test=0)
    files_a, files_b = data_helpers.tree_files(a), data_helpers.tree_files(b)
    assert files_a == files_b
    c = synthetic.generate(key, tmp_path / "c", seed=4, num_cases=n, num_test=0)
    images_a = {v for k, v in files_a.items() if k.startswith("images")}
    images_c = {v for k, v in data_helpers.tree_files(c).items() if k.startswith("images")}
    assert images_a.isdisjoint(images_c)


def test_more_cases_keep_the_first_ones(tmp_path, data_helpers):
    five = data_helpers.tree_files(synthetic.generate("cell", tmp_path / "five", seed=3, num_cases=5, num_test=0,
                                                      write_splits=False))
    eight = data_helpers.tree_files(synthetic.generate("cell", tmp_path / "eight", seed=3, num_cases=8, num_test=0,
                                                       write_splits=False))
    cases = {k: v for k, v in five.items() if k != "dataset.json"}
    assert len(cases) == 5 * 3  # image, label, instance mask per case
    assert all(eight[k] == v for k, v in cases.items())
    other = data_helpers.tree_files(synthetic.generate("cell", tmp_path / "other", seed=4, num_cases=5, num_test=0,
                                                       write_splits=False))
    assert all(other[k] != v for k, v in cases.items() if k.startswith("images"))


def test_generate_refuses_to_overwrite_and_cleans_up(tmp_path):
    synthetic.generate("cell", tmp_path, num_cases=5, num_test=0)
    with pytest.raises(Exception, match="already exists"):
        synthetic.generate("cell", tmp_path, num_cases=5, num_test=0)
    synthetic.generate("cell", tmp_path, num_cases=6, num_test=0, overwrite=True)
    assert json.loads((tmp_path / "Dataset903_SynthCell" / "dataset.json").read_text())["numTraining"] == 6
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset903_SynthCell"]  # no temp folders left
    with pytest.raises(ValueError, match="at least 7"):
        synthetic.generate("brats", tmp_path, num_cases=6)


def test_synthetic_command(tmp_path, capsys):
    assert synthetic.main(["acdc", str(tmp_path), "--seed", "2", "--cases", "10"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("Dataset927_SynthACDC")
    ds = RawDataset(tmp_path / "Dataset927_SynthACDC")
    assert ds.json["synthetic_seed"] == 2 and len(ds.case_ids()) == 10
    assert synthetic.main(["acdc", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_all_is_fast(tmp_path):
    import time
    start = time.perf_counter()
    folders = synthetic.generate_all(tmp_path, seed=1)
    assert sorted(p.name for p in folders.values()) == sorted(i.synthetic_name for i in DATASETS.values())
    assert time.perf_counter() - start < 30  # a few seconds on 2 cores
