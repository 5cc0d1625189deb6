"""Train any registered model on any dataset with a recipe from the config.

One function, :func:`train`; every hyperparameter comes from the recipe (see
:func:`logvmamba.config.resolve_recipe`). A run writes into ``out_dir``:
``checkpoint_last.pt`` (every epoch), ``checkpoint_best.pt`` (best validation
score), ``log.csv`` (one row per epoch) and ``train_done.json``. Rerunning a
killed run resumes from ``checkpoint_last.pt`` and ends with the same weights as
an unbroken run: every epoch reseeds all random streams from (seed, epoch).
One run trains in a folder at a time: it holds ``out_dir/.train.lock`` while it
runs, and a folder finished by another run (model, dataset, seed, fold or
weight-deciding recipe) is refused.

Launched by ``torchrun --nproc_per_node W``, the processes train one model
(DistributedDataParallel) on the global batch ``recipe["batch_size"]``, each
on its ``1/W`` share of the one-process batches (see
:class:`logvmamba.data.loading.EpochSampler`); the batch Dice is computed from sums
over all processes, so the gradient is the one-process gradient. Only rank 0
writes files.

Usage: ``python -m logvmamba.train --model NAME --dataset DIR --out DIR [--config FILE] [--seed N]``
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from logvmamba.cli import add_debug_flag, command
from logvmamba.checkpoint import (
    build_model, data_spec, load_checkpoint, median_spacing, model_args, save_checkpoint,
)
from logvmamba.config import weight_recipe
from logvmamba.data import RawDataset, split_case_ids
from logvmamba.data.cases import resolved_normalization
from logvmamba.infer import predict_case
from logvmamba.io import atomic_write_text, check_output_folder

__all__ = ["train", "TrainingDiverged", "RunFolderBusy", "run_identity", "recipe_hash", "lr_at", "SegmentationLoss", "amp_mode"]

logger = logging.getLogger(__name__)

LOG_FIELDS = ("epoch", "train_loss", "val_score", "lr", "seconds")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------- pieces


def build_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    name, lr, wd = recipe["optimizer"], recipe["lr"], recipe["weight_decay"]
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel per step instead of a dozen ops per parameter: on a CPU the default
    # for-loop step of a small network costs 7-8 % of an iteration, the fused one 2 %.
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe["momentum"], nesterov=recipe["nesterov"], weight_decay=wd,
                               fused=fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, eps=recipe["eps"], fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, eps=recipe["eps"], fused=fused)
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


def _sum_over_processes(local: torch.Tensor) -> torch.Tensor:
    """``local`` summed over all processes; the gradient flows through this process's part, times W.

    DDP averages the W processes' gradients, so the factor W makes the average the
    gradient of the one-process loss (nnU-Net v2's batch Dice under DDP).
    """
    total = local.detach().clone()
    dist.all_reduce(total)
    world = dist.get_world_size()
    return total + world * (local - local.detach())


class SegmentationLoss(nn.Module):
    """Batch Dice + CE over softmax classes, or batch Dice + BCE over sigmoid regions; deep supervision.

    The Dice is MONAI's ``DiceLoss(batch=True, smooth_nr=1e-5, smooth_dr=1e-5)``: per
    class (region), ``1 - (2 tp + 1e-5) / (2 tp + fp + fn + 1e-5)`` with the sums over
    the batch and every voxel, averaged over classes; the CE (BCE) is the mean over
    voxels, so for classes the loss is MONAI's ``DiceCELoss`` (whose CE over several
    sigmoid channels would be a softmax CE, not BCE). With ``ddp`` the Dice sums run
    over the global batch of all processes (see :func:`_sum_over_processes`). Deep-supervision weights follow nnU-Net: 1/2^i
    per scale, the lowest scale off, normalised to sum 1; targets are resized with
    nearest neighbours. Computed in float32 whatever the output's dtype.
    """

    def __init__(self, regions: bool, dice_weight: float = 1.0, ce_weight: float = 1.0, ddp: bool = False,
                 smooth: float = 1e-5):
        super().__init__()
        self.regions, self.ddp, self.smooth = regions, ddp, smooth
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of one output scale; ``target`` at the output's size."""
        logits = logits.float()
        if self.regions:
            truth = target.float()
            prob = torch.sigmoid(logits)
            ce = F.binary_cross_entropy_with_logits(logits, truth)
        else:
            labels = target[:, 0].long()
            truth = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
            prob = torch.softmax(logits, 1)
            ce = F.cross_entropy(logits, labels)
        axes = [0, *range(2, logits.ndim)]
        sums = torch.stack([(prob * truth).sum(axes), prob.sum(axes), truth.sum(axes)])
        if self.ddp:
            sums = _sum_over_processes(sums)
        tp, predicted, present = sums
        dice = 1 - (2 * tp + self.smooth) / (predicted + present + self.smooth)
        return self.dice_weight * dice.mean() + self.ce_weight * ce

    def forward(self, output, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, (list, tuple)):
            return self.loss(output, target)
        weights = [0.5**i for i in range(len(output))]
        if len(output) > 1:
            weights[-1] = 0.0
        total = sum(weights)
        loss = 0.0
        for w, out in zip(weights, output):
            if w == 0:
                continue
            t = target if out.shape[2:] == target.shape[2:] else F.interpolate(target.float(), size=out.shape[2:], mode="nearest")
            loss = loss + (w / total) * self.loss(out, t)
        return loss


