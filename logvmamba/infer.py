"""Whole-image prediction: sliding windows at the training patch, Gaussian weights, flip TTA.

Usage::

    python -m logvmamba.infer --checkpoint CKPT --input DIR --out DIR [--tta]
    python -m logvmamba.infer --checkpoint CKPT --dataset DIR --out DIR [--subset Ts] [--cases ...]

``--input`` is a folder of images named as nnU-Net names them
(``<case>_<CCCC><ending>``, one file per channel; a png holds its RGB channels
in ``_0000``); the checkpoint alone says how to read, normalise and write them,
so no dataset folder is needed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from itertools import combinations, product
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from logvmamba.cli import add_debug_flag, command
from logvmamba.data import DatasetError, RawDataset, load_case, regions_to_label
from logvmamba.data.formats import (
    SUPPORTED_FILE_ENDINGS, case_and_channel, file_ending, read_image_file, save_image_file,
)

__all__ = ["sliding_window", "gaussian_weights", "window_starts", "predict_logits", "logits_to_label", "predict_case",
           "save_prediction", "predict_dataset", "read_image_folder", "predict_folder"]

logger = logging.getLogger(__name__)

def _first(output):
    return output[0] if isinstance(output, (list, tuple)) else output


def gaussian_weights(patch_size: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """A window's blending weights: the product of one Gaussian per axis, sigma ``sigma_scale`` x
    the side, centred on the window, 1 at the centre, floored at ``max(min, 1e-3)`` (MONAI's
    ``compute_importance_map(mode="gaussian")``, which nnU-Net's window blending also is)."""
    weights = None
    for side in patch_size:
        x = torch.arange(-(side - 1) / 2.0, (side - 1) / 2.0 + 1, dtype=torch.float)
        g = torch.exp(x**2 / (-2 * (side * sigma_scale) ** 2))
        weights = g if weights is None else weights.unsqueeze(-1) * g
    return weights.clamp(min=max(weights.min().item(), 1e-3))


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start of each window along one axis: a stride of ``window * (1 - overlap)`` (at least 1),
    the last window moved back to end at the image's edge; one window when it covers the axis."""
    if window >= size:
        return [0]
    step = max(int(window * (1 - overlap)), 1)
    count = next(i for i in range(size) if i * step + window >= size) + 1
    return [min(i * step, size - window) for i in range(count)]


def sliding_window(image: torch.Tensor, patch_size: Sequence[int], predictor, overlap: float = 0.5,
                   sw_batch_size: int = 1) -> torch.Tensor:
    """``predictor`` over windows of ``patch_size`` of ``image`` (1, C, *spatial), blended with
    :func:`gaussian_weights`; an image smaller than the window is zero-padded around its centre.

    The result equals MONAI's ``sliding_window_inference(mode="gaussian", padding_mode="constant")``
    (tested against it); written here so that prediction does not import MONAI.
    """
    patch = tuple(int(p) for p in patch_size)
    spatial = image.shape[2:]
    if len(patch) != len(spatial):
        raise ValueError(f"patch {patch} has {len(patch)} axes, the image {len(spatial)}")
    pad = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for p, s in zip(patch, spatial)]
    if any(a or b for a, b in pad):
        image = F.pad(image, [v for a, b in reversed(pad) for v in (a, b)])
    size = image.shape[2:]
    starts = [window_starts(n, p, overlap) for n, p in zip(size, patch)]
    windows = [tuple(slice(s, s + p) for s, p in zip(corner, patch)) for corner in product(*starts)]
    weights = gaussian_weights(patch).to(image.device, image.dtype)
    total = count = None
    for first in range(0, len(windows), sw_batch_size):
        group = windows[first:first + sw_batch_size]
        out = predictor(torch.cat([image[(slice(None), slice(None), *w)] for w in group]))
        if total is None:
            total = image.new_zeros((1, out.shape[1], *size))
            count = image.new_zeros((1, 1, *size))
            for w in windows:
                count[(slice(None), slice(None), *w)] += weights
        for logits, w in zip(out, group):
            total[(slice(None), slice(None), *w)] += (logits * weights)[None]
    total /= count
    return total[(slice(None), slice(None), *(slice(a, a + n) for (a, _), n in zip(pad, spatial)))]


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
    device = next(model.parameters()).device
    x = image.unsqueeze(0).to(device)

    def run(inp: torch.Tensor) -> torch.Tensor:
        return sliding_window(inp, patch_size, lambda t: _first(model(t)), overlap, sw_batch_size)

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


