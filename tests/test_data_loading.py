"""Training loaders and inference-side case loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logvmamba.data import DATASETS, RawDataset, get_info, load_case, make_loader, regions_to_label
from logvmamba.data.loading import make_transforms
from logvmamba.data.splits import get_splits



def _folder(root, key):
    return root / get_info(key).synthetic_name


@pytest.mark.parametrize("key", list(DATASETS))
def test_training_batch(synth_root, key):
    info = get_info(key)
    loader = make_loader(_folder(synth_root, key), "train", fold=0, batch_size=2, seed=0)
    batch = next(iter(loader))
    patch = info.synthetic_patch_size
    assert batch["image"].shape == (2, info.in_channels, *patch)
    assert batch["image"].dtype == torch.float32 and torch.isfinite(batch["image"]).all()
    assert type(batch["image"]) is torch.Tensor  # plain tensors, no MetaTensor
    train_ids = get_splits(_folder(synth_root, key))[0]["train"]
    assert set(batch["case_id"]) <= set(train_ids)
    if info.output_kind == "sigmoid":
        assert batch["label"].shape == (2, info.num_outputs, *patch)
        assert batch["label"].dtype == torch.float32
        assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0}
        # nested regions: enhancing within core within whole tumour
        wt, tc, et = batch["label"][:, 0], batch["label"][:, 1], batch["label"][:, 2]
        assert (tc <= wt).all() and (et <= tc).all()
    else:
        assert batch["label"].shape == (2, 1, *patch) and batch["label"].dtype == torch.long
        assert set(torch.unique(batch["label"]).tolist()) <= set(range(info.num_outputs))
    assert len(loader) == -(-len(train_ids) // 2)


@pytest.mark.parametrize("key", ["endoscopy", "brats"])
def test_loader_is_deterministic(synth_root, key):
    def first_batches(seed, **kw):
        loader = make_loader(_folder(synth_root, key), "train", fold=1, batch_size=2, seed=seed, **kw)
        it = iter(loader)
        return [next(it) for _ in range(2)]

    a, b, c = first_batches(5), first_batches(5), first_batches(6)
    for x, y in zip(a, b):
        assert x["case_id"] == y["case_id"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    assert any(not torch.equal(x["image"], z["image"]) for x, z in zip(a, c))


@pytest.mark.slow
def test_loader_is_deterministic_with_workers(synth_root):
    def batches():
        loader = make_loader(_folder(synth_root, "cell"), "train", batch_size=2, seed=9, num_workers=2)
        return [b["image"] for b in loader]

    assert all(torch.equal(x, y) for x, y in zip(batches(), batches()))


def test_cached_loader_gives_the_same_batches(synth_root):
    plain = make_loader(_folder(synth_root, "acdc"), "train", fold=0, batch_size=2, seed=4)
    cached = make_loader(_folder(synth_root, "acdc"), "train", fold=0, batch_size=2, seed=4, cache=True)
    for x, y in zip(plain, cached):
        assert x["case_id"] == y["case_id"] and torch.equal(x["image"], y["image"])


def test_foreground_sampling_sees_foreground(synth_root):
    loader = make_loader(_folder(synth_root, "acdc"), "train", fold=0, batch_size=4, seed=0,
                         samples_per_epoch=12)
    fg = [float((b["label"] > 0).float().mean()) for b in loader]
    assert len(fg) == 3 and np.mean(fg) > 0.02


def test_samples_per_epoch_and_fold_all(synth_root):
    loader = make_loader(_folder(synth_root, "cell"), "train", fold="all", batch_size=3, seed=0,
                         samples_per_epoch=7)
    sizes = [len(b["case_id"]) for b in loader]
    assert sizes == [3, 3, 1]


def test_validation_loader_gives_whole_normalised_images(synth_root):
    folder = _folder(synth_root, "brats")
    loader = make_loader(folder, "val", fold=0)
    val_ids = get_splits(folder)[0]["val"]
    batches = list(loader)
    assert [b["case_id"][0] for b in batches] == val_ids
    image = batches[0]["image"][0]
    assert image.shape == (4, 48, 48, 48)
    brain = image[0] != 0
    for c in range(4):  # z-score over the non-zero voxels, background left at 0
        assert float(image[c][brain].mean()) == pytest.approx(0.0, abs=1e-3)
        assert float(image[c][brain].std()) == pytest.approx(1.0, abs=1e-2)
    test = list(make_loader(folder, "test", fold=0))
    assert [b["case_id"][0] for b in test] == get_splits(folder)[0]["test"]


def test_validation_patches_when_asked(synth_root):
    loader = make_loader(_folder(synth_root, "endoscopy"), "val", fold=0, patch_size=(32, 32), batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 32, 32)


def test_load_case_matches_training_normalisation(synth_root):
    folder = _folder(synth_root, "endoscopy")
    case_id = get_splits(folder)[0]["val"][0]
    case = load_case(folder, case_id)
    assert case.image.shape == (3, 96, 128) and case.label.shape == (96, 128)
    assert case.label.dtype == torch.long and case.regions is None and case.affine is None
    for c in range(3):
        assert float(case.image[c].mean()) == pytest.approx(0.0, abs=1e-3)
    val = next(iter(make_loader(folder, "val", fold=0)))
    assert torch.allclose(val["image"][0], case.image) and torch.equal(val["label"][0, 0], case.label)


@pytest.mark.parametrize("key", list(DATASETS))
def test_load_case_is_the_validation_transform(synth_root, key):
    ds = RawDataset(_folder(synth_root, key))
    case_id = ds.case_ids()[1]
    expected = make_transforms(ds, train=False)({"files": ds.get(case_id)})
    case = load_case(ds, case_id)
    assert type(case.image) is torch.Tensor and torch.equal(case.image, expected["image"])
    if ds.has_regions:
        assert torch.equal(case.regions, expected["label"].bool())
    else:
        assert torch.equal(case.label, expected["label"][0])


def test_load_case_regions_and_instances(synth_root):
    brats = load_case(_folder(synth_root, "brats"), "BraTS_00001")
    assert brats.regions.shape == (3, 48, 48, 48) and brats.regions.dtype == torch.bool
    assert np.allclose(brats.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    back = regions_to_label(brats.regions, [1, 2, 3])
    assert torch.equal(back, brats.label)
    assert np.array_equal(regions_to_label(brats.regions.numpy(), [1, 2, 3]), brats.label.numpy())
    cell = RawDataset(_folder(synth_root, "cell"))
    test_case = load_case(cell, cell.case_ids("Ts")[0], subset="Ts")
    assert test_case.instances is not None and test_case.instances.shape == (96, 96)
    acdc = load_case(_folder(synth_root, "acdc"), "patient001_frame01")
    assert acdc.spacing[2] >= 5.0


def test_transforms_validate_arguments(synth_root):
    ds = RawDataset(_folder(synth_root, "cell"))
    with pytest.raises(ValueError, match="patch_size is required"):
        make_transforms(ds, train=True)
    with pytest.raises(ValueError, match="has 3 dims"):
        make_transforms(ds, train=True, patch_size=(8, 8, 8))
    with pytest.raises(ValueError, match="sampling must be"):
        make_transforms(ds, train=True, patch_size=(8, 8), sampling="centre")
    with pytest.raises(ValueError, match="normalization must be"):
        make_transforms(ds, train=False, normalization="minmax")


@pytest.mark.parametrize("key", ["endoscopy", "brats"])
def test_cache_reads_each_case_once_and_changes_no_batch(synth_root, key, monkeypatch):
    from logvmamba.train import TrainLoader

    ds = RawDataset(_folder(synth_root, key))
    reads = []
    original = RawDataset.read_case
    monkeypatch.setattr(RawDataset, "read_case", lambda self, files: reads.append(files) or original(self, files))
    recipe = dict(patch_size=ds.info.synthetic_patch_size, batch_size=2, iterations=6, num_workers=0)
    batches = {}
    for cache in (True, False):
        reads.clear()
        loader = TrainLoader(ds, dict(recipe, cache=cache), fold=0)
        batches[cache] = [b for seed in (3, 4) for b in loader.epoch(seed)]
        draws = 2 * 6 * 2
        assert len(reads) == (len(loader.data) if cache else draws)
    for x, y in zip(batches[True], batches[False], strict=True):
        assert x["case_id"] == y["case_id"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])


def test_png_reader_equals_monai_pil_reader(synth_root):
    from monai.data import PILReader

    from logvmamba.data.formats import read_image_file

    ds = RawDataset(_folder(synth_root, "endoscopy"))
    files = ds.get(ds.case_ids()[0])
    for path, kind in ((files.images[0], "image"), (files.label, "label")):
        reader = PILReader(reverse_indexing=False)
        expected = np.asarray(reader.get_data(reader.read(str(path)))[0])
        expected = expected[None] if expected.ndim == 2 else np.moveaxis(expected, -1, 0)
        array, meta = read_image_file(path, kind)
        assert array.dtype == expected.dtype and np.array_equal(array, expected) and meta["spacing"] == (1.0, 1.0)


@pytest.mark.parametrize("key", ["endoscopy", "acdc"])
def test_a_draw_does_not_depend_on_the_draws_before_it(synth_root, key):
    from logvmamba.data.loading import SeededDraws, make_dataset

    def dataset():
        return SeededDraws(make_dataset(_folder(synth_root, key), "train", fold=0), seed=11)

    alone = dataset()[(5, 1)]
    after = dataset()
    for position in range(5):
        after[(position, position % 3)]
    again = after[(5, 1)]
    alone, again = (x[0] if isinstance(x, list) else x for x in (alone, again))  # crops give a list of one
    assert torch.equal(alone["image"], again["image"]) and torch.equal(alone["label"], again["label"])