def amp_mode(amp: bool | str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, GradScaler on) of the recipe's ``amp`` on ``device``.

    ``true`` is nnU-Net's trainer: float16 with a GradScaler on CUDA, off elsewhere;
    ``"float16"`` is float16 with a GradScaler and ``"bfloat16"`` bfloat16 without
    one, on any device; ``false`` is off.
    """
    if amp is False:
        return None, False
    if amp is True:
        return (torch.float16, True) if device.type == "cuda" else (None, False)
    if amp == "float16":
        return torch.float16, True
    if amp == "bfloat16":
        return torch.bfloat16, False
    raise ValueError(f"amp must be false, true, 'float16' or 'bfloat16', got {amp!r}")


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def backward_context(device: torch.device, dtype: torch.dtype | None):
    """Where the backward pass of a step runs: without oneDNN under CPU bfloat16 autocast.

    oneDNN's bfloat16 Conv3d weight gradient (torch 2.14.1) returns uninitialised values,
    up to inf and NaN, on maps with two sides of 2 voxels (the bottleneck of a small
    3D patch); PyTorch's own kernel is exact there and about 5x slower.
    """
    if device.type == "cpu" and dtype == torch.bfloat16:
        return _without_onednn()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _without_onednn():
    # Not torch.backends.mkldnn.flags: its exit sets allow_tf32, which warns on every step.
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of an epoch; ``rank`` > 0 only for the torch/numpy streams a network draws (DropPath)."""
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


# ----------------------------------------------------------------------------- data


CACHE_BYTES = 256 * 2**20  # on disk; "auto" caches a dataset this small (decoded it takes a few times more)


def _cached(ds: RawDataset, cases: list, cache) -> bool:
    """Whether training keeps the cases read and normalised in memory (the recipe's ``cache``)."""
    if cache in (True, False):
        return cache
    if cache != "auto":
        raise ValueError(f"cache must be true, false or 'auto', got {cache!r}")
    files = [ds.get(c) for c in cases]
    paths = [p for f in files for p in (*f.images, f.label) if p is not None]
    return sum(Path(p).stat().st_size for p in paths) <= CACHE_BYTES


class TrainLoader:
    """The training cases read once; :meth:`epoch` gives an epoch's loader over them.

    With the recipe's ``cache`` the deterministic head of the transforms (reading,
    cropping to the foreground, normalising, padding) runs once per case and only the
    random tail per draw; the draws are the same either way (see
    :class:`logvmamba.data.loading.SeededDraws`).
    """

    def __init__(self, ds: RawDataset, recipe: dict, fold: int = 0, rank: int = 0, world: int = 1):
        from logvmamba.data.loading import make_dataset

        self.recipe, self.rank, self.world = recipe, rank, world
        cases = split_case_ids(ds, "train", fold)
        self.cache = _cached(ds, cases, recipe.get("cache", "auto"))
        self.data = make_dataset(ds, "train", fold, recipe["patch_size"], cache=self.cache,
                                 spacing=recipe.get("target_spacing"))

    def epoch(self, seed: int, samples: int | None = None):
        """The loader of an epoch seeded with ``seed`` (``samples``: default iterations x batch)."""
        from logvmamba.data.loading import epoch_loader

        recipe = self.recipe
        samples = recipe["iterations"] * recipe["batch_size"] if samples is None else samples
        return epoch_loader(self.data, recipe["batch_size"], seed, samples, recipe["num_workers"], self.rank, self.world)


