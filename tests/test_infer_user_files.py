"""Inference on a user's own files: any name and size, png / TIFF / NIfTI, one-line errors."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from logvmamba.checkpoint import load_trained_model
from logvmamba.config import load_config, resolve_recipe
from logvmamba.data import DATASETS, DatasetError, RawDataset
from logvmamba.infer import predict_folder, read_image_folder
from logvmamba.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rgb_checkpoint(synth_root, tmp_path_factory):
    """A tiny LoG-VMamba trained for two steps on the synthetic (RGB png) endoscopy set."""
    ds = RawDataset(synth_root / DATASETS["endoscopy"].synthetic_name)
    recipe = resolve_recipe(load_config(ROOT / "config/config.yaml"), "logvmamba", ds)
    recipe.update(epochs=1, iterations=2, batch_size=1, val_every=1, val_cases=0)
    out = tmp_path_factory.mktemp("run")
    train(recipe, ds.path, out, seed=0, progress=False)
    return out / "checkpoint_best.pt"


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_any_name_size_and_format_is_predicted_in_its_own_format(rgb_checkpoint, tmp_path):
    model, ckpt = load_trained_model(rgb_checkpoint, device="cpu")
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.fromarray(_rgb(70, 93)).save(folder / "photo one.png")  # no _0000, odd size, a space
    tifffile.imwrite(folder / "scan.tif", _rgb(41, 130, seed=1))  # (H, W, 3)
    tifffile.imwrite(folder / "planar.tiff", np.moveaxis(_rgb(50, 60, seed=2), -1, 0),  # (3, H, W)
                     photometric="minisblack")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    written = predict_folder(model, ckpt, folder, out)
    assert sorted(p.name for p in written) == ["photo one.png", "planar.tiff", "scan.tif"]
    classes = set(range(DATASETS["endoscopy"].num_outputs))
    for name, shape in [("photo one.png", (70, 93)), ("scan.tif", (41, 130)), ("planar.tiff", (50, 60))]:
        path = out / name
        label = np.asarray(Image.open(path)) if name.endswith(".png") else tifffile.imread(path)
        assert label.shape == shape and set(np.unique(label)) <= classes, name
    # the same image as png and as TIFF: the same prediction
    tifffile.imwrite(folder / "again.tif", np.asarray(Image.open(folder / "photo one.png")))
    predict_folder(model, ckpt, folder / "again.tif", out)
    np.testing.assert_array_equal(tifffile.imread(out / "again.tif"), np.asarray(Image.open(out / "photo one.png")))


def test_a_single_file_takes_only_its_own_case(rgb_checkpoint, tmp_path):
    _, ckpt = load_trained_model(rgb_checkpoint, device="cpu")
    for name in ("a_0000.png", "b_0000.png", "c.png"):
        Image.fromarray(_rgb(20, 20)).save(tmp_path / name)
    assert list(read_image_folder(tmp_path / "a_0000.png", ckpt["data"])) == ["a"]
    assert list(read_image_folder(tmp_path / "c.png", ckpt["data"])) == ["c"]
    assert sorted(read_image_folder(tmp_path, ckpt["data"])) == ["a", "b", "c"]
    Image.fromarray(_rgb(20, 20)).save(tmp_path / "a_0002.png")
    with pytest.raises(DatasetError, match=r"a_0001.png: channel file missing for case 'a'"):
        read_image_folder(tmp_path, ckpt["data"])


def _infer(checkpoint, path, out):
    return subprocess.run([sys.executable, "-m", "logvmamba.infer", "--checkpoint", str(checkpoint),
                           "--input", str(path), "--out", str(out)], capture_output=True, text=True, timeout=300)


def test_wrong_inputs_are_one_line_errors_naming_the_file(rgb_checkpoint, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    Image.fromarray(_rgb(32, 32)[..., 0]).save(cases / "gray.png")
    (cases / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    volume = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    nib.save(volume, cases / "volume.nii.gz")
    expected = {
        "gray.png": "gray.png: 1 channel(s) (a grayscale image), the checkpoint was trained on 3",
        "broken.png": "broken.png: cannot read image",
        "volume.nii.gz": "volume.nii.gz: a 3D image of shape (8, 8, 8), the checkpoint is a 2D model",
    }
    for name, message in expected.items():
        res = _infer(rgb_checkpoint, cases / name, tmp_path / "out")
        assert res.returncode != 0, name
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in res.stderr, res.stderr
        assert not (tmp_path / "out" / name).exists()
    res = _infer(rgb_checkpoint, tmp_path / "nowhere", tmp_path / "out")
    assert res.returncode != 0 and "nowhere: input file or folder not found" in res.stderr
