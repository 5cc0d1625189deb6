"""Benchmark of the selective-scan backends: time and peak memory.

    python -m logvmamba.bench.scan [--lengths 1024 4096 16384 65536] [--backends fused torch mambapy]

Two parts, in one run:

1. The scan alone, every available backend side by side with mambapy's
   parallel scan (``pip install mambapy``; a benchmark-only dependency,
   skipped with a note when absent), forward and forward+backward. Inputs
   follow LoG-VMamba's use of the scan: one group, delta_softplus with a
   Mamba-initialised delta_bias, D = 1, no z, A = -(1..n) per channel. "ref"
   is skipped above --max-ref-length (it is a Python loop over the sequence),
   and any backend whose peak memory, extrapolated linearly from the previous
   length, would exceed half the machine's available memory; each skip is
   printed with its reason.
2. End to end: one training step (forward, backward, SGD step) of
   ``logvmamba`` in 3D at 64^3 and in 2D at 256x256 with the scan backends of
   --e2e-backends (the models call the scan with backend "auto"; the worker
   runs the step inside ``with scan_backend(name):``).

Every figure runs in a fresh subprocess, so the allocator holds nothing from
earlier runs. Peak memory is the increase of resident memory over the
measured call: on CPU the kernel's high-water mark (VmHWM, reset through
/proc/self/clear_refs; ru_maxrss if that is not writable) minus the RSS
before the call, which counts everything the process touched (tensors,
allocator slack, autograd buffers); on CUDA ``torch.cuda.max_memory_allocated``
minus the memory allocated before the call. Times are the best of --repeat
further calls (fewer once a figure's calls have taken --budget seconds): on
a shared machine other processes only ever add time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Optional

from logvmamba.measure import peak_during, timed
from logvmamba.provenance import environment, load_average, mem_available

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


def _mambapy_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("mambapy") is not None


def _mambapy_scan(u, delta, A, B, C, D, delta_bias):
    """mambapy's selective scan (``MambaBlock.selective_scan``) on this benchmark's layout.

    Softplus of the biased delta as in mambapy's ``MambaBlock.ssm``; then the
    (batch, L, d, n) decays and inputs, its Blelloch parallel scan, and the
    contraction with C, exactly as mambapy computes them.
    """
    import torch.nn.functional as F
    from mambapy.pscan import pscan

    dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (b, L, d)
    x = u.transpose(1, 2)
    Bl, Cl = B[:, 0].transpose(1, 2), C[:, 0].transpose(1, 2)  # (b, L, n)
    deltaA = (dt.unsqueeze(-1) * A).exp()
    BX = dt.unsqueeze(-1) * Bl.unsqueeze(2) * x.unsqueeze(-1)
    hs = pscan(deltaA, BX)
    y = (hs @ Cl.unsqueeze(-1)).squeeze(3) + D * x
    return y.transpose(1, 2)






def measure(backend: str, length: int, pass_: str, batch: int, dim: int, state: int,
            device: str, repeat: int, threads: int, budget: float = float("inf")) -> dict:
    """One measurement; meant to run in its own process (see module docstring)."""
    import torch

    from logvmamba.ops import selective_scan

    torch.set_num_threads(threads)
    train = pass_ == "fwdbwd"
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def scan(u, delta, A, B, C, D, bias):
        if backend == "mambapy":
            return _mambapy_scan(u, delta, A, B, C, D, bias)
        return selective_scan(u, delta, A, B, C, D=D, delta_bias=bias, delta_softplus=True, backend=backend)

    def call(x, gy):
        with torch.set_grad_enabled(train):
            y = scan(*x)
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

    peak, method = peak_during(lambda: call(x, gy), device)
    times = timed(lambda: call(x, gy), repeat, budget)
    return {"backend": backend, "length": length, "pass": pass_, "seconds": min(times),
            "median_seconds": statistics.median(times), "calls": len(times), "peak_bytes": peak,
            "memory_method": method}






E2E_MODEL = "logvmamba"
# End-to-end cases of E2E_MODEL: (img_size, in_channels, out_channels), as the brief's
# training patches: the 3D network (U-Mamba-Enc) at 64^3, the 2D one (Swin-UMamba) at 256^2.
E2E_CASES = {
    "3d": ((64, 64, 64), 4, 3),
    "2d": ((256, 256), 3, 8),
}


def measure_step(case: str, backend: str, device: str, repeat: int, threads: int,
                 budget: float = float("inf"), batch: int = 1) -> dict:
    """One training step (forward, cross-entropy, backward, SGD step) of ``E2E_MODEL`` in one of
    the :data:`E2E_CASES` ("2d" or "3d").

    Runs in its own process; the models call the scan with backend "auto",
    which the step resolves to ``backend`` through :func:`logvmamba.ops.scan_backend`.
    """
    import torch
    import torch.nn.functional as F

    from logvmamba import create_model
    from logvmamba.ops import resolve_backend, scan_backend

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    size, cin, cout = E2E_CASES[case]
    net = create_model(E2E_MODEL, spatial_dims=len(size), in_channels=cin, out_channels=cout, img_size=size).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, cin, *size, device=device)
    target = torch.randint(0, cout, (batch, *size), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        out = net(x)
        loss = F.cross_entropy(out[0] if isinstance(out, (list, tuple)) else out, target)
        loss.backward()
        opt.step()
        sync()

    with scan_backend(backend):
        t0 = time.perf_counter()
        step()  # first step: allocations, thread pools, lazy builds
        first = time.perf_counter() - t0
        peak, method = peak_during(step, device)
        times = timed(step, repeat, budget)
        resolved = resolve_backend("auto", x).name
    return {"model": E2E_MODEL, "case": case, "backend": backend, "scan_backend": resolved,
            "img_size": list(size), "batch": batch, "seconds": min(times),
            "median_seconds": statistics.median(times), "calls": len(times), "first_seconds": first,
            "peak_bytes": peak, "memory_method": method,
            "parameters": sum(p.numel() for p in net.parameters())}








def provenance(device: str, threads: int) -> dict:
    """Where and with what the figures were made (with the fused library's build on CPU)."""
    info = environment(device, threads)
    if device == "cpu":
        from logvmamba.ops import fused

        build = fused.build_info()  # builds here, once, so no worker pays for it
        info["fused_library"] = build.get("library") or build.get("reason")
        if build.get("built"):
            info["fused_compile_seconds"] = round(build["compile_seconds"], 1)
            info["fused_flags"] = " ".join(build["flags"])
    return info


def _run_worker(spec: dict) -> dict:
    """Runs one measurement in a fresh process; on failure returns {"error": ...}."""
    cmd = [sys.executable, "-m", "logvmamba.bench.scan", "--worker", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
        return {"error": f"worker failed (exit status {res.returncode}): {last}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _ratio(num: Optional[dict], den: Optional[dict], key: str = "seconds") -> str:
    if not num or not den or key not in num or key not in den or not den[key]:
        return "-"
    return f"{num[key] / den[key]:.2f}"


def _table(rows: dict, backends: list[str]) -> str:
    """One length: times, speed-ups (other / this) and peaks of each backend."""
    head = (f"{'backend':<9} {'fwd ms':>9} {'x mambapy':>9} {'x ref':>7} {'fwd+bwd ms':>11} "
            f"{'x mambapy':>9} {'x ref':>7} {'fwd MiB':>8} {'fwd+bwd MiB':>11} {'mem/torch':>9}")
    lines = [head, "-" * len(head)]
    notes = []
    for be in backends:
        cells = [f"{be:<9}"]
        fwd, both = rows.get((be, "fwd")), rows.get((be, "fwdbwd"))
        for r, p, w in ((fwd, "fwd", 9), (both, "fwdbwd", 11)):
            if r is None or "error" in r or "skipped" in r:
                cells += [f"{'-':>{w}}", f"{'-':>9}", f"{'-':>7}"]
                if r is not None:
                    notes.append(f"  {be} {p}: {r.get('skipped') or r.get('error')}")
                continue
            cells += [f"{1e3 * r['seconds']:>{w}.1f}", f"{_ratio(rows.get(('mambapy', p)), r):>9}",
                      f"{_ratio(rows.get(('ref', p)), r):>7}"]
        for r, w in ((fwd, 8), (both, 11)):
            ok = r is not None and "seconds" in r
            cells.append(f"{r['peak_bytes'] / 2**20:>{w}.1f}" if ok else f"{'-':>{w}}")
        torch_both = rows.get(("torch", "fwdbwd"))
        cells.append(f"{_ratio(both, torch_both, 'peak_bytes'):>9}")
        lines.append(" ".join(cells))
    return "\n".join(lines + notes)


def _e2e_table(rows: list[dict]) -> str:
    head = (f"{'model':<22} {'input':<14} {'backend':<8} {'step s':>8} {'median s':>9} "
            f"{'x torch':>8} {'peak MiB':>9} {'first step s':>12}")
    lines = [head, "-" * len(head)]
    by_case: dict[str, dict] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["backend"]] = r
    for case, per_backend in by_case.items():
        size, cin, _ = E2E_CASES[case]
        shape = "x".join(str(x) for x in (cin, *size))
        model = f"{E2E_MODEL} {case}"
        for be, r in per_backend.items():
            if "error" in r:
                lines.append(f"{model:<22} {shape:<14} {be:<8} {r['error']}")
                continue
            lines.append(
                f"{model:<22} {shape:<14} {be:<8} {r['seconds']:>8.2f} {r['median_seconds']:>9.2f} "
                f"{_ratio(per_backend.get('torch'), r):>8} {r['peak_bytes'] / 2**20:>9.1f} "
                f"{r['first_seconds']:>12.2f}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    """Runs the benchmark, prints provenance and the tables."""
    parser = argparse.ArgumentParser(prog="python -m logvmamba.bench.scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: every backend available on the device, plus mambapy if installed")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (best is reported)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="stop repeating a measurement once its timed calls took this many seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-ref-length", type=int, default=16384,
                        help="skip the (slow) ref backend above this length; 0: never skip")
    parser.add_argument("--memory-fraction", type=float, default=0.5,
                        help="skip a backend at a length where its peak, extrapolated from the previous "
                             "length, would exceed this fraction of the available memory; 0: never skip")
    parser.add_argument("--e2e-dims", nargs="*", default=list(E2E_CASES), choices=list(E2E_CASES),
                        help=f"{E2E_MODEL} in 2D and/or 3D for the training-step comparison (none: skip it)")
    parser.add_argument("--e2e-backends", nargs="+", default=["torch", "fused"])
    parser.add_argument("--e2e-repeat", type=int, default=2, help="timed training steps per case and backend")
    parser.add_argument("--json", default=None, help="also write all figures to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        spec = json.loads(args.worker)
        result = measure_step(**spec["step"]) if "step" in spec else measure(**spec)
        print(json.dumps(result))
        return result

    import torch

    from logvmamba.ops import available_backends

    threads = args.threads or len(os.sched_getaffinity(0))
    probe = torch.empty(0, device=args.device)
    info = provenance(args.device, threads)
    available = available_backends(probe)
    backends = args.backends or available + (["mambapy"] if info["mambapy"] else [])
    print("selective scan benchmark")
    for k, v in info.items():
        print(f"  {k:<22} {v}")
    if "mambapy" not in backends and not args.backends:
        print("  note                   mambapy is not installed (pip install mambapy): its column is empty")
    print(f"  {'shape':<22} batch {args.batch}, dim {args.dim}, state {args.state}, float32, "
          "softplus + delta_bias + D, groups 1")
    print(f"  {'timing':<22} best of up to {args.repeat} calls (until {args.budget:g} s) after one untimed call")
    print(f"  {'memory':<22} peak increase over one call, fresh process per figure "
          "(CPU: VmHWM - RSS before; CUDA: max_memory_allocated - allocated before)")
    print(f"  {'ratios':<22} x mambapy / x ref: their time / this time; mem/torch: fwd+bwd peak / torch's")

    results, e2e = [], []
    last_peak: dict = {}
    for length in args.lengths:
        rows = {}
        for be in backends:
            for p in PASSES:
                if be == "ref" and args.max_ref_length and length > args.max_ref_length:
                    rows[(be, p)] = {"skipped": f"skipped above --max-ref-length {args.max_ref_length} "
                                                "(a Python loop over the sequence)"}
                    continue
                avail, prev = mem_available(), last_peak.get((be, p))
                if args.memory_fraction and avail and prev and args.device == "cpu":
                    predicted = prev[1] * length / prev[0]
                    if predicted > args.memory_fraction * avail:
                        rows[(be, p)] = {"skipped": f"skipped: peak extrapolated to {predicted / 2**30:.1f} GiB, "
                                                    f"over {args.memory_fraction:g} x {avail / 2**30:.1f} GiB "
                                                    "available (see --memory-fraction)"}
                        continue
                spec = dict(backend=be, length=length, pass_=p, batch=args.batch, dim=args.dim,
                            state=args.state, device=args.device, repeat=args.repeat, threads=threads,
                            budget=args.budget)
                rows[(be, p)] = r = _run_worker(spec)
                if "error" not in r:
                    last_peak[(be, p)] = (length, r["peak_bytes"])
                results.append(dict(r, backend=be, length=length, **{"pass": p}))
        print(f"\nL = {length}   (load average {load_average()})")
        print(_table(rows, backends), flush=True)

    e2e_backends = [be for be in args.e2e_backends if be in available]
    if args.e2e_dims and e2e_backends:
        print(f"\none training step (forward, cross-entropy, backward, SGD), batch 1, {threads} threads: "
              f"best of {args.e2e_repeat} steps after one untimed step; x torch: torch's step time / this one's")
        for case in args.e2e_dims:
            for be in e2e_backends:
                step = dict(case=case, backend=be, device=args.device, repeat=args.e2e_repeat,
                            threads=threads, budget=args.budget * 3)
                r = _run_worker({"step": step, "threads": threads})
                e2e.append(dict(r, model=E2E_MODEL, case=case, backend=be))
        print(_e2e_table(e2e), flush=True)
    print(f"\nload average at the end: {load_average()}")

    out = {"provenance": info, "config": vars(args) | {"threads": threads, "backends": backends},
           "results": results, "e2e": e2e}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
