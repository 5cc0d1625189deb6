"""The training transforms of logvmamba.data.augment against MONAI's, which stays installed as the reference.

Each transform, given the parameters MONAI's random transform would draw (crop start or
centre, angle, zoom factor, flip, scale, shift), must give what MONAI's deterministic
counterpart gives; the draws must follow MONAI's distributions (probability gates, uniform
ranges, the foreground / background ratio of the centred crops), and, taken from the same
generator, be MONAI's: the training chain seeded alike gives MONAI's chain's patches.
"""

from __future__ import annotations

import math

import monai.transforms as mt
import numpy as np
import pytest
import torch
from scipy import stats

from logvmamba.data import augment
from logvmamba.data.augment import (
    CropForegroundd, EnsureTyped, RandCropByPosNegLabeld, RandFlipd, RandRotated, RandScaleIntensityd,
    RandShiftIntensityd, RandSpatialCropd, RandZoomd, SpatialPadd, crop, crop_around, rotate, zoom,
)

BOTH = ["image", "label"]
EPS32 = float(np.finfo(np.float32).eps)


def _case(shape, channels=2, seed=0, classes=4):
    """A float image (C, *shape) and a float label map (1, *shape) with values 0..classes-1."""
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.normal(size=(channels, *shape)).astype(np.float32))
    label = torch.from_numpy(rng.integers(0, classes, (1, *shape)).astype(np.float32))
    return image, label


def _equal(ours, theirs, atol=0.0):
    theirs = torch.as_tensor(theirs).as_subclass(torch.Tensor)  # MONAI's MetaTensor
    assert type(ours) is torch.Tensor and ours.shape == theirs.shape, (tuple(ours.shape), tuple(theirs.shape))
    if atol:
        torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=0, atol=atol)
    else:
        assert torch.equal(ours, theirs.to(ours.dtype))


# ----------------------------------------------------------------------------- cropping and padding


@pytest.mark.parametrize("shape, box", [((20, 17), ((3, 12), (5, 6))), ((20, 17), ((0, 20), (0, 17))),
                                        ((9, 11, 8), ((2, 7), (1, 11), (4, 5))),
                                        ((9, 11, 8), ((8, 9), (0, 1), (7, 8)))])
def test_crop_foreground_equals_monai(shape, box):
    image, label = _case(shape, channels=3)
    inside = tuple(slice(a, b) for a, b in box)
    fg = torch.zeros_like(image)    # the foreground lies in one channel only,
    fg[2] = -image[2].abs()         # negative voxels are background (MONAI: > 0)
    fg[2][inside] = image[2][inside].abs()
    data = {"image": fg, "label": label, "case_id": "x"}
    ours = CropForegroundd(BOTH, source_key="image")(data)
    theirs = mt.CropForegroundd(keys=BOTH, source_key="image", allow_smaller=True)(dict(data))
    for key in BOTH:
        _equal(ours[key], theirs[key])
    assert ours["case_id"] == "x" and ours["image"].shape[1:] == tuple(b - a for a, b in box)


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 6)])
def test_crop_foreground_of_an_empty_image_is_empty_as_monai(shape):
    image, label = _case(shape)
    data = {"image": -image.abs(), "label": label}
    ours = CropForegroundd(BOTH)(data)
    theirs = mt.CropForegroundd(keys=BOTH, source_key="image", allow_smaller=True)(dict(data))
    for key in BOTH:
        _equal(ours[key], theirs[key])
        assert ours[key].numel() == 0


@pytest.mark.parametrize("shape, size", [((10, 13), (16, 16)), ((10, 13), (11, 14)), ((10, 13), (5, 20)),
                                         ((10, 13), (10, 13)), ((0, 0), (4, 5)), ((7, 8, 9), (8, 11, 9)),
                                         ((7, 8, 9), (16, 16, 16)), ((5, 6, 7), (2, 2, 2))])
def test_spatial_pad_equals_monai(shape, size):
    image, label = _case(shape)
    data = {"image": image, "label": label.long()}
    ours = SpatialPadd(BOTH, size)(data)
    theirs = mt.SpatialPadd(keys=BOTH, spatial_size=size, mode="constant")(dict(data))
    for key in BOTH:
        _equal(ours[key], theirs[key])
    assert ours["label"].dtype == torch.long


