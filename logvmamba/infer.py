"""Whole-image prediction: sliding windows at the training patch, Gaussian weights, flip TTA.

Usage: ``python -m logvmamba.infer --checkpoint CKPT --dataset DIR --out DIR [--subset Ts]``
"""

from __future__ import annotations

import argparse
import os
from itertools import combinations
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from logvmamba.data import RawDataset, load_case, regions_to_label
from logvmamba.io import atomic_write

__all__ = ["predict_logits", "logits_to_label", "predict_case", "save_prediction", "predict_dataset"]


def _first(output):
    return output[0] if isinstance(output, (list, tuple)) else output


def predict_logits(
    model: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    tta: bool = False,
    sw_batch_size: int = 1,
) -> torch.Tensor:
    """Logits (K, *spatial) of one (C, *spatial) image, sliding windows of ``patch_size``.

    With ``tta`` the logits are averaged over every combination of axis flips.
    """
    from monai.inferers import sliding_window_inference

    device = next(model.parameters()).device
    x = image.unsqueeze(0).to(device)

    def run(inp: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(
            inp, roi_size=tuple(patch_size), sw_batch_size=sw_batch_size, predictor=lambda t: _first(model(t)),
            overlap=overlap, mode="gaussian", padding_mode="constant",
        )

    model.eval()
    with torch.inference_mode():
        logits = run(x)
        if tta:
            axes = range(2, x.ndim)
            flips = [c for r in range(1, len(axes) + 1) for c in combinations(axes, r)]
            for dims in flips:
                logits += run(x.flip(dims)).flip(dims)
            logits /= len(flips) + 1
    return logits[0].float().cpu()


def logits_to_label(logits: torch.Tensor, ds: RawDataset) -> np.ndarray:
    """Label map of the dataset's on-disk convention (argmax, or nnU-Net regions)."""
    if ds.has_regions:
        order = ds.json.get("regions_class_order") or list(range(1, len(ds.regions) + 1))
        return regions_to_label(torch.sigmoid(logits) > 0.5, order).numpy().astype(np.uint8)
    return logits.argmax(0).numpy().astype(np.uint8)


def predict_case(model, ds: RawDataset, case_id: str, patch_size, overlap=0.5, tta=False, subset=None):
    """(label map, loaded case) for one case of ``ds``."""
    case = load_case(ds, case_id, subset=subset)
    return logits_to_label(predict_logits(model, case.image, patch_size, overlap, tta), ds), case


def save_prediction(label: np.ndarray, case, ds: RawDataset, out_dir: str | os.PathLike) -> Path:
    """Write a prediction in the dataset's file format (png or NIfTI with the case's affine)."""
    ending = ds.file_ending
    path = Path(out_dir) / f"{case.case_id}{ending}"
    with atomic_write(path) as tmp:
        if ending == ".png":
            from PIL import Image

            Image.fromarray(label.astype(np.uint8)).save(tmp, format="PNG")
        else:
            import nibabel as nib

            affine = case.affine if case.affine is not None else np.diag(list(case.spacing) + [1.0])
            nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(tmp) + ending)
            os.replace(str(tmp) + ending, tmp)
    return path


def predict_dataset(
    model: nn.Module,
    ds: RawDataset,
    case_ids: Sequence[str],
    out_dir: str | os.PathLike,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    tta: bool = False,
    subset: str | None = None,
    progress: Callable | None = None,
) -> list[Path]:
    """Predict and save every case; returns the written files."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for case_id in progress(case_ids) if progress else case_ids:
        label, case = predict_case(model, ds, case_id, patch_size, overlap, tta, subset)
        paths.append(save_prediction(label, case, ds, out_dir))
    return paths


def main(argv=None) -> None:
    from logvmamba.train import load_trained_model

    parser = argparse.ArgumentParser(description="Predict whole images with a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True, help="dataset folder")
    parser.add_argument("--cases", nargs="*", help="case ids (default: every case of --subset)")
    parser.add_argument("--subset", default="Tr", choices=["Tr", "Ts"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tta", action="store_true")
    args = parser.parse_args(argv)
    model, recipe = load_trained_model(args.checkpoint)
    ds = RawDataset(args.dataset)
    cases = args.cases or ds.case_ids(args.subset)
    predict_dataset(model, ds, cases, args.out, recipe["patch_size"], recipe["overlap"], args.tta, args.subset)


if __name__ == "__main__":
    main()