def logits_to_label(logits: torch.Tensor, regions_class_order: Sequence[int] | None = None) -> np.ndarray:
    """Label map of the dataset's on-disk convention: argmax, or nnU-Net regions painted in order."""
    if regions_class_order:
        return regions_to_label(torch.sigmoid(logits) > 0.5, regions_class_order).numpy().astype(np.uint8)
    return logits.argmax(0).numpy().astype(np.uint8)


def regions_order(ds: RawDataset) -> list[int] | None:
    """The order nnU-Net paints a region dataset's regions into a label map (None for class datasets)."""
    if not ds.has_regions:
        return None
    return ds.json.get("regions_class_order") or list(range(1, len(ds.regions) + 1))


def predict_resampled(model, image: torch.Tensor, spacing, target_spacing, patch_size, overlap=0.5,
                      tta=False, sw_batch_size: int = 1) -> torch.Tensor:
    """Logits on the image's own grid; with ``target_spacing`` the network sees the image resampled
    to it and its logits are resampled back (linear), as nnU-Net predicts."""
    if target_spacing is None or spacing is None:
        return predict_logits(model, image, patch_size, overlap, tta, sw_batch_size)
    from logvmamba.data.cases import resample, resampled_size

    size = resampled_size(image.shape[1:], spacing, target_spacing)
    logits = predict_logits(model, resample(image, size), patch_size, overlap, tta, sw_batch_size)
    return resample(logits, image.shape[1:])


def predict_case(model, ds: RawDataset, case_id: str, patch_size, overlap=0.5, tta=False, subset=None,
                 target_spacing=None, sw_batch_size: int = 1):
    """(label map, loaded case) for one case of ``ds``; ``target_spacing``: the training's resampling."""
    case = load_case(ds, case_id, subset=subset)
    logits = predict_resampled(model, case.image, case.spacing, target_spacing, patch_size, overlap, tta, sw_batch_size)
    return logits_to_label(logits, regions_order(ds)), case


def save_prediction(label: np.ndarray, case_id: str, out_dir: str | os.PathLike, file_ending: str,
                    like=None) -> Path:
    """Write a prediction in the dataset's file format; NIfTI keeps the geometry of ``like`` (the image)."""
    return save_image_file(Path(out_dir) / f"{case_id}{file_ending}", label.astype(np.uint8), like=like)


def predict_dataset(
    model: nn.Module,
    ds: RawDataset,
    case_ids: Sequence[str],
    out_dir: str | os.PathLike,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    tta: bool = False,
    subset: str | None = None,
    target_spacing: Sequence[float] | None = None,
    sw_batch_size: int = 1,
) -> list[Path]:
    """Predict and save every case of a dataset; returns the written files."""
    from tqdm import tqdm

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for case_id in tqdm(case_ids, desc="predict", disable=not sys.stderr.isatty(), leave=False):
        label, case = predict_case(model, ds, case_id, patch_size, overlap, tta, subset, target_spacing, sw_batch_size)
        paths.append(save_prediction(label, case.case_id, out_dir, ds.file_ending, like=case))
    logger.info("%d prediction(s) written to %s", len(paths), out_dir)
    return paths


# ----------------------------------------------------------------------------- a user's own files


def read_image_folder(path: str | os.PathLike, data: Mapping) -> dict[str, list[Path]]:
    """Case id -> channel files of an image file or folder, checked against a checkpoint's ``data``.

    Files named ``<case>_<CCCC><ending>`` (nnU-Net's naming) are one case per
    ``<case>``, one file per channel; any other png, TIFF or NIfTI file is a
    case of its own (a png or TIFF may hold its RGB channels). A file given
    directly takes its ``_CCCC`` siblings along. Any supported ending is
    accepted, not only the training data's.

    Raises:
        DatasetError: nothing to read, or a missing channel file.
    """
    path = Path(path)
    if path.is_file():
        folder, only = path.parent, path
    elif path.is_dir():
        folder, only = path, None
    else:
        raise DatasetError(path, "input file or folder not found")
    endings = SUPPORTED_FILE_ENDINGS
    cases: dict[str, dict[int, Path]] = {}
    for file in sorted(folder.iterdir()):
        ending = file_ending(file)
        if file.name.startswith(".") or ending not in endings or not file.is_file():
            continue
        case_id, channel = case_and_channel(file)
        if only is not None and case_id != case_and_channel(only)[0]:
            continue
        files = cases.setdefault(case_id, {})
        if (channel or 0) in files:
            raise DatasetError(file, f"two input files for case {case_id!r} channel {channel or 0}: "
                                     f"{files[channel or 0].name} and {file.name}")
        files[channel or 0] = file
    if not cases:
        raise DatasetError(path, f"no images ({', '.join(endings)}); the checkpoint was trained on "
                                 f"{data['file_ending']} files with channels {', '.join(data['channel_names'])}")
    out = {}
    for case_id, files in cases.items():
        first = files[min(files)]
        for c in range(max(files) + 1):
            if c not in files:
                raise DatasetError(first.with_name(f"{case_id}_{c:04d}{file_ending(first)}"),
                                   f"channel file missing for case {case_id!r} (the checkpoint expects "
                                   f"{len(data['channel_names'])} channel(s): {', '.join(data['channel_names'])})")
        out[case_id] = [files[c] for c in sorted(files)]
    return out


