"""Benchmark of the selective-scan backends: time and peak memory.

    python -m logvmamba.bench.scan [--lengths 1024 4096 16384] [--backends ref torch]

Inputs follow LoG-VMamba's use of the scan: one group, delta_softplus with a
Mamba-initialised delta_bias, D = 1, no z, A = -(1..n) per channel.

Every (backend, length, pass) runs in a fresh subprocess, so the allocator
holds nothing from earlier runs. Peak memory is the increase of resident
memory over the first call: on CPU the kernel's high-water mark (VmHWM, reset
through /proc/self/clear_refs; ru_maxrss if that is not writable) minus the
RSS before the call, which counts everything the process touched (tensors,
allocator slack, autograd buffers); on CUDA ``torch.cuda.max_memory_allocated``
minus the memory allocated before the call. Times are the best of --repeat
further calls: on a shared machine other processes only ever add time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from typing import Optional

__all__ = ["main", "measure", "provenance"]

PASSES = ("fwd", "fwdbwd")


def _make_inputs(batch: int, dim: int, state: int, length: int, device: str, requires_grad: bool, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    delta = 0.1 * torch.randn(batch, dim, length, generator=g)
    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1)
    B = torch.randn(batch, 1, state, length, generator=g)
    C = torch.randn(batch, 1, state, length, generator=g)
    D = torch.ones(dim)
    # Mamba's dt initialisation: dt ~ logUniform[1e-3, 1e-1], bias = softplus^-1(dt).
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    delta_bias = dt + torch.log(-torch.expm1(-dt))
    tensors = [t.to(device).requires_grad_(requires_grad) for t in (u, delta, A, B, C, D, delta_bias)]
    return tensors


def _rss_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(backend: str, length: int, pass_: str, batch: int, dim: int, state: int,
            device: str, repeat: int, threads: int) -> dict:
    """One measurement; meant to run in its own process (see module docstring)."""
    import torch

    from logvmamba.ops import selective_scan

    torch.set_num_threads(threads)
    train = pass_ == "fwdbwd"
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def call(x, gy):
        u, delta, A, B, C, D, bias = x
        with torch.set_grad_enabled(train):
            y = selective_scan(u, delta, A, B, C, D=D, delta_bias=bias, delta_softplus=True, backend=backend)
            if train:
                y.backward(gy)
                for t in x:
                    t.grad = None
        sync()

    # Warm-up on a tiny problem so one-time costs (thread pools, lazy
    # imports, kernel caches) stay out of the memory figure.
    tiny = _make_inputs(batch, dim, state, 8, device, train)
    call(tiny, torch.ones(batch, dim, 8, device=device))
    x = _make_inputs(batch, dim, state, length, device, train)
    gy = torch.ones(batch, dim, length, device=device)
    del tiny

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call(x, gy)
        peak = torch.cuda.max_memory_allocated() - before
        method = "cuda.max_memory_allocated"
    else:
        before = _rss_kib("VmRSS") or 0
        if _reset_peak() and _rss_kib("VmHWM") is not None:
            call(x, gy)
            peak_kib, method = _rss_kib("VmHWM"), "VmHWM-RSS"
        else:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            call(x, gy)
            peak_kib, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
        peak = max(0, peak_kib - before) * 1024

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call(x, gy)
        times.append(time.perf_counter() - t0)
    return {"backend": backend, "length": length, "pass": pass_, "seconds": min(times),
            "median_seconds": statistics.median(times), "peak_bytes": peak, "memory_method": method}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance(device: str, threads: int) -> dict:
    """Where and with what the figures were made."""
    import torch

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "threads": threads,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import mamba_ssm  # noqa: F401 - only its version is reported

        info["mamba_ssm"] = mamba_ssm.__version__
    except Exception:  # noqa: BLE001 - absent or broken: not installed as far as we care
        info["mamba_ssm"] = None
    return info


def _run_worker(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "logvmamba.bench.scan", "--worker", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _table(length: int, rows: dict, backends: list[str]) -> str:
    head = (f"{'backend':<8} {'fwd ms':>10} {'speedup':>8} {'fwd+bwd ms':>11} {'speedup':>8} "
            f"{'fwd MiB':>9} {'/ref':>6} {'fwd+bwd MiB':>12} {'/ref':>6}")
    lines = [head, "-" * len(head)]
    ref = {p: rows.get(("ref", p)) for p in PASSES}
    for be in backends:
        cells = [f"{be:<8}"]
        for p in PASSES:
            r = rows.get((be, p))
            if r is None:
                cells += [f"{'skipped':>10}" if p == "fwd" else f"{'skipped':>11}", f"{'-':>8}"]
                continue
            speed = ref[p]["seconds"] / r["seconds"] if ref[p] else None
            w = 10 if p == "fwd" else 11
            cells += [f"{1e3 * r['seconds']:>{w}.1f}", f"{_fmt_ratio(speed):>8}"]
        for p in PASSES:
            r = rows.get((be, p))
            w = 9 if p == "fwd" else 12
            if r is None:
                cells += [f"{'-':>{w}}", f"{'-':>6}"]
                continue
            ratio = r["peak_bytes"] / ref[p]["peak_bytes"] if ref[p] and ref[p]["peak_bytes"] else None
            cells += [f"{r['peak_bytes'] / 2**20:>{w}.1f}", f"{_fmt_ratio(ratio):>6}"]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    """Runs the benchmark, prints provenance and one table per length."""
    parser = argparse.ArgumentParser(prog="python -m logvmamba.bench.scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: every backend available on the device")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-ref-length", type=int, default=None,
                        help="skip the (slow) ref backend above this length")
    parser.add_argument("--json", default=None, help="also write all figures to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        result = measure(**json.loads(args.worker))
        print(json.dumps(result))
        return result

    import torch

    from logvmamba.ops import available_backends

    threads = args.threads or len(os.sched_getaffinity(0))
    probe = torch.empty(0, device=args.device)
    backends = args.backends or available_backends(probe)
    info = provenance(args.device, threads)
    print("selective scan benchmark")
    for k, v in info.items():
        print(f"  {k:<13} {v}")
    print(f"  {'shape':<13} batch {args.batch}, dim {args.dim}, state {args.state}, float32, "
          f"softplus + delta_bias + D, groups 1")
    print(f"  {'timing':<13} best of {args.repeat} calls after one untimed call")
    print("  memory        peak increase over the first call, one fresh process per figure "
          "(CPU: VmHWM - RSS before; CUDA: max_memory_allocated - allocated before)")
    print("  speedup       ref time / backend time;  /ref: backend peak / ref peak")

    results = []
    for length in args.lengths:
        rows = {}
        for be in backends:
            if be == "ref" and args.max_ref_length is not None and length > args.max_ref_length:
                continue
            for p in PASSES:
                spec = dict(backend=be, length=length, pass_=p, batch=args.batch, dim=args.dim,
                            state=args.state, device=args.device, repeat=args.repeat, threads=threads)
                rows[(be, p)] = _run_worker(spec)
                results.append(rows[(be, p)])
        print(f"\nL = {length}")
        print(_table(length, rows, backends), flush=True)
    out = {"provenance": info, "config": vars(args) | {"threads": threads, "backends": backends},
           "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
