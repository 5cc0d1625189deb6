"""Prediction and profiling jobs import neither MONAI nor timm, and compute what MONAI and timm do.

MONAI's package import loads every submodule (seconds in each of the workflow's predict and
profile jobs); timm's brings torchvision. The pieces written instead are compared here with
the libraries themselves, which stay installed as the reference.
"""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from logvmamba.data.cases import load_case, zscore
from logvmamba.data.formats import read_image_file
from logvmamba.infer import sliding_window
from logvmamba.models.layers import DropPath

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    """Top-level modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return {name.split(".")[0] for name in json.loads(out.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("model, dims, size", [("logvmamba_test", 2, "(64, 96)"), ("nnunet_test", 2, "(64, 96)"),
                                               ("logvmamba_test", 3, "(32, 32, 32)"), ("nnunet_test", 3, "(32, 32, 32)")])
def test_building_a_model_imports_neither_monai_nor_timm(model, dims, size):
    loaded = _modules_after(f"from logvmamba import create_model\n"
                            f"create_model({model!r}, spatial_dims={dims}, in_channels=2, out_channels=3, img_size={size})")
    assert "monai" not in loaded and "timm" not in loaded and "torchvision" not in loaded


def test_the_predict_and_profile_modules_import_no_monai():
    loaded = _modules_after("import logvmamba.pipeline, logvmamba.infer, logvmamba.train, logvmamba.checkpoint\n"
                            "import logvmamba.profiling.report, logvmamba.profiling.runtime, logvmamba.evaluation\n"
                            "from logvmamba.data import load_case")
    assert "monai" not in loaded and "timm" not in loaded


def test_training_imports_neither_monai_nor_torchvision_nor_timm(synth_root, tmp_path):
    # a training job: the trainer on the 2D stand-in (rotation, zoom, flips, intensity; a
    # validation pass), a 3D region dataset's loader (foreground box, padding, crops), the
    # cached loader of the random-crop path, and a validation loader
    endoscopy = synth_root / "Dataset904_SynthEndoscopy"
    loaded = _modules_after(
        "from pathlib import Path\n"
        "from logvmamba.config import load_config, resolve_recipe\n"
        "from logvmamba.data import RawDataset, make_loader\n"
        "from logvmamba.train import TrainLoader, train\n"
        f"ds = RawDataset({str(endoscopy)!r})\n"
        f"recipe = resolve_recipe(load_config({str(ROOT / 'config/config.yaml')!r}), 'logvmamba', ds)\n"
        "recipe.update(epochs=1, iterations=2, batch_size=2, val_every=1, val_cases=1)\n"
        f"train(recipe, ds.path, Path({str(tmp_path / 'run')!r}), seed=0, progress=False)\n"
        f"brats = RawDataset({str(synth_root / 'Dataset982_SynthBraTS')!r})\n"
        "batch = next(iter(make_loader(brats, 'train', batch_size=2, seed=1)))\n"
        "assert batch['label'].shape[1] == 3\n"
        "cached = TrainLoader(brats, dict(recipe, patch_size=brats.info.synthetic_patch_size, cache=True))\n"
        "assert len(list(cached.epoch(seed=2, samples=2))) == 1\n"
        "assert next(iter(make_loader(ds, 'val')))['image'].shape[0] == 1")
    assert (tmp_path / "run/checkpoint_last.pt").exists()
    assert not {"monai", "torchvision", "timm"} & loaded, sorted({"monai", "torchvision", "timm"} & loaded)


def test_a_model_of_another_module_is_still_found():
    # models whose module uses MONAI's networks build as before, importing it on demand
    loaded = _modules_after("from logvmamba import create_model\n"
                            "create_model('swin_unetr_test', spatial_dims=3, in_channels=1, out_channels=2, "
                            "img_size=(64, 64, 64))")
    assert "monai" in loaded


@pytest.mark.parametrize("shape, patch", [((96, 128), (64, 96)), ((50, 70), (64, 64)), ((33, 200), (32, 32)),
                                          ((17, 9), (64, 96)), ((40, 48, 30), (32, 32, 32)), ((33, 17, 50), (16, 24, 8))])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.7])
@pytest.mark.parametrize("batch", [1, 3])
def test_sliding_window_equals_monai(shape, patch, overlap, batch):
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if len(shape) == 2 else torch.nn.Conv3d)(3, 4, 3, padding=1)
    x = torch.randn(1, 3, *shape)
    with torch.no_grad():
        expected = sliding_window_inference(x, patch, batch, conv, overlap=overlap, mode="gaussian",
                                            padding_mode="constant")
        ours = sliding_window(x, patch, conv, overlap, batch)
    assert ours.shape == expected.shape and torch.equal(ours, torch.as_tensor(expected))


@pytest.mark.parametrize("nonzero", [False, True])
def test_zscore_equals_monai_normalize_intensity(nonzero):
    from monai.transforms import NormalizeIntensity

    rng = np.random.default_rng(0)
    image = rng.normal(300, 40, (3, 9, 11, 5)).astype(np.int16)
    image[:, :2] = 0           # a background
    image[1] = 17              # a constant channel: std 0
    image[2] = 0               # an empty channel
    expected = NormalizeIntensity(nonzero=nonzero, channel_wise=True)(torch.from_numpy(image))
    assert torch.equal(zscore(torch.from_numpy(image), nonzero), torch.as_tensor(expected, dtype=torch.float32))


def test_load_case_equals_the_validation_transforms(synth_root):
    from logvmamba.data import RawDataset
    from logvmamba.data.loading import make_transforms

    for folder in ("Dataset982_SynthBraTS", "Dataset904_SynthEndoscopy", "Dataset927_SynthACDC"):
        ds = RawDataset(synth_root / folder)
        case_id = ds.case_ids()[0]
        case = load_case(ds, case_id)
        expected = make_transforms(ds, train=False)({"case": ds.read_case(ds.get(case_id))})
        assert torch.equal(case.image, expected["image"])
        if ds.has_regions:
            assert torch.equal(case.regions, expected["label"].bool())


def test_nifti_reads_as_monai_reads_it(tmp_path):
    from monai.data import NibabelReader

    rng = np.random.default_rng(1)
    affine = np.diag([-1.2, 0.9, 3.0, 1.0])
    affine[:3, 3] = (10.0, -4.0, 2.5)
    files = []
    for dtype in (np.int16, np.uint8, np.float32):
        path = tmp_path / f"img_{np.dtype(dtype).name}.nii.gz"
        nib.save(nib.Nifti1Image(rng.integers(0, 100, (7, 6, 5)).astype(dtype), affine), path)
        files.append(path)
    scaled = nib.Nifti1Image(rng.integers(0, 100, (4, 5, 6)).astype(np.int16), affine)
    scaled.header.set_slope_inter(0.5, 3.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    files.append(tmp_path / "scaled.nii.gz")
    for path in files:
        array, meta = read_image_file(path)
        reader = NibabelReader()
        expected, header = reader.get_data(reader.read(str(path)))
        assert array[0].dtype == np.asarray(expected).dtype and np.array_equal(array[0], expected)
        assert np.array_equal(meta["affine"], np.asarray(header["affine"], dtype=np.float64))


@pytest.mark.parametrize("p", [0.0, 0.2, 0.6])
def test_drop_path_equals_timm(p):
    from timm.layers import DropPath as TimmDropPath

    x = torch.randn(8, 5, 6)
    ours, theirs = DropPath(p), TimmDropPath(p)
    torch.manual_seed(4)
    a = ours(x)
    torch.manual_seed(4)
    assert torch.equal(a, theirs(x))
    ours.eval()
    assert torch.equal(ours(x), x)
