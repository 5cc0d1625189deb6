"""A user's own nnU-Net v2 dataset: facts from its dataset.json, planned patch, nnU-Net's
normalisation by channel name, and the whole workflow with no code change.

The dataset is built here: a new id (777), odd channel names ("CT", "T2-FS (water)") and
two nested regions with ``regions_class_order``, on an anisotropic grid with an offset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from logvmamba.config import ConfigError, fitting_patch, load_config, register_datasets
from logvmamba.data import RawDataset, get_info
from logvmamba.data.loading import ChannelNormalized, resolved_normalization
from logvmamba.data.registry import short_names

ROOT = Path(__file__).resolve().parents[1]
NAME = "Dataset777_OddRegions"
SPACING = (1.25, 1.25, 3.0)
SHAPE = (28, 24, 12)


def _affine() -> np.ndarray:
    affine = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0])  # a flipped x axis, as radiological files have
    affine[:3, 3] = (20.0, 15.0, 7.5)
    return affine


def make_odd_dataset(root: Path, n: int = 12, seed: int = 0) -> Path:
    """An organ (label 1) with a lesion (label 2) inside; regions organ = {1, 2}, lesion = {2}."""
    rs = np.random.RandomState(seed)
    folder = root / NAME
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(SHAPE, SPACING)], indexing="ij"))
    for i in range(n):
        centre = np.array([rs.uniform(12, 22), rs.uniform(10, 20), rs.uniform(12, 24)])
        organ = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0)) < rs.uniform(6, 9)
        shift = centre + rs.uniform(-2, 2, 3)
        lesion = organ & (np.sqrt(((grid - shift[:, None, None, None]) ** 2).sum(0)) < rs.uniform(2.5, 4))
        label = organ.astype(np.uint8) + lesion.astype(np.uint8)
        ct = np.choose(label, [-900.0, 60.0, 130.0]) + rs.normal(0, 25, SHAPE)
        t2 = np.choose(label, [50.0, 300.0, 180.0]) + rs.normal(0, 30, SHAPE)
        case = f"odd_{i:03d}"
        for c, image in enumerate((ct, t2)):
            nib.save(nib.Nifti1Image(image.astype(np.float32), _affine()), folder / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, _affine()), folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "T2-FS (water)"},
        "labels": {"background": 0, "organ": [1, 2], "lesion": [2]},
        "regions_class_order": [1, 2], "numTraining": n, "file_ending": ".nii.gz", "name": "OddRegions"}))
    return folder


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user")
    make_odd_dataset(root)
    return root


def test_facts_come_from_dataset_json(odd_root):
    ds = RawDataset(odd_root / NAME)
    info = ds.info
    assert (info.key, info.user, info.spatial_dims, info.in_channels, info.num_outputs) == ("Dataset777", True, 3, 2, 2)
    assert info.channel_names == ("CT", "T2-FS (water)") and info.output_kind == "sigmoid"
    assert info.scoring == "regions" and info.regions_class_order == (1, 2) and info.split_protocol == "kfold"
    assert info.metrics == ("Dice_organ", "Dice_lesion", "Dice_mean", "HD95_organ", "HD95_lesion", "HD95_mean")
    assert info.main_metric == "Dice_mean" and get_info("Dataset777") is info


def test_colliding_initials_are_written_out():
    assert short_names(["whole tumor", "tumor core"]) == ["WT", "TC"]
    assert short_names(["left cortex", "lateral cortex"]) == ["left-cortex", "lateral-cortex"]


def test_config_entries_become_keys(odd_root, tmp_path):
    base = load_config(ROOT / "config/config.yaml")
    for entry in (NAME, "Dataset777", str(odd_root / NAME)):
        config = dict(base, data_root=str(odd_root), datasets=["cell", entry], ablations={})
        folders = register_datasets(config)
        assert config["datasets"] == ["cell", "Dataset777"]
        assert folders == {"Dataset777": str((odd_root / NAME).resolve())}
    config = dict(base, data_root=str(odd_root), datasets=[NAME, "Dataset777"], ablations={})
    with pytest.raises(ConfigError, match="Dataset777 listed twice"):
        register_datasets(config)
    config = dict(base, data_root=str(tmp_path), datasets=["Dataset778_Nowhere"], ablations={})
    with pytest.raises(ConfigError, match="Dataset778_Nowhere: dataset folder not found"):
        register_datasets(config)


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cdf = np.cumsum(weights[order]) / weights.sum()
    return float(values[order][np.searchsorted(cdf, q / 100.0)])


def test_ct_is_clipped_to_foreground_percentiles_and_z_scored(odd_root):
    ds = RawDataset(odd_root / NAME)
    ct, t2 = resolved_normalization(ds)
    assert t2 == {"scheme": "zscore", "nonzero": False}
    # independent: numpy over every foreground voxel, each case weighted equally (nnU-Net draws
    # the same number of samples from each case's foreground)
    per_case = []
    for f in sorted((ds.path / "imagesTr").glob("*_0000.nii.gz")):
        label = nib.load(ds.path / "labelsTr" / f.name.replace("_0000", "")).get_fdata()
        per_case.append(nib.load(f).get_fdata()[label > 0])
    values = np.concatenate(per_case)
    weights = np.concatenate([np.full(len(v), 1.0 / len(v)) for v in per_case])
    mean = float(np.average(values, weights=weights))
    std = float(np.sqrt(np.average((values - mean) ** 2, weights=weights)))
    assert ct["scheme"] == "ct"
    np.testing.assert_allclose([ct["lower"], ct["upper"]],
                               [_weighted_percentile(values, weights, q) for q in (0.5, 99.5)], atol=1.0)
    np.testing.assert_allclose([ct["mean"], ct["std"]], [mean, std], rtol=0.005)


def test_channel_normalization_by_hand():
    image = torch.tensor([[[-1000.0, 0.0, 50.0, 400.0]], [[0.0, 2.0, 4.0, 6.0]], [[0.0, 3.0, 0.0, 5.0]]])
    specs = [{"scheme": "ct", "lower": -100.0, "upper": 100.0, "mean": 20.0, "std": 40.0},
             {"scheme": "zscore", "nonzero": False}, {"scheme": "zscore", "nonzero": True}]
    out = ChannelNormalized(specs)({"image": image})["image"]
    np.testing.assert_allclose(out[0, 0], [-3.0, -0.5, 0.75, 2.0])  # (clip - 20) / 40
    np.testing.assert_allclose(out[1, 0], np.array([-3.0, -1.0, 1.0, 3.0]) / np.sqrt(5.0), rtol=1e-6)
    np.testing.assert_allclose(out[2, 0], [0.0, -1.0, 0.0, 1.0], rtol=1e-6)  # mean 4, std 1 over the non-zero


def test_rgb_to_0_1_refuses_a_16_bit_image_instead_of_clamping_it():
    spec = [{"scheme": "rgb_to_0_1"}]
    out = ChannelNormalized(spec)({"image": torch.tensor([[[0.0, 51.0, 255.0]]])})["image"]
    np.testing.assert_allclose(out[0, 0], [0.0, 0.2, 1.0])
    with pytest.raises(ValueError, match="channel 0: rgb_to_0_1 needs 8-bit values .* got up to 4095"):
        ChannelNormalized(spec)({"image": torch.tensor([[[0.0, 1000.0, 4095.0]]])})


@pytest.mark.parametrize("arch, planned, expected", [
    ("nnunet_test", [28, 24, 12], [28, 24, 12]),     # plans its own topology for any patch
    ("logvmamba_test", [28, 24, 12], [32, 24, 16]),  # total stride 16 per axis, ceil to multiples of 8
])
def test_the_planned_patch_is_rounded_to_what_the_network_builds_for(arch, planned, expected):
    assert fitting_patch(arch, 3, 2, 2, planned) == expected
    from logvmamba import create_model

    create_model(arch, spatial_dims=3, in_channels=2, out_channels=2, img_size=expected)


@pytest.mark.slow
def test_a_user_dataset_trains_and_scores_through_the_workflow(odd_root, tmp_path):
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config.update(data_root=str(odd_root), synthetic=False, datasets=[NAME], models=["logvmamba", "nnunet"],
                  dataset_training={}, ablations={}, overrides={})
    config["training"].update(epochs=2, iterations=4, val_every=2, val_cases=2)
    config["profile"].update(runtime=False, size={}, runtime_size={})
    config["report"]["bootstrap"] = 200
    cfg = tmp_path / "user.yaml"
    cfg.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "all_tables", "--configfile", str(cfg),
           "--directory", str(run), "--snakefile", str(ROOT / "Snakefile")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    summary = json.loads((run / "results/Dataset777/nnunet/fold0/seed0/summary.json").read_text())
    assert {"Dice_organ", "Dice_lesion", "HD95_mean"} <= set(summary) and summary["main_metric"] == "Dice_mean"
    table = (run / "results/tables/main_3d.md").read_text()
    assert "OddRegions (user dataset) Dice organ" in table and "Dataset777 = Dataset777_OddRegions" in table

    checkpoint = torch.load(run / "results/Dataset777/logvmamba/fold0/seed0/checkpoint_best.pt", weights_only=True)
    assert checkpoint["model_args"]["img_size"] == [32, 24, 16]
    assert checkpoint["data"]["normalization"][0]["scheme"] == "ct"

    # the trained model predicts a NIfTI file outside the dataset with its header kept
    image = odd_root / NAME / "imagesTr" / "odd_000_0000.nii.gz"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for c in (0, 1):
        source = nib.load(str(image).replace("_0000", f"_{c:04d}"))
        nib.save(nib.Nifti1Image(source.get_fdata(dtype=np.float32), source.affine), inputs / f"scan_{c:04d}.nii.gz")
    res = subprocess.run([sys.executable, "-m", "logvmamba.infer", "--checkpoint",
                          str(run / "results/Dataset777/logvmamba/fold0/seed0/checkpoint_best.pt"),
                          "--input", str(inputs), "--out", str(tmp_path / "pred")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    pred = nib.load(tmp_path / "pred" / "scan.nii.gz")
    reference = nib.load(inputs / "scan_0000.nii.gz")
    np.testing.assert_allclose(pred.affine, reference.affine, atol=1e-6)
    assert pred.shape == SHAPE and set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


# ----------------------------------------------------------------------------
# resampling to the planned spacing (config resample: true)
# ----------------------------------------------------------------------------

def test_resampled_size_and_nearest_labels_by_hand():
    from logvmamba.data.loading import resample, resampled_size

    assert resampled_size((10, 8, 5), (2.5, 1.0, 3.0), (1.25, 1.0, 2.0)) == [20, 8, 8]  # round(7.5) = 8
    label = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    up = resample(label, (4, 4), label=True)
    assert torch.equal(up[0], torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]))
    # linear, pixel centres aligned: output pixel i samples input position i / 2 - 1/4 (clamped at the edges)
    ramp = torch.arange(4.0).reshape(1, 1, 4).expand(1, 4, 4).contiguous()
    expected = torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    assert torch.allclose(resample(ramp, (8, 8))[0, 0], expected)


def _mixed_spacing_dataset(root: Path) -> Path:
    """Three cases at 1.25 mm in-plane, two at 2.5 mm (half the voxels): the plan's target is 1.25."""
    folder = root / "Dataset779_MixedSpacing"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    rs = np.random.RandomState(1)
    for i, step in enumerate((1.25, 1.25, 1.25, 2.5, 2.5)):
        shape = (int(40 / step), int(40 / step), 8)
        grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, (step, step, 3.0))], indexing="ij"))
        label = (np.sqrt(((grid - np.array([20.0, 20.0, 12.0])[:, None, None, None]) ** 2).sum(0)) < 9).astype(np.uint8)
        affine = np.diag([step, step, 3.0, 1.0])
        nib.save(nib.Nifti1Image((label * 100 + rs.normal(0, 10, shape)).astype(np.float32), affine),
                 folder / "imagesTr" / f"mix_{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "labelsTr" / f"mix_{i}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "ball": 1}, "numTraining": 5,
        "file_ending": ".nii.gz"}))
    return folder


