"""Label conversions: regions to and from label maps, in numpy and torch (instances: test_data_synthetic.py)."""

from __future__ import annotations

import numpy as np
import torch

from logvmamba.data.labels import label_to_regions, regions_to_label
from logvmamba.data.loading import LabelToRegionsd

BRATS_REGIONS = [(1, 2, 3), (2, 3), (3,)]


def _label():
    label = np.zeros((5, 6), np.int64)
    label[1:4, 1:5] = 1
    label[2, 2:4] = 2
    label[2, 3] = 3
    return label


def test_label_to_regions_by_hand():
    masks = label_to_regions(_label(), BRATS_REGIONS)
    assert masks.dtype == bool and masks.shape == (3, 5, 6)
    assert masks[0].sum() == 12 and masks[1].sum() == 2 and masks[2].sum() == 1
    assert masks[2, 2, 3] and not masks[2, 2, 2]


def test_regions_round_trip_in_numpy_and_torch():
    label = _label()
    masks = label_to_regions(label, BRATS_REGIONS)
    assert np.array_equal(regions_to_label(masks, [1, 2, 3]), label)
    tensor_masks = label_to_regions(torch.from_numpy(label), BRATS_REGIONS)
    assert isinstance(tensor_masks, torch.Tensor) and tensor_masks.dtype == torch.bool
    assert torch.equal(tensor_masks, torch.from_numpy(masks))
    back = regions_to_label(tensor_masks, [1, 2, 3])
    assert isinstance(back, torch.Tensor) and torch.equal(back, torch.from_numpy(label))


def test_the_loader_transform_uses_the_same_rule():
    label = torch.from_numpy(_label())[None].float()
    out = LabelToRegionsd("label", BRATS_REGIONS)({"label": label})["label"]
    assert out.dtype == torch.float32
    assert torch.equal(out.bool(), torch.from_numpy(label_to_regions(_label(), BRATS_REGIONS)))