def _read_image(files: Sequence[Path], data: Mapping, spatial_dims: int) -> tuple[torch.Tensor, dict]:
    """(normalised (C, *spatial) image, meta of the first file), normalised as in training.

    Raises:
        DatasetError: the channel count or the number of spatial axes is not the checkpoint's.
    """
    from logvmamba.data.cases import normalize

    arrays, meta = [], None
    for file in files:
        array, m = read_image_file(file)
        meta = meta or m
        arrays.append(array)
    if arrays[0].ndim - 1 != spatial_dims:
        raise DatasetError(files[0], f"a {arrays[0].ndim - 1}D image of shape {arrays[0].shape[1:]}, the checkpoint "
                                     f"is a {spatial_dims}D model")
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        raise DatasetError(files[0], f"the channel files of this case differ in shape: {sorted(shapes)}")
    image = np.concatenate(arrays, axis=0).astype(np.float32, copy=False)
    expected = data["channel_names"]
    if image.shape[0] != len(expected):
        what = {1: " (a grayscale image)", 3: " (an RGB image)", 4: " (an RGBA image)"}.get(image.shape[0], "")
        raise DatasetError(files[0], f"{image.shape[0]} channel(s){what}, the checkpoint was trained on "
                                     f"{len(expected)} ({', '.join(expected)})")
    return normalize(torch.from_numpy(image), data["normalization"]), meta


def predict_folder(model: nn.Module, checkpoint: Mapping, input_path: str | os.PathLike, out_dir: str | os.PathLike,
                   tta: bool | None = None) -> list[Path]:
    """Predict an image file, or every image of a folder, with a loaded checkpoint.

    Each prediction is ``<out_dir>/<case><ending>`` in the input's own format;
    NIfTI predictions keep the input's header (affine, qform / sform, spacing).
    See :func:`read_image_folder` for what counts as a case.
    """
    from tqdm import tqdm

    data, inference = checkpoint["data"], checkpoint["inference"]
    tta = inference.get("tta", False) if tta is None else tta
    cases = read_image_folder(input_path, data)
    spatial_dims = len(inference["patch_size"])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for case_id, files in tqdm(cases.items(), desc="predict", disable=not sys.stderr.isatty(), leave=False):
        image, meta = _read_image(files, data, spatial_dims)
        trained, target = data.get("spacing"), inference.get("target_spacing")
        if target is None and trained and meta["spacing"] and not np.allclose(meta["spacing"], trained, rtol=0.25):
            logger.warning("%s: spacing %s differs from the training data's median %s (no resampling is done)",
                           files[0], tuple(round(s, 3) for s in meta["spacing"]), tuple(round(s, 3) for s in trained))
        logits = predict_resampled(model, image, meta["spacing"], target, inference["patch_size"],
                                   inference["overlap"], tta)
        label = logits_to_label(logits, data["regions_class_order"])
        paths.append(save_prediction(label, case_id, out_dir, file_ending(files[0]), like=meta))
    logger.info("%d prediction(s) written to %s", len(paths), out_dir)
    return paths


@command
def main(argv=None) -> None:
    from logvmamba.checkpoint import load_trained_model

    parser = argparse.ArgumentParser(prog="python -m logvmamba.infer", description="Predict whole images with a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="an image file or a folder of them: png, TIFF or NIfTI, "
                                        "<case>_<CCCC><ending> for one file per channel (no dataset needed)")
    source.add_argument("--dataset", help="dataset folder (nnU-Net raw); predicts --subset")
    parser.add_argument("--cases", nargs="*", help="case ids of --dataset (default: every case of --subset)")
    parser.add_argument("--subset", default="Tr", choices=["Tr", "Ts"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tta", action="store_true", default=None, help="average over axis flips")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, checkpoint = load_trained_model(args.checkpoint, device=device)
    if args.input:
        predict_folder(model, checkpoint, args.input, args.out, args.tta)
    else:
        ds = RawDataset(args.dataset)
        inference = checkpoint["inference"]
        predict_dataset(model, ds, args.cases or ds.case_ids(args.subset), args.out, inference["patch_size"],
                        inference["overlap"], bool(args.tta), args.subset, inference.get("target_spacing"))


if __name__ == "__main__":
    raise SystemExit(main())