def training_data_spec(ds: RawDataset, fold: int = 0) -> dict:
    """What a checkpoint records of the data a run on ``fold`` trains on (see :func:`logvmamba.checkpoint.data_spec`)."""
    cases = split_case_ids(ds, "train", fold)
    return data_spec(ds, resolved_normalization(ds), median_spacing([_case_spacing(ds, c) for c in cases]))


# ----------------------------------------------------------------------------- validation


def validate(model: nn.Module, ds: RawDataset, case_ids, recipe: dict, rank: int = 0, world: int = 1) -> float:
    """The dataset's main score on whole validation images.

    With ``world`` processes each scores every ``world``-th case and all get the score
    of all cases, in one process's order.
    """
    import pandas as pd

    from logvmamba.evaluation import aggregate, score_case

    rows = []
    for index in range(rank, len(case_ids), world):
        pred, case = predict_case(model, ds, case_ids[index], recipe["patch_size"], recipe["overlap"],
                                  target_spacing=recipe.get("target_spacing"), sw_batch_size=recipe.get("sw_batch_size", 1))
        rows.append((index, score_case(ds.info, pred, case)))
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, rows)
        rows = sorted((row for share in shares for row in share), key=lambda row: row[0])
    model.train()
    return float(aggregate(pd.DataFrame([row for _, row in rows]), ds.info)["main"])


# ----------------------------------------------------------------------------- training


