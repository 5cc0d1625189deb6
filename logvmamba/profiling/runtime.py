"""Latency and peak memory of a model at batch 1: inference, and one training step.

A model's modes are measured in one fresh subprocess (``python -m
logvmamba.profiling.runtime --worker SPECS``), one after the other; each mode builds
its own model, and everything the previous mode allocated is released (and, above the
mmap threshold below, returned to the kernel) before it starts, so nothing an earlier
measurement allocated is still held. For each mode: build the model, run ``warmup``
untimed calls, one call for the memory figure, then ``runs`` timed calls whose median
is the latency; the device is synchronised around every timed call.

- ``inference``: ``model.eval()`` under ``torch.inference_mode()``.
- ``train``: ``model.train()``, forward, a scalar loss (mean square of every output),
  backward and one optimizer step (``sgd``: nnU-Net's SGD, momentum 0.99, Nesterov;
  ``adamw``: Swin-UMamba's AdamW), gradients set to None before each step.

Peak memory is the increase over what the process holds just before the measured
call (model, gradients, optimizer state after the warm-up), measured as
:mod:`logvmamba.bench.scan` does: on CUDA ``torch.cuda.max_memory_allocated`` minus
``memory_allocated``; on the CPU the kernel's resident high-water mark (VmHWM, reset
through ``/proc/self/clear_refs``; ``ru_maxrss`` where that is not writable) minus
VmRSS before. The absolute peaks are reported too. The worker fixes glibc's
mmap threshold (``MALLOC_MMAP_THRESHOLD_``) so large freed buffers go back to the
kernel after the warm-up instead of being reused unseen by the measured call.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

from logvmamba.measure import peak_during, rss_kib

__all__ = ["MODES", "OPTIMIZERS", "measure", "run_measurement", "run_measurements"]

MODES = ("inference", "train")
OPTIMIZERS = ("sgd", "adamw")
MMAP_THRESHOLD = 128 * 1024


def _loss(out):
    outs = out if isinstance(out, (list, tuple)) else [out]
    return sum(o.float().square().mean() for o in outs)


def _optimizer(name: str, params):
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=5e-2)
    raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS}")


def _peak_memory(call, device: str) -> dict:
    """Runs ``call`` once: its peak memory increase (:func:`logvmamba.measure.peak_during`) and absolute peaks."""
    import torch

    cuda = device.startswith("cuda")
    before = torch.cuda.memory_allocated() if cuda else (rss_kib("VmRSS") or 0) * 1024
    increase, method = peak_during(call, device)
    out = {"method": method, "before_bytes": before, "peak_increase_bytes": increase}
    if cuda:
        out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    elif method == "VmHWM-RSS":
        out["peak_rss_bytes"] = (rss_kib("VmHWM") or 0) * 1024
    else:
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def measure(model: str, spatial_dims: int, in_channels: int, out_channels: int, img_size: list, device: str,
            mode: str, warmup: int, runs: int, threads: int, optimizer: str = "sgd", amp: bool = False,
            model_kwargs: Optional[dict] = None, seed: int = 0) -> dict:
    """One measurement; meant to run in its own process (see the module docstring)."""
    import torch

    from logvmamba import create_model
    from logvmamba.ops import resolve_backend
    from logvmamba.train import backward_context

    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as nnU-Net trains
    net = create_model(model, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                       img_size=tuple(img_size), **(model_kwargs or {})).to(dev)
    x = torch.randn(1, in_channels, *img_size, device=dev)
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    if mode == "train":
        net.train()
        opt = _optimizer(optimizer, net.parameters())
        scaler = torch.amp.GradScaler("cuda") if (amp and cuda) else None

        def call():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
                loss = _loss(net(x))
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                with backward_context(dev, amp_dtype if amp else None):  # as the trainer runs it
                    loss.backward()
                opt.step()
            sync()
    else:
        net.eval()

        def call():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
                net(x)
            sync()

    for _ in range(warmup):
        call()
    memory = _peak_memory(call, device)
    times = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {
        "mode": mode,
        "batch": 1,
        "amp": bool(amp),
        "optimizer": optimizer if mode == "train" else None,
        "warmup": warmup,
        "runs": runs,
        "threads": threads,
        "scan_backend": resolve_backend("auto", x).name,
        "latency_s": {"median": statistics.median(times) if times else None, "min": min(times, default=None),
                      "max": max(times, default=None), "all": times},
        "memory": memory,
    }


def run_measurement(spec: dict, timeout: Optional[float] = None) -> dict:
    """Runs :func:`measure` with ``spec`` in a fresh Python process and returns its result.

    Raises:
        RuntimeError: the worker failed (its stderr tail is in the message).
    """
    return run_measurements([spec], timeout)[0]


def run_measurements(specs: list[dict], timeout: Optional[float] = None) -> list[dict]:
    """Runs :func:`measure` with each of ``specs``, in order, in one fresh Python process.

    Every spec must name the same ``threads`` and ``device``.

    Raises:
        ValueError: specs that differ in threads or device; RuntimeError: the worker failed
            (its stderr tail is in the message).
    """
    if len({(s["threads"], s["device"]) for s in specs}) != 1:
        raise ValueError("one worker measures one device with one thread count")
    cmd = [sys.executable, "-m", "logvmamba.profiling.runtime", "--worker", json.dumps(specs)]
    threads = str(specs[0]["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"profiling worker ran past {timeout} s for {specs}") from None
    if res.returncode != 0:
        raise RuntimeError(f"profiling worker failed for {specs}:\n{res.stderr[-3000:]}")
    results = json.loads(res.stdout.strip().splitlines()[-1])
    for result, spec in zip(results, specs):
        result["memory"]["malloc_mmap_threshold"] = None if spec["device"].startswith("cuda") else MMAP_THRESHOLD
    return results


def _measure_all(specs: list[dict]) -> list[dict]:
    results = []
    for spec in specs:
        results.append(measure(**spec))
        gc.collect()  # the model, its optimizer and their buffers go before the next mode is measured
        if spec["device"].startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return results


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m logvmamba.profiling.runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", required=True, help="JSON list of keyword arguments of measure(), run in order")
    args = parser.parse_args(argv)
    print(json.dumps(_measure_all(json.loads(args.worker))))


if __name__ == "__main__":
    main()
