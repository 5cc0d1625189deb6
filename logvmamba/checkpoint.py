"""Checkpoints that carry everything inference needs, loaded without running pickled code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (so
``torch.load(..., weights_only=True)`` reads it) with, beside the weights:

- ``model_args``: the registered architecture and every constructor argument
  (spatial dims, channels, outputs, patch, keywords), as nanoGPT keeps its
  ``model_args``, so :func:`build_model` rebuilds the network from the file alone;
- ``data``: what reading and writing a case needs (channel names, file ending,
  normalisation, labels or regions with ``regions_class_order``, label names,
  the training cases' median spacing);
- ``inference``: the sliding-window patch and overlap;
- ``recipe``, ``seed``, ``epoch``, ``best``, ``log`` (and optimizer state in
  ``checkpoint_last.pt``) for resuming.

Moving ``results/`` or deleting the dataset does not break prediction.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from logvmamba.io import atomic_write

__all__ = ["FORMAT", "CheckpointError", "data_spec", "model_args", "save_checkpoint", "load_checkpoint",
           "build_model", "load_trained_model", "median_spacing"]

FORMAT = "logvmamba-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, corrupt, unsafe or of another format."""


def model_args(recipe: Mapping, data: Mapping) -> dict:
    """Constructor arguments of the recipe's network for a dataset described by ``data``."""
    return {
        "arch": recipe["arch"],
        "spatial_dims": int(data["spatial_dims"]),
        "in_channels": len(data["channel_names"]),
        "out_channels": len(data["regions"]) if data["regions"] else len(data["class_values"]),
        "img_size": [int(p) for p in recipe["patch_size"]],
        "kwargs": dict(recipe["model_kwargs"]),
    }


def data_spec(ds, normalization: str | list, spacing: Sequence[float] | None) -> dict:
    """The dataset facts that reading an image and writing its prediction need (``ds``: a RawDataset)."""
    regions = [[name, list(values)] for name, values in ds.regions] if ds.has_regions else []
    order = ds.json.get("regions_class_order") or list(range(1, len(regions) + 1))
    return {
        "dataset": ds.key or ds.name,
        "dataset_name": ds.name,
        "spatial_dims": ds.spatial_dims,
        "channel_names": list(ds.channel_names),
        "file_ending": ds.file_ending,
        "normalization": normalization,
        "labels": {k: (list(v) if isinstance(v, (list, tuple)) else int(v)) for k, v in ds.labels.items()},
        "class_values": [] if regions else list(ds.label_values),
        "regions": regions,
        "regions_class_order": [int(v) for v in order] if regions else None,
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "synthetic": bool(ds.is_synthetic),
    }


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` atomically (a reader never sees half a checkpoint)."""
    buffer = io.BytesIO()
    torch.save(dict(state, format=FORMAT), buffer)
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``: a file that needs arbitrary unpickling is refused.

    Raises:
        CheckpointError: missing, unreadable, unsafe, or not a checkpoint of this suite.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: refused, the file holds objects other than tensors, numbers, strings, "
                              f"lists and dicts ({first}); only load checkpoints you trust") from None
    except Exception as err:  # truncated or not a torch file at all
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format {found!r}); retrain with this version")
    return state


def build_model(args: Mapping) -> nn.Module:
    """The network of ``model_args`` (untrained)."""
    from logvmamba import create_model

    return create_model(args["arch"], spatial_dims=args["spatial_dims"], in_channels=args["in_channels"],
                        out_channels=args["out_channels"], img_size=args["img_size"], **args["kwargs"])


def load_trained_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode on ``device``, the checkpoint without its weights)."""
    state = load_checkpoint(path, map_location="cpu")
    model = build_model(state["model_args"])
    try:
        model.load_state_dict(state.pop("model"))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {state['model_args']['arch']} ({first})") from None
    for key in ("optimizer", "scaler"):
        state.pop(key, None)
    return model.to(device).eval(), state


def median_spacing(spacings: Sequence[Sequence[float]]) -> list[float] | None:
    """Per-axis median of case spacings (None for no cases)."""
    if not len(spacings):
        return None
    return [float(s) for s in np.median(np.asarray(spacings, dtype=np.float64), axis=0)]
