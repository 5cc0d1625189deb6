"""Train any registered model on any dataset with a recipe from the config.

One function, :func:`train`; every hyperparameter comes from the recipe (see
:func:`logvmamba.config.resolve_recipe`). A run writes into ``out_dir``:
``checkpoint_last.pt`` (every epoch), ``checkpoint_best.pt`` (best validation
score), ``log.csv`` (one row per epoch) and ``train_done.json``. Rerunning a
killed run resumes from ``checkpoint_last.pt`` and ends with the same weights as
an unbroken run: every epoch reseeds all random streams from (seed, epoch).

Usage: ``python -m logvmamba.train --model NAME --dataset DIR --out DIR [--config FILE] [--seed N]``
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from logvmamba.checkpoint import (
    build_model, data_spec, load_checkpoint, median_spacing, model_args, save_checkpoint,
)
from logvmamba.config import weight_recipe
from logvmamba.data import RawDataset, split_case_ids
from logvmamba.infer import predict_case
from logvmamba.io import atomic_write_text

__all__ = ["train", "TrainingDiverged", "lr_at", "SegmentationLoss"]

logger = logging.getLogger(__name__)

LOG_FIELDS = ("epoch", "train_loss", "val_score", "lr", "seconds")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------- pieces


def build_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    name, lr, wd = recipe["optimizer"], recipe["lr"], recipe["weight_decay"]
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe["momentum"], nesterov=recipe["nesterov"], weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, eps=recipe["eps"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, eps=recipe["eps"])
    raise ValueError(f"unknown optimizer {name!r}; use sgd, adam or adamw")


def lr_at(epoch: int, recipe: dict) -> float:
    """Learning rate of an epoch (schedules step per epoch, as nnU-Net's poly does)."""
    lr, epochs, kind = recipe["lr"], recipe["epochs"], recipe["schedule"]
    if kind == "constant":
        return lr
    if kind == "poly":
        return lr * (1 - epoch / epochs) ** recipe["poly_power"]
    if kind == "cosine":
        low = recipe["min_lr"]
        return low + 0.5 * (lr - low) * (1 + math.cos(math.pi * epoch / epochs))
    if kind == "step":
        milestones = [round(f * epochs) for f in recipe["step_at"]]
        return lr * recipe["step_gamma"] ** sum(epoch >= m for m in milestones)
    raise ValueError(f"unknown schedule {kind!r}; use constant, poly, cosine or step")


class SegmentationLoss(nn.Module):
    """Dice + CE over classes, or Dice + BCE over sigmoid regions; deep supervision weights.

    Deep-supervision weights follow nnU-Net: 1/2^i per scale, the lowest scale off,
    normalised to sum 1; targets are resized with nearest neighbours.
    """

    def __init__(self, regions: bool, dice_weight: float = 1.0, ce_weight: float = 1.0):
        super().__init__()
        from monai.losses import DiceCELoss

        self.regions = regions
        self.loss = DiceCELoss(
            to_onehot_y=not regions, softmax=not regions, sigmoid=regions, batch=True,
            lambda_dice=dice_weight, lambda_ce=ce_weight, smooth_nr=1e-5, smooth_dr=1e-5,
        )

    def forward(self, output, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, (list, tuple)):
            return self.loss(output.float(), target)
        weights = [0.5**i for i in range(len(output))]
        if len(output) > 1:
            weights[-1] = 0.0
        total = sum(weights)
        loss = 0.0
        for w, out in zip(weights, output):
            if w == 0:
                continue
            t = target if out.shape[2:] == target.shape[2:] else F.interpolate(target.float(), size=out.shape[2:], mode="nearest")
            loss = loss + (w / total) * self.loss(out.float(), t if self.regions else t.long())
        return loss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**31


def _set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    for p in model.encoder_parameters():
        p.requires_grad_(not frozen)


def _check_freezable(model: nn.Module, recipe: dict) -> None:
    if recipe["freeze_encoder_epochs"] and not callable(getattr(model, "encoder_parameters", None)):
        raise ValueError(f"{recipe.get('model', recipe['arch'])}: the recipe freezes the encoder for "
                         f"{recipe['freeze_encoder_epochs']} epochs, but {recipe['arch']} names no encoder "
                         f"(no encoder_parameters() method); set freeze_encoder_epochs: 0")


# ----------------------------------------------------------------------------- checkpoints


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # file systems without hard links
        shutil.copyfile(src, dst)


def _case_spacing(ds: RawDataset, case_id: str) -> list[float]:
    """Voxel size of a case from its first image's header (png: 1 per axis)."""
    path = ds.get(case_id).images[0]
    if ds.file_ending != ".nii.gz" and ds.file_ending != ".nii":
        return [1.0] * ds.spatial_dims
    import nibabel as nib

    from logvmamba.data.formats import affine_spacing

    return list(affine_spacing(nib.load(str(path)).affine))  # header only: the voxels are not read


# ----------------------------------------------------------------------------- validation


def validate(model: nn.Module, ds: RawDataset, case_ids, recipe: dict) -> float:
    """The dataset's main score on whole validation images."""
    import pandas as pd

    from logvmamba.evaluation import aggregate, score_case

    rows = []
    for case_id in case_ids:
        pred, case = predict_case(model, ds, case_id, recipe["patch_size"], recipe["overlap"])
        rows.append(score_case(ds.info, pred, case))
    model.train()
    return float(aggregate(pd.DataFrame(rows), ds.info)["main"])


# ----------------------------------------------------------------------------- training


def _distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def train(
    recipe: dict,
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    fold: int = 0,
    device: str | None = None,
    progress: bool = True,
    restart_stale: bool = False,
) -> dict:
    """Train ``recipe["arch"]`` on one fold of a dataset; returns the final summary.

    Resumes from ``out_dir/checkpoint_last.pt`` when present; a finished run resumed
    has nothing to train and writes its outputs again. A checkpoint of another seed
    or of other weight-deciding recipe keys (all but :data:`logvmamba.config.INFERENCE_KEYS`)
    is an error, or with ``restart_stale`` is discarded (the workflow retrains a run
    whose recipe changed). ``progress`` shows a bar per epoch when stderr is a terminal.

    Raises:
        TrainingDiverged: a non-finite loss (the last good checkpoint is kept).
    """
    from tqdm import tqdm

    from logvmamba.data import make_loader

    rank, world = _distributed()
    device = torch.device(device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = RawDataset(dataset_dir)
    val_cases = split_case_ids(ds, "val", fold)[: recipe["val_cases"] or None]
    train_cases = split_case_ids(ds, "train", fold)
    info = ds.info
    data = data_spec(ds, info.normalization if info is not None else "zscore",
                     median_spacing([_case_spacing(ds, c) for c in train_cases]))
    args = model_args(recipe, data)

    seed_everything(seed)
    model = build_model(args).to(device)
    _check_freezable(model, recipe)
    optimizer = build_optimizer(model, recipe)
    loss_fn = SegmentationLoss(ds.has_regions, recipe["dice_weight"], recipe["ce_weight"])
    use_amp = bool(recipe["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    log_rows: list[dict] = []
    start_epoch, best = 0, -math.inf

    def state(epoch: int, resumable: bool) -> dict:
        out = dict(model=model.state_dict(), model_args=args, data=data,
                   inference=dict(patch_size=list(recipe["patch_size"]), overlap=recipe["overlap"], tta=recipe["tta"]),
                   recipe=recipe, seed=seed, fold=fold, epoch=epoch, best=best, log=log_rows)
        if resumable:
            out.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict())
        return out

    last_path, best_path = out / "checkpoint_last.pt", out / "checkpoint_best.pt"
    # Snakemake deletes a job's declared outputs (checkpoint_best.pt) before a retry; this
    # second name of the same file lets the resumed run keep the best weights.
    kept_path = out / ".checkpoint_best.resume.pt"
    if last_path.is_file():
        saved = load_checkpoint(last_path, map_location=device)
        if weight_recipe(saved["recipe"]) != weight_recipe(recipe) or saved["seed"] != seed:
            if not restart_stale:
                raise ValueError(f"{last_path}: checkpoint of another recipe or seed; remove it or use a new output folder")
            logger.warning("%s: checkpoint of another recipe or seed, starting over", last_path)
            saved = None
            if rank == 0:
                last_path.unlink()
                best_path.unlink(missing_ok=True)
                kept_path.unlink(missing_ok=True)
        elif rank == 0 and not best_path.exists() and kept_path.is_file():
            _link_or_copy(kept_path, best_path)
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            start_epoch, best, log_rows = saved["epoch"] + 1, saved["best"], saved["log"]
            logger.info("%s: resuming after epoch %d of %d", last_path, start_epoch, recipe["epochs"])

    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    show = progress and rank == 0 and sys.stderr.isatty()
    for epoch in range(start_epoch, recipe["epochs"]):
        t0 = time.perf_counter()
        seed_everything(_epoch_seed(seed, epoch, rank))
        if recipe["freeze_encoder_epochs"]:
            _set_encoder_frozen(model, epoch < recipe["freeze_encoder_epochs"])
        lr = lr_at(epoch, recipe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loader = make_loader(
            ds, "train", fold=fold, patch_size=recipe["patch_size"], batch_size=recipe["batch_size"],
            seed=_epoch_seed(seed, epoch, rank), num_workers=recipe["num_workers"],
            samples_per_epoch=recipe["iterations"] * recipe["batch_size"],
        )
        net.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{recipe['epochs']}", disable=not show, leave=False)
        for it, batch in enumerate(bar):
            image, target = batch["image"].to(device), batch["label"].to(device)
            with torch.autocast(device.type, enabled=use_amp):
                loss = loss_fn(net(image), target)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"{out}: loss is {loss.item()} at epoch {epoch} iteration {it}; "
                    f"stopped, the last good checkpoint is {last_path if last_path.exists() else 'none (first epoch)'}"
                    + (" (AMP is on: try amp: false with grad_clip)" if use_amp else "")
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe["grad_clip"]:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")

        val_score = math.nan
        if rank == 0 and val_cases and ((epoch + 1) % recipe["val_every"] == 0 or epoch + 1 == recipe["epochs"]):
            val_score = validate(model, ds, val_cases, recipe)
        row = dict(epoch=epoch, train_loss=float(np.mean(losses)), val_score=val_score, lr=lr, seconds=time.perf_counter() - t0)
        log_rows.append(row)
        if rank == 0:
            if not math.isnan(val_score) and val_score > best:
                best = val_score
                save_checkpoint(best_path, state(epoch, resumable=False))
                _link_or_copy(best_path, kept_path)
            save_checkpoint(last_path, state(epoch, resumable=True))
            _write_log(out / "log.csv", log_rows)
            logger.info("epoch %d/%d: loss %.4f, val %.4f, lr %.2e, %.1fs", epoch + 1, recipe["epochs"],
                        row["train_loss"], val_score, lr, row["seconds"])

    summary = dict(epochs=recipe["epochs"], best_val_score=best, final_train_loss=log_rows[-1]["train_loss"] if log_rows else None,
                   seed=seed, fold=fold, device=device.type, device_name=_device_name(device), world_size=world,
                   torch=torch.__version__)
    if rank == 0:
        # Every declared output is written here too, so a resumed run with nothing left to
        # train (a Snakemake rerun of a finished job) still leaves a complete run folder.
        if not best_path.exists():  # no validation cases: the last epoch is the result
            save_checkpoint(best_path, state(recipe["epochs"] - 1, resumable=False))
        _write_log(out / "log.csv", log_rows)
        atomic_write_text(out / "train_done.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from logvmamba.provenance import cpu_model

    return cpu_model() or "cpu"


def _write_log(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def main(argv=None) -> None:
    from logvmamba.config import load_config, resolve_recipe

    parser = argparse.ArgumentParser(description="Train a registered model on a dataset.")
    parser.add_argument("--model", required=True, help="model entry of the config (or a registered name)")
    parser.add_argument("--dataset", required=True, help="dataset folder (nnU-Net raw)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", nargs="*", default=["config/config.yaml"], help="experiment config files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_config(*args.config)
    ds = RawDataset(args.dataset)
    recipe = resolve_recipe(config, args.model, ds)
    try:
        train(recipe, args.dataset, args.out, seed=args.seed, fold=args.fold)
    except TrainingDiverged as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
