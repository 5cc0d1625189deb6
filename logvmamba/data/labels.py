"""Label conversions: instances to interior / boundary, label maps to region masks and back.

One rule each, shared by the converters, the synthetic generators, the
loaders, inference and scoring. The region functions take numpy arrays or
torch tensors and return the same kind.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

__all__ = ["instance_to_semantic", "label_to_regions", "regions_to_label"]


def _is_tensor(x) -> bool:
    # a tensor exists only once torch is imported; this keeps the module free of a torch import
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def instance_to_semantic(instances: np.ndarray) -> np.ndarray:
    """Instance mask -> uint8 0 background, 1 interior, 2 boundary.

    A cell pixel is boundary when one of its 4 neighbours belongs to another
    instance or to the background (pixels beyond the image edge do not count).
    """
    inst = np.asarray(instances)
    padded = np.pad(inst, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = np.zeros(inst.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy:dy + inst.shape[0], dx:dx + inst.shape[1]] != centre
    out = (inst > 0).astype(np.uint8)
    out[(inst > 0) & differs] = 2
    return out


def label_to_regions(label, regions: Sequence[Sequence[int]]):
    """Label map ``spatial`` -> bool region masks ``(R, *spatial)``; region ``i`` = the labels ``regions[i]``.

    E.g. BraTS ``[(1, 2, 3), (2, 3), (3,)]`` gives whole tumour, core, enhancing.
    """
    regions = [tuple(int(v) for v in r) for r in regions]
    if _is_tensor(label):
        import torch

        return torch.stack([torch.isin(label, torch.tensor(r, device=label.device)) for r in regions])
    label = np.asarray(label)
    return np.stack([np.isin(label, r) for r in regions])


def regions_to_label(masks, regions_class_order: Sequence[int]):
    """Binary region masks ``(R, *spatial)`` -> int64 label map, nnU-Net style.

    Label ``regions_class_order[i]`` is painted where region ``i`` is on, in
    order, so nested regions (BraTS: whole tumour, core, enhancing) give the
    innermost label.
    """
    if len(masks) != len(regions_class_order):
        raise ValueError(f"{len(masks)} region masks but {len(regions_class_order)} entries in regions_class_order")
    if _is_tensor(masks):
        import torch

        out = torch.zeros(masks.shape[1:], dtype=torch.long, device=masks.device)
        for mask, value in zip(masks, regions_class_order):
            out[mask.bool()] = int(value)
        return out
    out = np.zeros(np.shape(masks)[1:], dtype=np.int64)
    for mask, value in zip(masks, regions_class_order):
        out[np.asarray(mask, bool)] = int(value)
    return out
