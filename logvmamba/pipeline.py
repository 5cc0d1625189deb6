"""The workflow's steps as functions: each Snakemake script calls one of these.

prepare -> split -> train -> predict -> evaluate; every output is written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping

from logvmamba.data import DATASETS, DatasetError, RawDataset, get_splits, resolve_dataset_dir
from logvmamba.data.splits import evaluation_cases
from logvmamba.io import atomic_write_text

__all__ = ["prepare_dataset", "dataset_from_marker", "write_splits", "evaluation_cases", "train_run", "predict_run", "evaluate_run"]


def prepare_dataset(key: str, data_root: str | os.PathLike, synthetic: bool, marker: str | os.PathLike,
                    cases: int | None = None, seed: int = 0, folder: str | os.PathLike | None = None) -> Path:
    """Generate the synthetic stand-in (or find and validate the real dataset); write ``marker``.

    ``folder``: a user dataset's folder (it is read as it is, whatever ``synthetic`` says).
    The marker (JSON) names the dataset folder the later steps read.
    """
    user = folder is not None
    if user:
        folder = Path(folder)
    elif synthetic:
        from logvmamba.data.synthetic import generate

        folder = Path(data_root) / DATASETS[key].synthetic_name
        if not (folder / "dataset.json").is_file():
            folder = generate(key, data_root, seed=seed, num_cases=cases)
    else:
        folder = resolve_dataset_dir(key, data_root or None)
    ds = RawDataset(folder)
    ds.validate()
    if not user and ds.is_synthetic != synthetic:
        kind = "synthetic" if ds.is_synthetic else "real"
        raise DatasetError(folder / "dataset.json", f"is {kind} data but the config says synthetic: {synthetic}")
    content = dict(dataset=key, folder=str(Path(folder).resolve()), synthetic=ds.is_synthetic, cases=len(ds.case_ids()),
                   user=user)
    atomic_write_text(marker, json.dumps(content, indent=2) + "\n")
    return Path(folder)


def dataset_from_marker(marker: str | os.PathLike) -> RawDataset:
    return RawDataset(json.loads(Path(marker).read_text())["folder"])


def write_splits(marker: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Make (or read) ``splits_final.json`` of the dataset and copy it to ``out``."""
    ds = dataset_from_marker(marker)
    splits = get_splits(ds)
    return atomic_write_text(out, json.dumps(splits, indent=4) + "\n")


def train_run(config: Mapping, model: str, marker, out_dir, seed: int, fold: int) -> dict:
    from logvmamba.config import resolve_recipe
    from logvmamba.train import train

    ds = dataset_from_marker(marker)
    # Snakemake reruns a run whose config changed: its old checkpoint is stale, not a resume point.
    return train(resolve_recipe(config, model, ds), ds.path, out_dir, seed=seed, fold=fold, restart_stale=True)


def predict_run(marker, checkpoint, out_dir, fold: int, tta: bool | None = None, overlap: float | None = None,
                evaluate_on: str = "protocol") -> list[Path]:
    """Predict the scored cases (:func:`evaluation_cases`) into ``out_dir``; ``tta`` / ``overlap``
    default to the checkpoint's."""
    from logvmamba.checkpoint import load_trained_model
    from logvmamba.infer import predict_dataset

    ds = dataset_from_marker(marker)
    model, state = load_trained_model(checkpoint, device="cuda" if _cuda() else "cpu")
    inference = state["inference"]
    tta = inference["tta"] if tta is None else tta
    overlap = inference["overlap"] if overlap is None else overlap
    tmp = Path(str(out_dir) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    paths = predict_dataset(model, ds, evaluation_cases(ds, fold, evaluate_on), tmp, inference["patch_size"], overlap, tta,
                            target_spacing=inference.get("target_spacing"), sw_batch_size=inference.get("sw_batch_size", 1))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return [Path(out_dir) / p.name for p in paths]


def evaluate_run(marker, predictions, out_dir, fold: int, evaluate_on: str = "protocol") -> dict:
    """Write ``summary.json`` and ``per_case.csv`` of the scored cases into ``out_dir``."""
    from logvmamba.evaluation import evaluate_folder

    ds = dataset_from_marker(marker)
    return evaluate_folder(predictions, ds, out_dir, case_ids=evaluation_cases(ds, fold, evaluate_on))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