@pytest.mark.parametrize("shape, size", [((12, 15), (5, 8)), ((12, 15), (12, 4)), ((7, 9, 8), (3, 4, 8)),
                                         ((7, 9, 8), (7, 2, 5))])
def test_a_crop_at_a_given_start_equals_monai_spatial_crop(shape, size):
    image, _ = _case(shape)
    for start in np.ndindex(*(n - s + 1 for n, s in zip(shape, size))):
        end = [a + s for a, s in zip(start, size)]
        _equal(crop(image, start, end), mt.SpatialCrop(roi_start=start, roi_end=end)(image))


def test_random_crops_start_anywhere_the_patch_fits():
    image, label = _case((9, 12))
    transform = RandSpatialCropd(BOTH, (4, 12)).set_random_state(seed=0)
    starts = set()
    for _ in range(300):
        out = transform({"image": image, "label": label})
        assert out["image"].shape == (2, 4, 12) and out["label"].shape == (1, 4, 12)
        matches = [r for r in range(6) if torch.equal(out["image"], image[:, r:r + 4])]
        assert len(matches) == 1 and torch.equal(out["label"], label[:, matches[0]:matches[0] + 4])
        starts.add(matches[0])
    assert starts == set(range(6))


@pytest.mark.parametrize("shape, size", [((12, 15), (5, 8)), ((12, 15), (12, 15)), ((11, 10), (4, 7)),
                                         ((7, 9, 8), (3, 4, 8)), ((6, 7, 5), (5, 2, 3))])
def test_the_crop_around_a_centre_equals_monai_for_every_centre(shape, size):
    image, label = _case(shape)
    label = (label > 2).float()
    for centre in np.ndindex(*shape):
        index = np.ravel_multi_index(centre, shape)
        data = {"image": image, "label": label, "fg": np.array([index]), "bg": np.array([index])}
        # MONAI's only foreground and background voxel is `centre`: its draw is forced
        theirs = mt.RandCropByPosNegLabeld(keys=BOTH, label_key="label", spatial_size=size, pos=1.0, neg=2.0,
                                           num_samples=1, fg_indices_key="fg", bg_indices_key="bg")(data)[0]
        for key, value in (("image", image), ("label", label)):
            _equal(crop_around(value, centre, size), theirs[key])


def test_the_crop_around_a_centre_needs_the_image_to_hold_the_patch():
    image, _ = _case((6, 9))
    with pytest.raises(ValueError, match=r"crop of \(8, 8\) from an image of \(6, 9\): pad it first"):
        crop_around(image, (3, 3), (8, 8))


def _drawn_centres(label, draws, seed=0):
    transform = RandCropByPosNegLabeld(BOTH, "label", (3, 3), pos=1.0, neg=2.0).set_random_state(seed=seed)
    return [transform.centre(label) for _ in range(draws)]


def test_one_centre_in_three_is_foreground():
    label = torch.zeros(1, 20, 30)
    label[0, 2:6, 10:13] = 1.0   # 12 of 600 voxels
    label[0, 15, 25] = 2.0
    centres = _drawn_centres(label, 3000)
    positive = np.mean([float(label[0][c]) > 0 for c in centres])
    # 1/3 by pos=1, neg=2; the standard deviation of the mean of 3000 draws is 0.0086
    assert abs(positive - 1 / 3) < 0.04
    drawn = {c for c in centres if label[0][c] > 0}
    assert drawn == {tuple(int(i) for i in v) for v in torch.nonzero(label[0])}  # every foreground voxel


@pytest.mark.parametrize("fill, foreground", [(0.0, False), (3.0, True)])
def test_centres_come_from_the_side_that_has_voxels(fill, foreground):
    label = torch.full((1, 5, 4), fill)
    centres = _drawn_centres(label, 200)
    assert all((float(label[0][c]) > 0) == foreground for c in centres)
    assert len(set(centres)) == 20


