"""Profile one model on one dataset and device: parameters, FLOPs, latency, memory.

The command line is :mod:`logvmamba.profile`. Input shapes come from :data:`logvmamba.data.DATASETS` (``patch_size``, or
``synthetic_patch_size``; ``in_channels``, ``num_outputs``, ``spatial_dims``) at
batch 1. FLOPs follow the published convention (:mod:`logvmamba.profiling.flops`)
and are counted on the CPU in eval mode; latency and memory are measured on
``--device`` in fresh subprocesses (:mod:`logvmamba.profiling.runtime`). The JSON
(``SCHEMA``) is written atomically and records where and with what it was made.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from logvmamba.provenance import git_commit

__all__ = ["SCHEMA", "input_spec", "profile_model", "profile_settings", "provenance"]

log = logging.getLogger(__name__)

SCHEMA = "logvmamba.profile/1"
SIZES = ("paper", "synthetic")


def input_spec(dataset: str, size: str | Sequence[int] = "paper") -> dict:
    """Network input and output sizes of a dataset.

    Args:
        dataset: a key of :data:`logvmamba.data.DATASETS` or a registered user dataset
            (its ``paper`` and ``synthetic`` size: the planned patch).
        size: ``paper`` (the dataset's training patch), ``synthetic`` (its synthetic
            stand-in's patch), a string like ``64x96`` or ``16x64x64``, or a sequence.

    Raises:
        KeyError: unknown dataset.
        ValueError: a size that is not one of those or has the wrong length.
    """
    from logvmamba.data import get_info

    info = get_info(dataset)
    if isinstance(size, str) and size in SIZES:
        patch = info.patch_size if size == "paper" else info.synthetic_patch_size
    else:
        if isinstance(size, str):
            if not re.fullmatch(r"\d+(x\d+)+", size):
                raise ValueError(f"size {size!r} is not paper, synthetic or sizes like 64x96")
            patch = tuple(int(s) for s in size.split("x"))
        else:
            patch = tuple(int(s) for s in size)
        if len(patch) != info.spatial_dims or min(patch) < 1:
            raise ValueError(f"size {size!r} needs {info.spatial_dims} positive sizes for {dataset}")
    return {
        "dataset": dataset,
        "size": size if isinstance(size, str) else "x".join(map(str, patch)),
        "spatial_dims": info.spatial_dims,
        "in_channels": info.in_channels,
        "out_channels": info.num_outputs,
        "img_size": list(patch),
        "shape": [1, info.in_channels, *patch],
        "dtype": "float32",
    }


def provenance(device: str, threads: int) -> dict:
    """Host, CPU/GPU, library versions, scan backend and git commit of a profile."""
    import torch

    from logvmamba.bench.scan import provenance as base
    from logvmamba.ops import SCAN_ENV, resolve_backend

    info = base(device, threads)
    try:
        backend = resolve_backend("auto", torch.empty(0, device=device)).name
    except Exception as err:  # noqa: BLE001 - report, do not fail the profile
        backend = f"unavailable ({err})"
    commit, dirty = git_commit()
    info.update({
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "scan_backend": backend,
        "scan_env": os.environ.get(SCAN_ENV),
        "git_commit": commit,
        "git_dirty": dirty,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    })
    return info


def profile_model(
    model: str,
    dataset: str,
    device: str = "cpu",
    size: str | Sequence[int] = "paper",
    runtime: bool = True,
    flops: bool = True,
    cross_check: bool = True,
    warmup: Optional[int] = None,
    runs: Optional[int] = None,
    threads: Optional[int] = None,
    optimizer: str = "sgd",
    amp: bool = False,
    modes: Sequence[str] = ("inference", "train"),
    model_kwargs: Optional[dict] = None,
    timeout: Optional[float] = None,
) -> dict:
    """The profile of ``model`` on ``dataset`` as a JSON-ready dict (see :data:`SCHEMA`).

    Args:
        model: registered model name.
        dataset: dataset key (input shape, channels, classes).
        device: ``cpu`` or ``cuda`` (``cuda:N``) for latency and memory.
        size: see :func:`input_spec`.
        runtime: measure latency and memory (``False``: parameters and FLOPs only).
        flops: count FLOPs (on the CPU).
        cross_check: also count with ``torch.utils.flop_counter.FlopCounterMode``.
        warmup, runs: untimed and timed calls per mode (default 3 and 10 on CUDA,
            1 and 3 on the CPU).
        threads: CPU threads (default: the usable CPUs).
        optimizer: ``sgd`` or ``adamw`` for the training step.
        amp: autocast (float16 on CUDA, bfloat16 on the CPU) in the timed calls.
        modes: which of ``inference`` and ``train`` to time.
        model_kwargs: extra keywords for ``create_model``.
        timeout: seconds per measurement subprocess.

    Raises:
        ValueError: bad arguments; RuntimeError: CUDA asked for but absent, or a
        measurement failed.
    """
    import torch
    from tqdm import tqdm

    from logvmamba import create_model
    from logvmamba.profiling.flops import count_model_flops
    from logvmamba.profiling.runtime import MODES, OPTIMIZERS, run_measurements

    if not (device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device)):
        raise ValueError(f"device {device!r} is not cpu or cuda[:N]")
    if device.startswith("cuda") and runtime and not torch.cuda.is_available():
        raise RuntimeError("device cuda asked for, but CUDA is not available")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r} is not one of {OPTIMIZERS}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes {tuple(modes)} must be a non-empty subset of {MODES}")
    cuda = device.startswith("cuda")
    warmup = (3 if cuda else 1) if warmup is None else int(warmup)
    runs = (10 if cuda else 3) if runs is None else int(runs)
    if warmup < 0 or runs < 1:
        raise ValueError(f"warmup must be >= 0 and runs >= 1, got warmup={warmup}, runs={runs}")
    threads = threads or len(os.sched_getaffinity(0))
    spec = input_spec(dataset, size)
    model_kwargs = dict(model_kwargs or {})

    net = create_model(model, spatial_dims=spec["spatial_dims"], in_channels=spec["in_channels"],
                       out_channels=spec["out_channels"], img_size=spec["img_size"], **model_kwargs)
    params = list(net.parameters())
    out = {
        "schema": SCHEMA,
        "model": model,
        "model_kwargs": model_kwargs,
        "dataset": dataset,
        "device": device,
        "input": spec,
        "params": {"total": sum(p.numel() for p in params),
                   "trainable": sum(p.numel() for p in params if p.requires_grad),
                   "bytes": sum(p.numel() * p.element_size() for p in params)},
        "flops": None,
        "runtime": None,
    }
    steps = (["flops"] if flops else []) + (list(modes) if runtime else [])
    # A paper-size 3D network takes minutes per step on a CPU; a bar only where someone watches.
    bar = tqdm(total=len(steps), desc=f"profile {model} on {dataset}", unit="step", leave=False,
               disable=not sys.stderr.isatty())
    if flops:
        bar.set_postfix_str("FLOPs")
        log.info("%s on %s: counting FLOPs at %s", model, dataset, spec["shape"])
        net.eval()
        torch.manual_seed(0)
        out["flops"] = count_model_flops(net, torch.randn(*spec["shape"]), cross_check=cross_check)
        out["flops"]["device"] = "cpu"
        bar.update()
    del net, params
    if runtime:
        bar.set_postfix_str(", ".join(modes))
        log.info("%s on %s: timing %s on %s, %d warm-up and %d timed calls each", model, dataset, " and ".join(modes),
                 device, warmup, runs)
        jobs = [dict(model=model, spatial_dims=spec["spatial_dims"], in_channels=spec["in_channels"],
                     out_channels=spec["out_channels"], img_size=spec["img_size"], device=device, mode=mode,
                     warmup=warmup, runs=runs, threads=threads, optimizer=optimizer, amp=amp,
                     model_kwargs=model_kwargs) for mode in modes]
        out["runtime"] = dict(zip(modes, run_measurements(jobs, timeout=timeout)))
        bar.update(len(modes))
    bar.close()
    out["provenance"] = provenance(device, threads)
    return out


def profile_settings(arch: str, dataset: str, device: str, settings: dict, model_kwargs: Optional[dict] = None,
                     threads: Optional[int] = None) -> dict:
    """:func:`profile_model` with the workflow's ``profile`` settings.

    Parameters and FLOPs are counted at ``settings["size"]`` (a size, or a mapping dataset ->
    size, ``paper`` where a dataset is missing); latency and memory run at
    ``settings["runtime_size"]`` (a size, or a mapping dataset -> size) when it differs (a
    CPU demo times small inputs), and the result then records that input under ``runtime_input``.
    """
    size = settings["size"]
    if isinstance(size, dict):
        size = size.get(dataset, "paper")
    runtime_size = settings.get("runtime_size", size)
    if isinstance(runtime_size, dict):
        runtime_size = runtime_size.get(dataset, size)
    common = dict(model_kwargs=model_kwargs, runs=settings["runs"], threads=threads)
    out = profile_model(arch, dataset, device=device, size=size, runtime=settings["runtime"] and runtime_size == size,
                        cross_check=settings.get("cross_check", True), **common)
    out["runtime_input"] = out["input"] if out["runtime"] is not None else None
    if settings["runtime"] and runtime_size != size:
        timed = profile_model(arch, dataset, device=device, size=runtime_size, runtime=True, flops=False, **common)
        out["runtime"], out["runtime_input"] = timed["runtime"], timed["input"]
    return out