def test_resample_trains_and_predicts_at_the_planned_spacing(tmp_path):
    from logvmamba.config import resolve_recipe
    from logvmamba.data.loading import make_transforms
    from logvmamba.infer import predict_case

    folder = _mixed_spacing_dataset(tmp_path)
    ds = RawDataset(folder)
    base = load_config(ROOT / "config/config.yaml")
    config = dict(base, data_root=str(tmp_path), synthetic=False, datasets=[folder.name], ablations={},
                  models=["nnunet"], resample=True)
    register_datasets(config)
    recipe = resolve_recipe(config, "nnunet", ds)
    assert recipe["target_spacing"] == pytest.approx([1.25, 1.25, 3.0])
    assert "target_spacing" not in resolve_recipe(dict(config, resample=False), "nnunet", ds)

    coarse = next(f for f in ds.cases() if f.case_id == "mix_3")
    out = make_transforms(ds, train=False, spacing=recipe["target_spacing"])({"files": coarse})
    assert tuple(out["image"].shape) == (1, 32, 32, 8) and tuple(out["label"].shape) == (1, 32, 32, 8)
    assert set(torch.unique(out["label"]).tolist()) == {0, 1}

    class Probe(torch.nn.Module):
        """Logits that record the input grid they saw: class 1 where the z-scored input is above 1."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))
            self.seen = []

        def forward(self, x):
            self.seen.append(tuple(x.shape[2:]))
            return torch.cat([torch.ones_like(x), x * self.weight], dim=1)

    probe = Probe()
    label, case = predict_case(probe, ds, "mix_3", (32, 32, 8), target_spacing=recipe["target_spacing"])
    assert probe.seen == [(32, 32, 8)] and label.shape == (16, 16, 8) == case.image.shape[1:]
    truth = np.asarray(nib.load(folder / "labelsTr" / "mix_3.nii.gz").dataobj)
    assert (label == truth).mean() > 0.95  # back on the case's own grid, where it is scored