def test_the_centred_crop_moves_every_key_alike():
    image, label = _case((10, 14))
    out = RandCropByPosNegLabeld(BOTH, "label", (4, 6), pos=1.0, neg=2.0).set_random_state(seed=2)(
        {"image": image, "label": label, "case_id": "c"})
    assert out["case_id"] == "c" and out["image"].shape == (2, 4, 6) and out["label"].shape == (1, 4, 6)
    where = [(r, c) for r in range(7) for c in range(9) if torch.equal(out["image"], image[:, r:r + 4, c:c + 6])]
    assert len(where) == 1
    r, c = where[0]
    assert torch.equal(out["label"], label[:, r:r + 4, c:c + 6])


# ----------------------------------------------------------------------------- rotation and zoom


def _sample_positions(shape, angle):
    """The exact (float64) input position each output pixel of a rotation samples: c + R (q - c)."""
    h, w = shape
    cos, sin = math.cos(angle), math.sin(angle)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return cy + cos * (r - cy) - sin * (c - cx), cx + sin * (r - cy) + cos * (c - cx)


def _bilinear_rotation(x, angle):
    """An independent float64 rotation: bilinear weights of the four pixels around each position, zeros outside."""
    channels, h, w = x.shape
    pr, pc = _sample_positions((h, w), angle)
    r0, c0 = np.floor(pr).astype(int), np.floor(pc).astype(int)
    out = np.zeros((channels, h, w))
    for dr, wr in ((0, 1 - (pr - r0)), (1, pr - r0)):
        for dc, wc in ((0, 1 - (pc - c0)), (1, pc - c0)):
            rr, cc = r0 + dr, c0 + dc
            inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            out += np.where(inside, x[:, rr.clip(0, h - 1), cc.clip(0, w - 1)], 0.0) * wr * wc
    return out


ANGLES = [0.0, 0.3, -1.2, math.pi / 4, math.pi / 2, -math.pi / 2, 2.9, math.pi, -math.pi, -3.05]
SHAPES = [(9, 12), (10, 10), (11, 11), (16, 21), (7, 8)]


@pytest.mark.parametrize("shape", SHAPES + [(64, 96)])
@pytest.mark.parametrize("angle", ANGLES)
def test_rotation_of_an_image_equals_monai(shape, angle):
    image, _ = _case(shape, channels=3)
    ours = rotate(image, angle, "bilinear")
    theirs = mt.Rotate(angle, keep_size=True, mode="bilinear", padding_mode="zeros", align_corners=False)(image)
    # grid_sample takes float32 coordinates scaled to [-1, 1], so a sampling position is off by
    # up to about size x 2^-23 pixels, in MONAI's grid and in ours, differently, and a value by
    # that much times the largest step between neighbours (about 7 here): 2e-6 to 8e-5 over
    # these images. Measured over them and more angles and seeds: ours is within 1.4 such
    # units of MONAI's and 0.7 of the exact (float64) rotation, MONAI within 1.2 of it.
    step = max(float(image.diff(dim=d).abs().max()) for d in (1, 2))
    tolerance = 3 * max(shape) * EPS32 * step
    _equal(ours, theirs, atol=tolerance)
    exact = torch.from_numpy(_bilinear_rotation(image.double().numpy(), angle)).float()
    _equal(ours, exact, atol=tolerance)


@pytest.mark.parametrize("shape", SHAPES + [(64, 96)])
@pytest.mark.parametrize("angle", ANGLES)
def test_rotation_of_a_label_equals_monai_but_at_rounding_ties(shape, angle):
    _, label = _case(shape)
    ours = rotate(label, angle, "nearest")
    theirs = torch.as_tensor(mt.Rotate(angle, keep_size=True, mode="nearest", padding_mode="zeros",
                                       align_corners=False)(label))
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    # Nearest rounds each position to a pixel; where the exact position lies half-way between
    # two (a quarter or half turn of an image whose sides differ by an odd length, a pixel
    # on the diagonal of an even square at 45 degrees), the float32 error of either grid picks
    # the side. Everywhere else the labels are the same.
    tie = np.zeros(shape, bool)
    for position in _sample_positions(shape, angle):
        tie |= np.abs(position - np.floor(position) - 0.5) < 1e-4
    differ = (ours != theirs).any(0).numpy()
    assert not (differ & ~tie).any()
    if angle in (0.3, -1.2, 2.9, -3.05):  # ties only by chance: labels equal but at a handful of pixels
        assert tie.mean() < 0.01