def _distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun (nccl on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # nccl's barrier uses the current device
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _barrier(world: int) -> None:
    """Wait for every process (nothing with one process)."""
    if world > 1:
        dist.barrier()


def _mean_over_processes(value: torch.Tensor, world: int) -> float:
    """A scalar averaged over the processes (each sees the same value, so all stop together)."""
    if world == 1:
        return value.item()
    value = value.detach().float().reshape(1).clone()
    dist.all_reduce(value)  # gloo has no AVG
    return value.item() / world


# ----------------------------------------------------------------------------- one run per folder


LOCK_NAME = ".train.lock"
IDENTITY_KEYS = ("model", "dataset", "seed", "fold", "recipe_hash")
#: seconds between touches of a held lock, and without one after which another host's lock is stale
LOCK_HEARTBEAT_S, LOCK_STALE_S = 30.0, 600.0


class RunFolderBusy(RuntimeError):
    """Another training holds the output folder's lock."""


def recipe_hash(recipe: dict) -> str:
    """A short hash of the recipe keys that decide the weights (:func:`logvmamba.config.weight_recipe`)."""
    text = json.dumps(weight_recipe(recipe), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_identity(recipe: dict, dataset_dir: str | os.PathLike, seed: int, fold: int) -> dict:
    """What tells two runs apart: model (``recipe["arch"]``), dataset folder name, seed, fold, :func:`recipe_hash`."""
    return dict(model=recipe["arch"], dataset=Path(os.path.abspath(dataset_dir)).name, seed=seed, fold=fold,
                recipe_hash=recipe_hash(recipe))


def _describe(identity: dict) -> str:
    return ", ".join(f"{key} {identity[key]}" for key in IDENTITY_KEYS if key in identity)


def _create_lock(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; whether this call created it.

    A hard link to a written temporary file is atomic on NFS too and never shows a
    half-written lock; the link count decides, as NFS can report a link it made as
    failed (a lost reply). Without hard links, ``O_CREAT | O_EXCL``.
    """
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # others sharing the folder read whose lock it is
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return True
        return os.stat(tmp).st_nlink == 2
    finally:
        os.unlink(tmp)


def _owner_gone(owner: dict, path: Path) -> bool:
    """Whether a lock's owner no longer runs: a process of this host that is gone, or (any host)
    a lock not touched for :data:`LOCK_STALE_S` (a live owner touches it every :data:`LOCK_HEARTBEAT_S`)."""
    try:
        if time.time() - path.stat().st_mtime > LOCK_STALE_S:  # a node that died, or a job killed by SIGKILL elsewhere
            return True
    except FileNotFoundError:
        return True
    pid = owner.get("pid")
    if os.name != "posix" or owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _remove_if_unchanged(path: Path, text: str) -> None:
    """Remove the lock at ``path`` if it still holds ``text``.

    Processes taking over one dead lock take turns (flock on it) and check that the
    path still names that file, so none removes the new lock another one just took.
    """
    try:
        try:
            f = open(path, "r+", encoding="utf-8")  # r+: NFS grants an exclusive flock on a writable file only
        except PermissionError:  # another user's lock
            f = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no fcntl (Windows) or no locks on this file system
            pass
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same and f.read() == text:
            path.unlink()


def _lock_folder(out: Path, identity: dict) -> str:
    """Take ``out``'s lock for the run ``identity``; returns the lock's text.

    A lock of a process of this host that no longer runs is taken over with a warning.
    """
    path = out / LOCK_NAME
    text = json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                           started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **identity), indent=2) + "\n"
    for _ in range(10):  # each turn another process took or released the lock
        if _create_lock(path, text):
            return text
        try:
            held = path.read_text(encoding="utf-8")
        except FileNotFoundError:  # released meanwhile
            continue
        try:
            owner = json.loads(held)
        except json.JSONDecodeError:
            owner = None
        owner = owner if isinstance(owner, dict) else {}
        if not _owner_gone(owner, path):
            raise RunFolderBusy(
                f"{out}: another training runs in this folder (pid {owner.get('pid', '?')} on {owner.get('host', '?')} "
                f"since {owner.get('started', '?')}: {_describe(owner)}); this run is {_describe(identity)}; "
                f"wait for it or use another output folder (remove {path} if that run is dead)")
        logger.warning("%s: taking over the lock of pid %s on %s, which no longer runs (%s)",
                       path, owner["pid"], owner["host"], _describe(owner))
        _remove_if_unchanged(path, held)
    raise RunFolderBusy(f"{path}: could not take the lock, other trainings kept taking it")


class _Heartbeat:
    """Touches the held lock every :data:`LOCK_HEARTBEAT_S` so that other hosts can tell it lives."""

    def __init__(self, path: Path):
        self.path, self.stop = path, threading.Event()
        self.thread = threading.Thread(target=self._run, name="train-lock-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(LOCK_HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def _released_on_sigterm():
    """SIGTERM (scancel, a job's time limit, torchrun stopping workers) unwinds like Ctrl-C, so the
    lock is released; only the main thread can install a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _unlock(out: Path, text: str) -> None:
    """Remove ``out``'s lock if it is still this run's (not one that took over from this process)."""
    path = out / LOCK_NAME
    with contextlib.suppress(FileNotFoundError):
        if path.read_text(encoding="utf-8") == text:
            path.unlink()


def _check_finished(out: Path, identity: dict, restart_stale: bool, rank: int, world: int) -> None:
    """Refuse a run folder finished by another run; ``restart_stale`` discards its ``train_done.json`` instead."""
    done = out / "train_done.json"
    if not done.is_file():
        return
    try:
        summary = json.loads(done.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{done}: not a JSON run summary ({err}); remove it or use another output folder") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{done}: not a JSON run summary (a {type(summary).__name__}, not an object); "
                         f"remove it or use another output folder")
    # a summary written before the identity was recorded names the seed and fold only
    if all(summary[key] == identity[key] for key in IDENTITY_KEYS if key in summary):
        return
    if not restart_stale:
        raise ValueError(f"{out}: finished by another run ({_describe(summary)}); this run is {_describe(identity)}; "
                         f"use another output folder")
    _barrier(world)  # every process has read it before rank 0 removes it
    if rank == 0:
        logger.warning("%s: finished by another run (%s), starting over as %s", out, _describe(summary), _describe(identity))
        done.unlink()


def _claim_folder(out: Path, identity: dict, rank: int, world: int) -> str | None:
    """Rank 0 takes ``out``'s lock; every process raises its error.

    Returns the lock's text on rank 0, None on the others.
    """
    text, error = None, None
    if rank == 0:
        try:
            text = _lock_folder(out, identity)
        except Exception as err:  # the other processes must learn of it, or they wait for rank 0 forever
            error = err
    if world > 1:
        shared = [error]
        dist.broadcast_object_list(shared, src=0)
        error = shared[0]
    if error is not None:
        raise error
    return text


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
    Under torchrun every process calls it; ``recipe["batch_size"]`` is the global
    batch, the validation cases are shared out, rank 0 alone writes, and all return
    after its writes.
    ``recipe["amp"]`` picks the autocast (see :func:`amp_mode`).

    The run holds ``out_dir/.train.lock`` while it trains (rank 0 takes it), so a second
    run into the folder fails; a lock of a process of this host that no longer runs is
    taken over. A folder finished by another run (``train_done.json`` of another
    :func:`run_identity`) is refused, or with ``restart_stale`` trained over.

    Raises:
        TrainingDiverged: a non-finite loss (the last good checkpoint is kept).
        RunFolderBusy: another training holds ``out_dir``.
        ValueError: a batch size that does not divide by the processes, a
            checkpoint of another recipe, seed or fold, or a folder finished by another run.
    """
    rank, world = _distributed()
    if recipe["batch_size"] % world:
        raise ValueError(f"batch_size {recipe['batch_size']} is the global batch and must divide by the {world} processes")
    device = torch.device(device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    if rank == 0:
        check_output_folder(out)
    identity = run_identity(recipe, dataset_dir, seed, fold)
    with _released_on_sigterm():
        lock = _claim_folder(out, identity, rank, world)
        heartbeat = _Heartbeat(out / LOCK_NAME) if lock is not None else None
        try:
            return _train_in_folder(recipe, dataset_dir, out, identity, device, progress, restart_stale, rank, world)
        finally:
            if heartbeat is not None:
                heartbeat.close()
                _unlock(out, lock)


def _train_in_folder(recipe: dict, dataset_dir, out: Path, identity: dict, device: torch.device, progress: bool,
                     restart_stale: bool, rank: int, world: int) -> dict:
    """:func:`train` once this run holds ``out``."""
    from tqdm import tqdm

    seed, fold = identity["seed"], identity["fold"]
    ds = RawDataset(dataset_dir)
    val_cases = split_case_ids(ds, "val", fold)[: recipe["val_cases"] or None]
    data = training_data_spec(ds, fold)
    args = model_args(recipe, data)

    seed_everything(seed)
    model = build_model(args).to(device)
    _check_freezable(model, recipe)
    optimizer = build_optimizer(model, recipe)
    if rank == 0:  # fail now rather than at the first checkpoint: weights, two optimizer moments, best and last
        check_output_folder(out, 6 * sum(p.numel() * p.element_size() for p in model.parameters()))
    loss_fn = SegmentationLoss(ds.has_regions, recipe["dice_weight"], recipe["ce_weight"], ddp=world > 1)
    amp_dtype, use_scaler = amp_mode(recipe["amp"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    log_rows: list[dict] = []
    start_epoch, best = 0, -math.inf

    def state(epoch: int, resumable: bool) -> dict:
        out = dict(model=model.state_dict(), model_args=args, data=data,
                   inference=dict(patch_size=list(recipe["patch_size"]), overlap=recipe["overlap"], tta=recipe["tta"],
                                  target_spacing=recipe.get("target_spacing"), sw_batch_size=recipe.get("sw_batch_size", 1)),
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
        _barrier(world)  # every process has read it before rank 0 removes or links files
        if weight_recipe(saved["recipe"]) != weight_recipe(recipe) or saved["seed"] != seed or saved["fold"] != fold:
            if not restart_stale:
                theirs = dict(model=saved["recipe"]["arch"], seed=saved["seed"], fold=saved["fold"],
                              recipe_hash=recipe_hash(saved["recipe"]))
                raise ValueError(f"{last_path}: checkpoint of another recipe, seed or fold ({_describe(theirs)}; this run: "
                                 f"{_describe(identity)}); remove it or use a new output folder")
            saved = None
            if rank == 0:
                logger.warning("%s: checkpoint of another recipe, seed or fold, starting over", last_path)
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
            if rank == 0:
                logger.info("%s: resuming after epoch %d of %d", last_path, start_epoch, recipe["epochs"])
    _check_finished(out, identity, restart_stale, rank, world)  # after the checkpoint, whose error says more

    cases = TrainLoader(ds, recipe, fold, rank, world)
    net, trained = model, None
    show = progress and rank == 0 and sys.stderr.isatty()
    for epoch in range(start_epoch, recipe["epochs"]):
        t0 = time.perf_counter()
        seed_everything(_epoch_seed(seed, epoch, rank))
        if recipe["freeze_encoder_epochs"]:
            _set_encoder_frozen(model, epoch < recipe["freeze_encoder_epochs"])
        if world > 1:
            trainable = [p.requires_grad for p in model.parameters()]
            if trainable != trained:  # DDP reduces the gradients of the parameters that train when it is built
                # find_unused_parameters: the lowest deep-supervision head has loss weight 0 (nnU-Net)
                net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                          find_unused_parameters=True)
                trained = trainable
        lr = lr_at(epoch, recipe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loader = cases.epoch(_epoch_seed(seed, epoch))
        net.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{recipe['epochs']}", disable=not show, leave=False)
        for it, batch in enumerate(bar):
            image, target = batch["image"].to(device), batch["label"].to(device)
            with _autocast(device, amp_dtype):
                output = net(image)
            loss = loss_fn(output, target)  # float32, outside autocast
            value = _mean_over_processes(loss, world)  # the one-process loss of the global batch
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"{out}: loss is {value} at epoch {epoch} iteration {it}; "
                    f"stopped, the last good checkpoint is {last_path if last_path.exists() else 'none (first epoch)'}"
                    + (f" ({str(amp_dtype).removeprefix('torch.')} autocast is on: try amp: false with grad_clip)"
                       if amp_dtype is not None else "")
                )
            optimizer.zero_grad(set_to_none=True)
            with backward_context(device, amp_dtype):
                scaler.scale(loss).backward()
            if recipe["grad_clip"]:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            losses.append(value)
            bar.set_postfix(loss=f"{value:.4f}")

        val_score = math.nan
        if val_cases and ((epoch + 1) % recipe["val_every"] == 0 or epoch + 1 == recipe["epochs"]):
            val_score = validate(model, ds, val_cases, recipe, rank, world)
        row = dict(epoch=epoch, train_loss=float(np.mean(losses)), val_score=val_score, lr=lr, seconds=time.perf_counter() - t0)
        log_rows.append(row)
        improved = not math.isnan(val_score) and val_score > best
        best = val_score if improved else best
        if rank == 0:
            if improved:
                save_checkpoint(best_path, state(epoch, resumable=False))
                _link_or_copy(best_path, kept_path)
            save_checkpoint(last_path, state(epoch, resumable=True))
            _write_log(out / "log.csv", log_rows)
            logger.info("epoch %d/%d: loss %.4f, val %.4f, lr %.2e, %.1fs", epoch + 1, recipe["epochs"],
                        row["train_loss"], val_score, lr, row["seconds"])

    summary = dict(epochs=recipe["epochs"], best_val_score=best, final_train_loss=log_rows[-1]["train_loss"] if log_rows else None,
                   **identity, device=device.type, device_name=_device_name(device), world_size=world,
                   torch=torch.__version__,
                   # the budget: epochs' wall time (validation included, summed over resumed processes)
                   train_seconds=float(sum(r["seconds"] for r in log_rows)), **_peak_memory(device))
    if rank == 0:
        # Every declared output is written here too, so a resumed run with nothing left to
        # train (a Snakemake rerun of a finished job) still leaves a complete run folder.
        if not best_path.exists():  # no validation cases: the last epoch is the result
            save_checkpoint(best_path, state(recipe["epochs"] - 1, resumable=False))
        _write_log(out / "log.csv", log_rows)
        atomic_write_text(out / "train_done.json", json.dumps(summary, indent=2) + "\n")
    _barrier(world)  # no process returns (and reads the run folder) before rank 0 has written it
    return summary


def _peak_memory(device: torch.device) -> dict:
    """This process's peak memory: CUDA's max allocated on a GPU, the max resident set on a CPU."""
    if device.type == "cuda":
        return dict(peak_memory_MiB=torch.cuda.max_memory_allocated(device) / 2**20, peak_memory_kind="cuda_allocated")
    try:
        import resource
    except ImportError:  # not on Windows
        return dict(peak_memory_MiB=None, peak_memory_kind=None)
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return dict(peak_memory_MiB=kib / 1024 * (1 / 1024 if sys.platform == "darwin" else 1), peak_memory_kind="cpu_max_rss")


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


@command(also=(TrainingDiverged, RunFolderBusy))
def main(argv=None) -> None:
    from logvmamba.config import ROOT, ConfigError, load_config, resolve_recipe

    parser = argparse.ArgumentParser(prog="python -m logvmamba.train", description="Train a registered model on a dataset.")
    parser.add_argument("--model", required=True, help="model entry of the config (or a registered name)")
    parser.add_argument("--dataset", required=True, help="dataset folder (nnU-Net raw)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", nargs="*", default=None,
                        help="experiment config files (default: the checkout's config/config.yaml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold", type=int, default=0)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    default = ROOT / "config" / "config.yaml"  # the checkout's, not the cwd's: runs from any folder
    if not args.config and not default.is_file():
        raise ConfigError(f"{default}: no checkout config beside this installed package; pass --config FILE")
    config = load_config(*(args.config or [default]))
    ds = RawDataset(args.dataset)
    recipe = resolve_recipe(config, args.model, ds)
    try:
        train(recipe, args.dataset, args.out, seed=args.seed, fold=args.fold)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
