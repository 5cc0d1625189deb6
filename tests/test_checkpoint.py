"""Checkpoints: safe loading, self-contained inference, encoder freezing, reruns of finished runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from logvmamba.checkpoint import CheckpointError, load_checkpoint, load_trained_model
from logvmamba.config import load_config, resolve_recipe
from logvmamba.data import DATASETS, RawDataset
from logvmamba.train import train

ROOT = Path(__file__).resolve().parents[1]


def _recipe(ds, model="logvmamba", **changes):
    recipe = resolve_recipe(load_config(ROOT / "config/config.yaml"), model, ds)
    recipe.update(epochs=1, iterations=2, batch_size=1, val_every=1, val_cases=1)
    recipe.update(changes)
    return recipe


@pytest.fixture()
def private_copy(synth_root, tmp_path):
    """A copy of one synthetic dataset that a test may delete."""

    def copy(key):
        name = DATASETS[key].synthetic_name
        return RawDataset(shutil.copytree(synth_root / name, tmp_path / "data" / name))

    return copy


class Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint can do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_payload_is_refused_before_it_runs(tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"model": {}, "payload": Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"evil.pt: refused"):
        load_checkpoint(evil)
    assert not marker.exists()
    # the command line too: one line naming the file, non-zero exit, nothing run
    (tmp_path / "in").mkdir()
    res = subprocess.run([sys.executable, "-m", "logvmamba.infer", "--checkpoint", str(evil), "--input",
                          str(tmp_path / "in"), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0 and not marker.exists()
    assert res.stderr.strip().count("\n") == 0 and "evil.pt: refused" in res.stderr


def test_a_foreign_or_truncated_file_is_a_one_line_error(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a logvmamba-checkpoint-1 checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("key", ["endoscopy", "brats"])
def test_a_moved_checkpoint_predicts_a_new_folder_with_its_dataset_deleted(key, private_copy, tmp_path):
    ds = private_copy(key)
    train(_recipe(ds), ds.path, tmp_path / "run", seed=0, progress=False)
    moved = tmp_path / "elsewhere" / "model.pt"
    moved.parent.mkdir()
    shutil.copy(tmp_path / "run" / "checkpoint_best.pt", moved)
    shutil.rmtree(tmp_path / "run")
    images = shutil.copytree(ds.path / "imagesTs", tmp_path / "new_images")
    cases = ds.case_ids("Ts")
    reference = {c: nib.load(str(ds.get(c, "Ts").images[0])) for c in cases} if key == "brats" else {}
    shapes = {c: ds.read_case(c, "Ts", with_label=False).spatial_shape for c in cases}
    shutil.rmtree(ds.path)

    res = subprocess.run([sys.executable, "-m", "logvmamba.infer", "--checkpoint", str(moved), "--input",
                          str(images), "--out", str(tmp_path / "pred")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    ending = DATASETS[key].file_ending
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == sorted(f"{c}{ending}" for c in cases)
    for case_id in cases:
        path = tmp_path / "pred" / f"{case_id}{ending}"
        if ending == ".png":
            from PIL import Image

            label = np.asarray(Image.open(path))
            allowed = set(range(DATASETS[key].num_outputs))
        else:
            image = nib.load(str(path))
            label = np.asarray(image.dataobj)
            np.testing.assert_allclose(image.affine, reference[case_id].affine, atol=1e-5)
            allowed = {0, 1, 2, 3}  # BraTS regions painted back as labels 1..3 (regions_class_order)
        assert label.shape == shapes[case_id] and set(np.unique(label)) <= allowed


def test_a_model_without_an_encoder_cannot_be_frozen(private_copy, tmp_path):
    ds = private_copy("endoscopy")
    with pytest.raises(ValueError, match="freezes the encoder.*names no encoder"):
        train(_recipe(ds, "nnunet", freeze_encoder_epochs=1), ds.path, tmp_path, seed=0, progress=False)


def test_frozen_encoder_epochs_keep_the_encoder_and_train_the_rest(private_copy, tmp_path):
    from logvmamba.checkpoint import build_model, data_spec, model_args
    from logvmamba.train import seed_everything

    ds = private_copy("endoscopy")
    recipe = _recipe(ds, "swin_umamba_d", freeze_encoder_epochs=1, lr=1e-2)
    train(recipe, ds.path, tmp_path, seed=0, progress=False)
    trained, _ = load_trained_model(tmp_path / "checkpoint_last.pt")
    seed_everything(0)  # training builds the network right after seeding with the run's seed
    initial = dict(build_model(model_args(recipe, data_spec(ds, "zscore", None))).named_parameters())
    encoder = {id(p) for p in trained.encoder_parameters()}
    moved = {name: not torch.equal(p, initial[name]) for name, p in trained.named_parameters()}
    in_encoder = [name for name, p in trained.named_parameters() if id(p) in encoder]
    assert in_encoder and not any(moved[name] for name in in_encoder)
    assert any(moved[name] for name in moved if name not in in_encoder)


def test_a_finished_run_rerun_after_its_outputs_were_deleted_writes_them_again(private_copy, tmp_path):
    ds = private_copy("endoscopy")
    recipe = _recipe(ds, epochs=2)
    train(recipe, ds.path, tmp_path, seed=0, progress=False)
    before = load_checkpoint(tmp_path / "checkpoint_best.pt")
    log_before = (tmp_path / "log.csv").read_text()
    for name in ("checkpoint_best.pt", "log.csv", "train_done.json"):  # what Snakemake deletes before a rerun
        (tmp_path / name).unlink()
    train(recipe, ds.path, tmp_path, seed=0, progress=False, restart_stale=True)
    assert (tmp_path / "log.csv").read_text() == log_before and len(pd.read_csv(tmp_path / "log.csv")) == 2
    assert (tmp_path / "train_done.json").is_file()
    after = load_checkpoint(tmp_path / "checkpoint_best.pt")
    assert after["epoch"] == before["epoch"] and all(torch.equal(after["model"][k], v) for k, v in before["model"].items())


def test_inference_settings_do_not_make_a_checkpoint_stale(private_copy, tmp_path):
    ds = private_copy("endoscopy")
    recipe = _recipe(ds)
    train(recipe, ds.path, tmp_path, seed=0, progress=False)
    weights = load_checkpoint(tmp_path / "checkpoint_last.pt")["model"]
    changed = dict(recipe, tta=not recipe["tta"], overlap=0.25, num_workers=1, val_every=7, val_cases=3)
    train(changed, ds.path, tmp_path, seed=0, progress=False)  # no restart_stale: a stale one would raise
    again = load_checkpoint(tmp_path / "checkpoint_last.pt")["model"]
    assert all(torch.equal(again[k], v) for k, v in weights.items())
    with pytest.raises(ValueError, match="checkpoint of another recipe"):
        train(dict(recipe, lr=0.5), ds.path, tmp_path, seed=0, progress=False)