def test_rotation_is_2d_only():
    image, _ = _case((4, 5, 6))
    with pytest.raises(ValueError, match=r"rotate takes a 2D \(C, H, W\) tensor, got shape \(2, 4, 5, 6\)"):
        rotate(image, 0.5)


@pytest.mark.parametrize("shape", [(9, 12), (10, 10), (11, 13), (64, 96), (6, 7, 9)])
@pytest.mark.parametrize("factor", [0.7, 0.85, 0.9999, 1.0, 1.07, 1.13, 1.4])
def test_zoom_equals_monai(shape, factor):
    image, label = _case(shape)
    ours = zoom(image, factor, "bilinear")
    theirs = mt.Zoom(factor, mode="bilinear", padding_mode="constant", keep_size=True)(image)
    _equal(ours, theirs, atol=1e-5)
    _equal(zoom(label, factor, "nearest"),
           mt.Zoom(factor, mode="nearest", padding_mode="constant", keep_size=True)(label))


# ----------------------------------------------------------------------------- the random transforms


def _data(shape=(6, 7)):
    image, label = _case(shape, seed=4)
    return {"image": image, "label": label, "case_id": "c"}


def _applied(transform, draws, keys=BOTH):
    """The share of ``draws`` calls that changed the data."""
    data = _data()
    changed = [not all(torch.equal(out[k], data[k]) for k in keys)
               for out in (transform(data) for _ in range(draws))]
    return float(np.mean(changed))


DRAWS = 4000  # the standard deviation of a rate's estimate is at most 0.0079


@pytest.mark.parametrize("make, prob, keys", [
    (lambda: RandFlipd(BOTH, prob=0.5, spatial_axis=0), 0.5, BOTH),
    (lambda: RandFlipd(BOTH, prob=0.5, spatial_axis=1), 0.5, BOTH),
    (lambda: RandScaleIntensityd("image", factors=0.1, prob=0.5), 0.5, ["image"]),
    (lambda: RandShiftIntensityd("image", offsets=0.1, prob=0.5), 0.5, ["image"]),
])
def test_each_random_transform_applies_at_its_rate(make, prob, keys):
    assert abs(_applied(make().set_random_state(seed=1), DRAWS, keys) - prob) < 0.03


def _rotations_and_zooms(monkeypatch, seeds, draws):
    """The angles and zoom factors (one entry per key) of ``draws`` draws of the recipe's 2D
    rotation and zoom, seeded with ``seeds``."""
    angles, factors = _recorded(monkeypatch, "rotate"), _recorded(monkeypatch, "zoom")
    data = _data()
    rotation = RandRotated(BOTH, range_x=math.pi, prob=0.2, mode=("bilinear", "nearest")).set_random_state(seed=seeds[0])
    scaling = RandZoomd(BOTH, prob=0.2, min_zoom=0.7, max_zoom=1.4, mode=("bilinear", "nearest"))
    scaling.set_random_state(seed=seeds[1])
    for _ in range(draws):
        rotation(data), scaling(data)
    return angles, factors


def test_rotation_and_zoom_apply_at_their_rate(monkeypatch):
    # counted by the calls (a zoom by 1 to 1 + 1/size leaves the image as it was)
    angles, factors = _rotations_and_zooms(monkeypatch, (1, 1), DRAWS)
    assert abs(len(angles) / 2 / DRAWS - 0.2) < 0.03 and abs(len(factors) / 2 / DRAWS - 0.2) < 0.03


def _recorded(monkeypatch, name):
    """Call ``augment.<name>`` as before and record the parameter it is given."""
    seen, original = [], getattr(augment, name)

    def spy(x, parameter, mode="bilinear"):
        seen.append(parameter)
        return original(x, parameter, mode)

    monkeypatch.setattr(augment, name, spy)
    return seen


def _uniform(values, low, high):
    values = np.asarray(values)
    assert low <= values.min() and values.max() < high
    assert stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue > 1e-3


def test_angles_and_zoom_factors_are_uniform_over_their_range(monkeypatch):
    angles, factors = _rotations_and_zooms(monkeypatch, (2, 3), 5000)
    # one draw per call, used for both keys
    assert angles[::2] == angles[1::2] and factors[::2] == factors[1::2]
    _uniform(angles[::2], -math.pi, math.pi)
    _uniform(factors[::2], 0.7, 1.4)


def test_intensity_factors_and_offsets_are_uniform_over_their_range():
    data = _data()
    scale = RandScaleIntensityd("image", factors=0.1, prob=0.5).set_random_state(seed=4)
    shift = RandShiftIntensityd("image", offsets=0.1, prob=0.5).set_random_state(seed=5)
    image = data["image"]
    factors, offsets = [], []
    for _ in range(2000):
        scaled, shifted = scale(data)["image"], shift(data)["image"]
        if not torch.equal(scaled, image):
            f = float((scaled / image).mean()) - 1
            _equal(scaled, mt.ScaleIntensity(minv=None, maxv=None, factor=f)(image), atol=1e-5)
            factors.append(f)
        if not torch.equal(shifted, image):
            o = float((shifted - image).mean())
            _equal(shifted, mt.ShiftIntensity(o)(image), atol=1e-5)
            offsets.append(o)
    _uniform(factors, -0.1, 0.1)
    _uniform(offsets, -0.1, 0.1)


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 3)])
def test_flips_equal_monai(shape):
    image, label = _case(shape)
    for axis in range(len(shape)):
        transform = RandFlipd(BOTH, prob=1.0, spatial_axis=axis)
        out = transform({"image": image, "label": label})
        for key, value in (("image", image), ("label", label)):
            _equal(out[key], mt.Flip(spatial_axis=axis)(value))


def test_one_draw_rotates_image_and_label_alike():
    image, label = _case((12, 12))
    out = RandRotated(BOTH, range_x=math.pi, prob=1.0, mode=("bilinear", "bilinear")).set_random_state(seed=6)(
        {"image": label.expand(2, -1, -1), "label": label})
    assert torch.equal(out["image"][0], out["label"][0]) and not torch.equal(out["label"], label)


def test_ensure_typed_equals_monai():
    image, label = _case((5, 6))
    data = {"image": image.double(), "label": label}
    for keys, dtype in (("image", torch.float32), ("label", torch.long), (BOTH, torch.float32)):
        ours = EnsureTyped(keys, dtype)(data)
        theirs = mt.EnsureTyped(keys=keys, dtype=dtype, track_meta=False)(dict(data))
        for key in ([keys] if isinstance(keys, str) else keys):
            assert ours[key].dtype == dtype
            _equal(ours[key], theirs[key])
    assert EnsureTyped("label", torch.long, allow_missing_keys=True)({"image": image}).keys() == {"image"}
    with pytest.raises(KeyError):
        EnsureTyped("label", torch.long)({"image": image})


def test_a_chain_seeded_alike_draws_alike_and_leaves_its_input_alone():
    image, label = _case((20, 24))
    chain = augment.Compose([
        SpatialPadd(BOTH, (24, 24)),
        RandCropByPosNegLabeld(BOTH, "label", (16, 16), pos=1.0, neg=2.0),
        RandRotated(BOTH, range_x=math.pi, prob=0.5, mode=("bilinear", "nearest")),
        RandZoomd(BOTH, prob=0.5, min_zoom=0.7, max_zoom=1.4, mode=("bilinear", "nearest")),
        RandFlipd(BOTH, prob=0.5, spatial_axis=0),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
    ])
    assert chain.first_random == 1
    data = {"image": image, "label": label}
    before = {k: v.clone() for k, v in data.items()}
    first = [chain.set_random_state(seed=s)(data) for s in range(8)]
    again = [chain.set_random_state(seed=s)(data) for s in range(8)]
    for a, b in zip(first, again):
        assert all(torch.equal(a[k], b[k]) for k in BOTH)
    assert len({tuple(a["image"].flatten()[:5].tolist()) for a in first}) == 8
    assert all(torch.equal(data[k], before[k]) for k in BOTH)
    with pytest.raises(TypeError, match="numpy.random.RandomState"):
        chain.set_random_state(state=np.random.default_rng(0))


# ----------------------------------------------------------------------------- the training chain


def _monai_chain(ds, patch):
    """The chain make_transforms built from MONAI's transforms before logvmamba.data.augment (5699d2d)."""
    from logvmamba.data.loading import LabelToRegionsd, LoadCased, normalizer, resolved_normalization

    normalization = resolved_normalization(ds)
    steps = [LoadCased(ds)]
    if normalization == "zscore_nonzero":
        steps.append(mt.CropForegroundd(keys=BOTH, source_key="image", allow_smaller=True))
    steps.append(normalizer(normalization))
    steps.append(mt.SpatialPadd(keys=BOTH, spatial_size=patch, mode="constant"))
    if ds.info.sampling == "random":
        steps.append(mt.RandSpatialCropd(keys=BOTH, roi_size=patch, random_size=False))
    else:
        steps.append(mt.RandCropByPosNegLabeld(keys=BOTH, label_key="label", spatial_size=patch,
                                               pos=1.0, neg=2.0, num_samples=1))
    if ds.spatial_dims == 2:
        steps.append(mt.RandRotated(keys=BOTH, range_x=np.pi, prob=0.2, keep_size=True,
                                    mode=("bilinear", "nearest"), padding_mode="zeros"))
        steps.append(mt.RandZoomd(keys=BOTH, prob=0.2, min_zoom=0.7, max_zoom=1.4, keep_size=True,
                                  mode=("bilinear", "nearest"), padding_mode="constant"))
    for axis in range(ds.spatial_dims):
        steps.append(mt.RandFlipd(keys=BOTH, prob=0.5, spatial_axis=axis))
    steps.append(mt.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5))
    steps.append(mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5))
    if ds.has_regions:
        steps.append(LabelToRegionsd("label", [r for _, r in ds.regions]))
        steps.append(mt.EnsureTyped(keys=BOTH, dtype=torch.float32, track_meta=False))
    else:
        steps.append(mt.EnsureTyped(keys="image", dtype=torch.float32, track_meta=False))
        steps.append(mt.EnsureTyped(keys="label", dtype=torch.long, track_meta=False))
    return mt.Compose(steps)


@pytest.mark.parametrize("key, draws", [("endoscopy", 60), ("cell", 60), ("acdc", 12), ("brats", 12)])
def test_a_seed_gives_the_draw_monai_gives(synth_root, key, draws):
    # Draw for draw, the parameters MONAI's chain takes from a generator are ours, so its
    # patches and augmentations are ours too: the same in 3D; in 2D the rotated images to
    # float32 grid precision (6.7e-5 measured) and the labels but where a rotated pixel falls
    # within that precision of a half-way tie (none measured; a handful allowed).
    from logvmamba.data import DATASETS, RawDataset
    from logvmamba.data.loading import make_transforms

    ds = RawDataset(synth_root / DATASETS[key].synthetic_name)
    patch = ds.info.synthetic_patch_size
    ours, theirs = make_transforms(ds, train=True, patch_size=patch), _monai_chain(ds, patch)
    cases = [{"case": ds.read_case(ds.get(c))} for c in ds.case_ids()]
    differ = total = 0
    for seed in range(draws):
        ours.set_random_state(seed=seed)
        state = np.random.RandomState(seed)
        for transform in theirs.transforms:
            if isinstance(transform, mt.Randomizable):
                transform.set_random_state(state=state)
        case = cases[seed % len(cases)]
        a, b = ours(dict(case)), theirs(dict(case))
        b = b[0] if isinstance(b, list) else b  # MONAI's centred crop gives a list of one
        # MONAI's CropForegroundd also records the box (foreground_start_coord, _end_coord), which nothing reads
        assert a.keys() == b.keys() - {"foreground_start_coord", "foreground_end_coord"}
        assert a["case_id"] == b["case_id"] and torch.equal(a["spacing"], torch.as_tensor(b["spacing"]))
        _equal(a["image"], b["image"], atol=1e-4 if ds.spatial_dims == 2 else 0.0)
        label = torch.as_tensor(b["label"]).as_subclass(torch.Tensor)
        assert a["label"].dtype == label.dtype and a["label"].shape == label.shape
        differ += int((a["label"] != label).sum())
        total += label.numel()
    assert differ <= (1e-4 * total if ds.spatial_dims == 2 else 0)
