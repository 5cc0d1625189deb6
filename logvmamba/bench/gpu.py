"""One device check: ``pytest -m gpu``, the scan benchmark and a training step of every paper network.

    python -m logvmamba.bench.gpu [--device cuda|cpu] [--quick] [--out results/reference/gpu/NAME.json]
        [--pytest-junit FILE --pytest-exit-status N] [--time-budget SECONDS] [--sections scan train]

``workflow/scripts/gpu_check.sh`` runs ``pytest -m gpu`` with a JUnit report and
then this module with it; a GPU session runs that script once (issue 12, item 5).
The JSON (schema :data:`SCHEMA`, written atomically) has five sections:

- ``provenance``: :func:`logvmamba.profiling.provenance` (date, host, GPU, torch,
  CUDA, Triton, mamba-ssm, the scan backend ``auto`` picks, git commit, load
  average) plus the load average at the end and the wall time.
- ``pytest``: the counts and failed tests of the JUnit report passed in.
- ``scan``: :func:`logvmamba.bench.scan.measure` (time: best of a few calls; peak:
  ``max_memory_allocated`` minus the memory allocated before the call on CUDA, the
  resident high-water mark on CPU) of the backends ``torch``, ``triton`` and
  ``cuda``, forward and forward+backward, at B=2, D=192, N=16 and L in
  :data:`LENGTHS`, and at the largest scan shape of each paper network.
  ``network_shapes`` is where that shape comes from: the (batch, d, n, L) of
  every selective-scan call during one forward of each paper network at its
  paper patch and batch, recorded by a scan backend that wraps the one ``auto``
  picks (see :func:`record_scan_shapes`). The benchmark runs that shape in
  ``measure``'s layout (one B/C group, no z); the record keeps the network's.
- ``train``: one training step as :func:`logvmamba.train.train` takes it
  (forward under autocast, the recipe's loss, backward, gradient clipping and
  optimizer step) of LoG-VMamba at the four paper patches, at batch 1 on
  Endoscopy for the target, and of nnU-Net, U-Mamba-Enc and Swin-UMamba-dagger
  at the same patches; patches, batch sizes, channels, optimizers and model
  keywords come from ``config/paper.yaml``, the packaged recipes and the
  dataset registry. Median of a few steps after warm-up, the first step's time
  (compilation included), peak memory (increase over the model, gradients and
  optimizer state held before the step) and the scan backend ``auto`` picked.
- ``targets``: the issue's targets, each with its value and whether it is met.

Every figure either has its numbers, or ``error`` (it ran and failed, with the
exception) or ``skipped`` (it could not run here, with why); one failure never
stops the others. The figures run in worker processes (``--worker``), one per
scan shape and one per training case on the full run, so a crash, an
out-of-memory or a hang costs one figure group; the parent kills a worker past
its share of ``--time-budget`` and records what it had finished.

``--quick`` runs the same code on small shapes (L in :data:`QUICK_LENGTHS`, the
registered ``_test`` networks at :data:`QUICK_PATCH`, batch 1, the baselines on
Endoscopy and BraTS only, one
warm-up and one timed step), with one worker per section, in about a minute on
two CPU cores; it needs ``--out`` and refuses a path under ``results/reference/gpu/``. On a CPU, ``triton`` and ``cuda`` are
skipped with their backends' reasons.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterable, Optional

from logvmamba.measure import peak_during, timed

__all__ = [
    "SCHEMA", "SCAN_BACKENDS", "LENGTHS", "QUICK_LENGTHS", "REFERENCE_DIR", "PAPER_CASES", "COMPARISON_MODELS",
    "default_out", "main", "network_scan_shapes", "pytest_summary", "record_scan_shapes", "scan_figures",
    "targets", "train_cases", "train_step",
]

log = logging.getLogger(__name__)

SCHEMA = "logvmamba.bench.gpu/1"
#: Scan backends compared; one that cannot run on the device is skipped with its reason.
SCAN_BACKENDS = ("torch", "triton", "cuda")
PASSES = ("fwd", "fwdbwd")
#: (batch, d, n) of the fixed scan shapes, and their lengths (full and quick).
SCAN_BDN = (2, 192, 16)
LENGTHS = (16384, 65536)
QUICK_LENGTHS = (256, 1024)
REFERENCE_DIR = Path("results") / "reference" / "gpu"
#: (config model, dataset key, batch or None for the recipe's): the paper networks at their patches;
#: Endoscopy at batch 1 first, the case of the step-time target.
PAPER_CASES = (("logvmamba", "endoscopy", 1), ("logvmamba", "endoscopy", None), ("logvmamba", "cell", None),
               ("logvmamba", "brats", None), ("logvmamba", "acdc", None))
#: Baselines measured at every paper patch their dimensionality allows (--quick: Endoscopy and BraTS only).
COMPARISON_MODELS = ("nnunet", "umamba_enc", "swin_umamba_d")
QUICK_COMPARISON_DATASETS = ("endoscopy", "brats")
#: Patches of the ``_test`` networks in --quick, by spatial dims (the smallest all of them take).
QUICK_PATCH = {2: (32, 32), 3: (32, 32, 16)}
#: Issue 12's targets: Triton fwd+bwd speed-up over torch, peak-memory growth, one step's seconds.
SPEEDUP_TARGET = 20.0
MEMORY_TOLERANCE = 0.25  # "linear": the peak ratio within 25 % of the length ratio
STEP_TARGET_S = 0.15
RECORD_BACKEND = "bench_record"
RESULT_PREFIX = "logvmamba.bench.gpu result: "
#: The settings of a full run and of --quick.
SETTINGS = {
    "full": dict(scan_repeat=3, scan_budget=10.0, warmup=2, steps=5, step_budget=20.0, time_budget=420.0,
                 worker_caps=dict(shapes=150.0, scan=150.0, train=100.0)),
    "quick": dict(scan_repeat=1, scan_budget=2.0, warmup=1, steps=1, step_budget=5.0, time_budget=300.0,
                  worker_caps=dict(shapes=None, scan=None, train=None)),
}


def _error(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:500]


def _sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _emit(result: dict) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- cases


def _config(path: Optional[str], quick: bool) -> dict:
    from logvmamba.config import ROOT, load_config

    config = load_config(path or ROOT / "config" / "paper.yaml")
    return dict(config, model_variant="test", synthetic=True) if quick else config


def train_cases(config: dict, quick: bool) -> list[dict]:
    """The training-step cases: :data:`PAPER_CASES`, then :data:`COMPARISON_MODELS` on each paper dataset.

    Each case is JSON: the config model, dataset, architecture, input, batch and the
    resolved recipe (:func:`logvmamba.config.dataset_recipe`); ``--quick`` (a config with
    ``model_variant: test`` and ``synthetic: true``) gives the ``_test`` architectures at
    the synthetic patches, batch 1.
    """
    from logvmamba.config import dataset_recipe, supports
    from logvmamba.data import DATASETS

    pairs = [(m, d, b, "paper") for m, d, b in PAPER_CASES]
    datasets = QUICK_COMPARISON_DATASETS if quick else dict.fromkeys(d for _, d, _ in PAPER_CASES)
    pairs += [(m, d, None, "comparison") for m in COMPARISON_MODELS for d in datasets
              if supports(config, m, DATASETS[d].spatial_dims)]
    cases = []
    for model, key, batch, role in pairs:
        info = DATASETS[key]
        recipe = dataset_recipe(config, model, key)
        batch = 1 if quick else int(batch or recipe["batch_size"])
        patch = list(QUICK_PATCH[info.spatial_dims]) if quick else list(recipe["patch_size"])
        cases.append({
            "name": f"{recipe['arch']} {key} {'x'.join(map(str, patch))} batch {batch}",
            "role": role, "model": model, "dataset": key, "arch": recipe["arch"], "spatial_dims": info.spatial_dims,
            "in_channels": info.in_channels, "out_channels": info.num_outputs,
            "regions": info.output_kind == "sigmoid", "img_size": patch, "batch": batch,
            "recipe": recipe,
        })
    return cases


def _build(case: dict, device: str):
    import torch

    from logvmamba import create_model

    torch.manual_seed(0)
    return create_model(case["arch"], spatial_dims=case["spatial_dims"], in_channels=case["in_channels"],
                        out_channels=case["out_channels"], img_size=tuple(case["img_size"]),
                        **case["recipe"]["model_kwargs"]).to(device)


# ----------------------------------------------------------------------------- scan shapes of the networks


def record_scan_shapes(inner: str) -> list[dict]:
    """Registers (once per process) a scan backend that records each call's shape and runs ``inner``.

    Inside ``with logvmamba.ops.scan_backend("bench_record"):`` every scan called with
    backend "auto" appends (batch, dim, state, length, groups, z) to the returned list.
    """
    from logvmamba.ops import ScanBackend, get_backend, register_backend
    from logvmamba.ops.backend import registered_backends

    if RECORD_BACKEND in registered_backends():
        recorder = get_backend(RECORD_BACKEND)
    else:
        class Recorder(ScanBackend):
            name = RECORD_BACKEND

            def __init__(self):
                self.calls: list[dict] = []
                self.inner = "torch"

            def unavailable_reason(self, u=None):
                return get_backend(self.inner).unavailable_reason(u)

            def apply(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
                self.calls.append({"batch": u.shape[0], "dim": u.shape[1], "state": A.shape[1], "length": u.shape[2],
                                   "groups": 1 if B.dim() == 3 else B.shape[1], "z": z is not None})
                return get_backend(self.inner).apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                     return_last_state)

        recorder = register_backend(Recorder())
    recorder.inner = inner
    recorder.calls = []
    return recorder.calls


def _size(shape: dict) -> int:
    return shape["batch"] * shape["dim"] * shape["state"] * shape["length"]


def network_scan_shapes(cases: list[dict], device: str, threads: int) -> Iterable[dict]:
    """For each case, the scan shapes of one forward (no gradient) on ``device``, largest first."""
    import torch

    from logvmamba.ops import resolve_backend, scan_backend

    torch.set_num_threads(threads)
    for case in cases:
        out = {k: case[k] for k in ("name", "model", "dataset", "arch", "img_size", "batch")}
        try:
            x = torch.randn(case["batch"], case["in_channels"], *case["img_size"], device=device)
            inner = resolve_backend("auto", x).name
            calls = record_scan_shapes(inner)
            net = _build(case, device).eval()
            with torch.no_grad(), scan_backend(RECORD_BACKEND):
                net(x)
            _sync(device)()
            counts: dict[tuple, int] = {}
            for c in calls:
                counts[tuple(c.values())] = counts.get(tuple(c.values()), 0) + 1
            shapes = sorted(({**dict(zip(calls[0], k)), "calls": n} for k, n in counts.items()), key=_size,
                            reverse=True) if calls else []
            if not shapes:
                raise RuntimeError("no selective-scan call went through backend 'auto' during the forward")
            out.update(backend=inner, calls=len(calls), shapes=shapes, largest=shapes[0])
        except Exception as err:  # noqa: BLE001 - one failure is recorded, the rest continue
            out["error"] = _error(err)
        finally:
            net = x = None  # noqa: F841 - release before the next case
            _free(device)
        yield out


# ----------------------------------------------------------------------------- scan benchmark


def scan_figures(shapes: list[dict], device: str, repeat: int, budget: float, threads: int) -> Iterable[dict]:
    """Each shape x :data:`SCAN_BACKENDS` x pass through :func:`logvmamba.bench.scan.measure`."""
    import torch

    from logvmamba.bench.scan import measure
    from logvmamba.ops import get_backend

    probe = torch.empty(0, device=device)
    for shape in shapes:
        for backend in SCAN_BACKENDS:
            reason = get_backend(backend).unavailable_reason(probe)
            for pass_ in PASSES:
                fig = {"shape": shape["name"], "backend": backend, "pass": pass_,
                       **{k: shape[k] for k in ("batch", "dim", "state", "length")}}
                if reason is not None:
                    yield dict(fig, skipped=reason)
                    continue
                try:
                    r = measure(backend, shape["length"], pass_, shape["batch"], shape["dim"], shape["state"],
                                device, repeat, threads, budget)
                    fig.update({k: r[k] for k in ("seconds", "median_seconds", "calls", "peak_bytes", "memory_method")})
                except Exception as err:  # noqa: BLE001
                    fig["error"] = _error(err)
                finally:
                    _free(device)
                yield fig


# ----------------------------------------------------------------------------- training step


def train_step(case: dict, device: str, amp: str, warmup: int, steps: int, budget: float,
               threads: int) -> dict:
    """One case's training step, as :func:`logvmamba.train.train` takes it, timed after ``warmup`` steps."""
    import torch

    from logvmamba.ops import resolve_backend
    from logvmamba.train import SegmentationLoss, amp_mode, build_optimizer

    torch.set_num_threads(threads)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as nnU-Net trains
    recipe = case["recipe"]
    net = _build(case, device).train()
    opt = build_optimizer(net, recipe)
    loss_fn = SegmentationLoss(case["regions"], recipe["dice_weight"], recipe["ce_weight"])
    amp_dtype, use_scaler = amp_mode(amp, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)
    gen = torch.Generator().manual_seed(0)
    b, size = case["batch"], case["img_size"]
    x = torch.randn(b, case["in_channels"], *size, generator=gen).to(dev)
    if case["regions"]:
        target = torch.randint(0, 2, (b, case["out_channels"], *size), generator=gen).to(dev)
    else:
        target = torch.randint(0, case["out_channels"], (b, 1, *size), generator=gen).to(dev)
    sync = _sync(device)
    losses = []

    def step():
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            output = net(x)
        loss = loss_fn(output, target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if recipe["grad_clip"]:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), recipe["grad_clip"])
        scaler.step(opt)
        scaler.update()
        sync()
        losses.append(loss.item())

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    allocated = torch.cuda.memory_allocated() if cuda else None
    peak, method = peak_during(step, device)
    out = {"peak_bytes": peak, "memory_method": method}
    if cuda:
        out.update(before_bytes=allocated, peak_allocated_bytes=torch.cuda.max_memory_allocated())
    times = timed(step, steps, budget)
    out.update(median_seconds=statistics.median(times), seconds=times, first_step_seconds=first,
               warmup=warmup, amp=amp, optimizer=recipe["optimizer"],
               scan_backend=resolve_backend("auto", x, requires_grad=True).name,
               parameters=sum(p.numel() for p in net.parameters()), last_loss=losses[-1])
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"non-finite loss in {losses}")
    return out


def _train_figures(cases: list[dict], device: str, amp: str, warmup: int, steps: int, budget: float,
                   threads: int) -> Iterable[dict]:
    for case in cases:
        fig = {k: case[k] for k in ("name", "role", "model", "dataset", "arch", "img_size", "batch")}
        try:
            fig.update(train_step(case, device, amp, warmup, steps, budget, threads))
        except Exception as err:  # noqa: BLE001
            fig["error"] = _error(err)
        finally:
            _free(device)
        yield fig


def _worker(spec: dict) -> None:
    kind, args = spec["kind"], spec["args"]
    run = {"shapes": network_scan_shapes, "scan": scan_figures, "train": _train_figures}[kind]
    for result in run(**args):
        _emit(result)


# ----------------------------------------------------------------------------- parent


class _Runner:
    """Runs workers within the time budget; each returns its figures or the reason they are missing."""

    def __init__(self, device: str, threads: int, deadline: float, caps: dict, budget: float):
        self.device, self.threads, self.deadline, self.caps, self.budget = device, threads, deadline, caps, budget

    def run(self, kind: str, args: dict, expected: int) -> tuple[list[dict], Optional[str]]:
        """(results, why the rest of the ``expected`` are missing or None)."""
        left = self.deadline - time.monotonic()
        if left < 5:
            return [], f"skipped: the time budget (--time-budget {self.budget:g} s) was spent"
        timeout = min(left, self.caps[kind] or left)
        spec = {"kind": kind, "args": dict(args, device=self.device, threads=self.threads)}
        cmd = [sys.executable, "-m", "logvmamba.bench.gpu", "--worker", json.dumps(spec)]
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
            out, err, rc = res.stdout, res.stderr, res.returncode
            why = None if rc == 0 else f"worker failed (exit status {rc})"
        except subprocess.TimeoutExpired as exc:
            out, err = exc.stdout, exc.stderr
            why = f"worker ran past its {timeout:.0f} s and was stopped"
        out, err = (s.decode(errors="replace") if isinstance(s, bytes) else (s or "") for s in (out, err))
        results = [json.loads(line[len(RESULT_PREFIX):]) for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
        if why is not None:
            tail = [ln for ln in err.strip().splitlines() if ln.strip()]
            why += f": {tail[-1][:300]}" if tail else ""
        elif len(results) < expected:
            why = f"worker ended after {len(results)} of {expected} results"
        return results, why


def _fixed_shapes(quick: bool) -> list[dict]:
    b, d, n = SCAN_BDN
    return [{"name": f"B{b} D{d} N{n} L{L}", "source": "fixed", "batch": b, "dim": d, "state": n, "length": L}
            for L in (QUICK_LENGTHS if quick else LENGTHS)]


def _largest_per_arch(records: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}  # by (arch, spatial dims): "logvmamba" is a 2D and a 3D network
    for r in records:
        key = (r["arch"], len(r["img_size"]))
        if "largest" in r and (key not in best or _size(r["largest"]) > _size(best[key]["largest"])):
            best[key] = r
    shapes = []
    for (arch, _), r in best.items():
        s = r["largest"]
        shapes.append({"name": f"{arch} ({r['dataset']} {'x'.join(map(str, r['img_size']))}): B{s['batch']} "
                               f"D{s['dim']} N{s['state']} L{s['length']}",
                       "source": f"network {r['name']}", "arch": arch, "dims": len(r["img_size"]),
                       "network_groups": s["groups"],
                       "network_z": s["z"], **{k: s[k] for k in ("batch", "dim", "state", "length")}})
    return shapes


def _scan_section(runner: _Runner, cases: list[dict], settings: dict, isolate: bool) -> dict:
    paper = [c for c in cases if c["role"] == "paper"]
    # One forward per distinct paper case (the batch-1 target case shares its patch with a paper-batch one).
    paper = list({(c["arch"], c["dataset"]): c for c in reversed(paper)}.values())[::-1]
    records, why = runner.run("shapes", {"cases": paper}, len(paper))
    done = {r["name"] for r in records}
    records += [{k: c[k] for k in ("name", "model", "dataset", "arch", "img_size", "batch")} | {"error": why}
                for c in paper if c["name"] not in done]
    for r in records:
        log.info("scan shapes of %s: %s", r["name"], r.get("error") or f"{r['calls']} calls, largest {r['largest']}")
    shapes = _fixed_shapes(settings["quick"]) + _largest_per_arch(records)
    for r in records:
        if "error" in r and not any(s.get("arch") == r["arch"] and s.get("dims") == len(r["img_size"]) for s in shapes):
            shapes.append({"name": f"{r['arch']} (largest scan)", "source": f"network {r['name']}", "arch": r["arch"],
                           "batch": None, "dim": None, "state": None, "length": None, "error": r["error"]})
    figures = []
    runnable = [s for s in shapes if "error" not in s]
    for group in ([[s] for s in runnable] if isolate else [runnable]):
        expected = len(group) * len(SCAN_BACKENDS) * len(PASSES)
        got, why = runner.run("scan", {"shapes": group, "repeat": settings["scan_repeat"],
                                       "budget": settings["scan_budget"]}, expected)
        seen = {(f["shape"], f["backend"], f["pass"]) for f in got}
        for s in group:
            for be in SCAN_BACKENDS:
                for p in PASSES:
                    if (s["name"], be, p) not in seen:
                        got.append({"shape": s["name"], "backend": be, "pass": p,
                                    **{k: s[k] for k in ("batch", "dim", "state", "length")}, "error": why})
        for f in got:
            log.info("scan %s %s %s: %s", f["shape"], f["backend"], f["pass"], _figure_text(f))
        figures += got
    for s in shapes:
        if "error" in s:
            for be in SCAN_BACKENDS:
                for p in PASSES:
                    figures.append({"shape": s["name"], "backend": be, "pass": p, "length": None,
                                    "error": f"no shape: {s['error']}"})
    return {"backends": list(SCAN_BACKENDS), "passes": list(PASSES), "shapes": shapes, "network_shapes": records,
            "figures": figures,
            "note": "network shapes are benchmarked in bench.scan.measure's layout (one B/C group, no z, "
                    "softplus + delta_bias + D); network_groups / network_z give the network's own"}


def _train_section(runner: _Runner, cases: list[dict], settings: dict, isolate: bool, amp: str) -> dict:
    figures = []
    for group in ([[c] for c in cases] if isolate else [cases]):
        got, why = runner.run("train", {"cases": group, "amp": amp, "warmup": settings["warmup"],
                                        "steps": settings["steps"], "budget": settings["step_budget"]}, len(group))
        done = {f["name"] for f in got}
        got += [{k: c[k] for k in ("name", "role", "model", "dataset", "arch", "img_size", "batch")} | {"error": why}
                for c in group if c["name"] not in done]
        for f in got:
            log.info("train %s: %s", f["name"], _figure_text(f))
        figures += got
    return {"amp": amp, "warmup": settings["warmup"], "steps": settings["steps"], "figures": figures}


def _figure_text(f: dict) -> str:
    if "error" in f or "skipped" in f:
        return f"{'error' if 'error' in f else 'skipped'}: {f.get('error') or f.get('skipped')}"
    if "median_seconds" in f and "first_step_seconds" in f:
        return (f"{1e3 * f['median_seconds']:.1f} ms median, first {f['first_step_seconds']:.2f} s, "
                f"peak +{f['peak_bytes'] / 2**20:.1f} MiB, scan {f['scan_backend']}")
    return f"{1e3 * f['seconds']:.2f} ms, peak +{f['peak_bytes'] / 2**20:.1f} MiB"


def pytest_summary(junit: Optional[str], exit_status: Optional[int]) -> dict:
    """Counts and failed tests of a pytest JUnit XML report (``pytest --junitxml``)."""
    if junit is None:
        return {"skipped": "pytest was not run: no --pytest-junit (workflow/scripts/gpu_check.sh runs "
                           "pytest -m gpu and passes its report)", "exit_status": exit_status}
    out: dict = {"junit": str(junit), "exit_status": exit_status}
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError) as err:
        return dict(out, error=f"no readable JUnit report ({_error(err)}); pytest exit status {exit_status}")
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                           "message": (bad.get("message") or "").strip()[:300]})
    out.update(tests=counts["tests"], passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
               failed=counts["failures"], errors=counts["errors"], skipped=counts["skipped"],
               seconds=sum(float(s.get("time", 0)) for s in suites), failed_tests=failed[:50])
    if exit_status not in (None, 0):
        out["error"] = f"pytest exit status {exit_status}: {counts['failures']} failed, {counts['errors']} errors"
    return out


def _find(figures: list[dict], **keys) -> Optional[dict]:
    return next((f for f in figures if all(f.get(k) == v for k, v in keys.items())), None)


def _why(f: Optional[dict], what: str) -> Optional[str]:
    if f is None:
        return f"{what}: not measured"
    if "error" in f or "skipped" in f:
        return f"{what}: {f.get('error') or f.get('skipped')}"
    return None


def targets(scan: Optional[dict], train: Optional[dict], lengths: tuple[int, int], quick: bool) -> list[dict]:
    """Issue 12's targets from the figures: value, target and ``met`` (None in quick mode or when unmeasured)."""
    out = []
    short, long_ = lengths
    figs = scan["figures"] if scan else []

    def fixed(backend: str, length: int) -> Optional[dict]:
        name = _fixed_shapes(quick)[[*lengths].index(length)]["name"]
        return _find(figs, shape=name, backend=backend, **{"pass": "fwdbwd"})

    torch_f, tri_s, tri_l = fixed("torch", short), fixed("triton", short), fixed("triton", long_)
    t = {"name": f"triton fwd+bwd speed-up over torch at L={short}", "target": f">= {SPEEDUP_TARGET:g}"}
    why = _why(torch_f, f"torch fwdbwd L={short}") or _why(tri_s, f"triton fwdbwd L={short}")
    if why:
        t["error"] = why
    else:
        t["value"] = torch_f["seconds"] / tri_s["seconds"]
        t["met"] = None if quick else t["value"] >= SPEEDUP_TARGET
    out.append(t)
    ratio = long_ / short
    t = {"name": f"triton fwd+bwd peak memory at L={long_} / at L={short}",
         "target": f"~{ratio:g} (linear; within {MEMORY_TOLERANCE:.0%})"}
    why = _why(tri_l, f"triton fwdbwd L={long_}") or _why(tri_s, f"triton fwdbwd L={short}")
    if why:
        t["error"] = why
    elif not tri_s["peak_bytes"]:
        t["error"] = f"triton fwdbwd L={short}: peak memory 0, no ratio"
    else:
        t["value"] = tri_l["peak_bytes"] / tri_s["peak_bytes"]
        t["met"] = None if quick else abs(t["value"] / ratio - 1) <= MEMORY_TOLERANCE
    out.append(t)
    step = next((f for f in (train or {}).get("figures", []) if f["role"] == "paper" and f["dataset"] == "endoscopy"
                 and f["batch"] == 1), None)
    t = {"name": f"{step['arch'] if step else 'logvmamba_swin_umamba'} training step, "
                 f"{'x'.join(map(str, step['img_size'])) if step else '384x640'} batch 1, "
                 f"{train['amp'] if train else 'bfloat16'}: median seconds", "target": f"<= {STEP_TARGET_S:g}"}
    why = _why(step, "training step")
    if why:
        t["error"] = why
    else:
        t["value"] = step["median_seconds"]
        t["met"] = None if quick else t["value"] <= STEP_TARGET_S
    out.append(t)
    if quick:
        for t in out:
            t["note"] = "quick mode: not the target's shapes or device, so not judged"
    return out


def default_out(device_name: str) -> Path:
    """``results/reference/gpu/<device>_gpu_check.json`` of a full run ("NVIDIA H200" -> ``h200``)."""
    name = re.sub(r"^(nvidia|amd|intel\(r\))\s+", "", device_name.strip(), flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"
    return REFERENCE_DIR / f"{slug}_gpu_check.json"


def _summary(result: dict) -> str:
    lines = [f"device check ({'quick' if result['config']['quick'] else 'full'}) on "
             f"{result['provenance'].get('gpu') or result['provenance'].get('cpu')}, torch "
             f"{result['provenance'].get('torch')}, triton {result['provenance'].get('triton')}, "
             f"commit {result['provenance'].get('git_commit')}"]
    p = result["pytest"]
    lines.append("pytest: " + (f"{p['passed']} passed, {p['failed']} failed, {p['errors']} errors, "
                               f"{p['skipped']} skipped (exit status {p['exit_status']})" if "tests" in p
                               else p.get("error") or p.get("skipped")))
    if "scan" in result:
        lines += ["", f"{'scan shape':<58} {'backend':<7} {'pass':<6} {'ms':>9} {'peak MiB':>9}"]
        for f in result["scan"]["figures"]:
            ok = "seconds" in f
            cells = (f"{1e3 * f['seconds']:>9.2f} {f['peak_bytes'] / 2**20:>9.1f}" if ok
                     else ("error: " if "error" in f else "skipped: ") + str(f.get("error") or f.get("skipped"))[:70])
            lines.append(f"{f['shape']:<58} {f['backend']:<7} {f['pass']:<6} {cells}")
    if "train" in result:
        lines += ["", f"{'training step (' + result['train']['amp'] + ')':<52} {'median s':>9} {'first s':>8} "
                      f"{'peak MiB':>9} scan"]
        for f in result["train"]["figures"]:
            if "median_seconds" in f:
                lines.append(f"{f['name']:<52} {f['median_seconds']:>9.3f} {f['first_step_seconds']:>8.2f} "
                             f"{f['peak_bytes'] / 2**20:>9.1f} {f['scan_backend']}")
            else:
                lines.append(f"{f['name']:<52} error: {str(f.get('error'))[:80]}")
    if result.get("targets"):
        lines += ["", "targets:"]
        for t in result["targets"]:
            state = t.get("error") or (f"{t['value']:.3g} ({'met' if t['met'] else 'NOT met' if t['met'] is False else 'not judged'})")
            lines.append(f"  {t['name']} (target {t['target']}): {state}")
    return "\n".join(lines)


def _errors(result: dict) -> int:
    n = int("error" in result["pytest"])
    for section in ("scan", "train"):
        n += sum("error" in f for f in result.get(section, {}).get("figures", []))
    return n


def main(argv: Optional[list[str]] = None) -> int:
    """Runs the check, writes the JSON, prints the summary; 1 when a figure or pytest failed."""
    parser = argparse.ArgumentParser(prog="python -m logvmamba.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="small shapes and _test networks (CI, about a minute)")
    parser.add_argument("--out", default=None,
                        help=f"JSON to write (default: {REFERENCE_DIR}/<device>_gpu_check.json; required with --quick)")
    parser.add_argument("--pytest-junit", default=None, help="JUnit XML of the pytest -m gpu run to record")
    parser.add_argument("--pytest-exit-status", type=int, default=None, help="that run's exit status")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for all figures; what would start later is recorded as skipped "
                             f"(default {SETTINGS['full']['time_budget']:g}, --quick {SETTINGS['quick']['time_budget']:g})")
    parser.add_argument("--sections", nargs="*", default=["scan", "train"], choices=["scan", "train"],
                        help="what to measure besides provenance and pytest (none: only those)")
    parser.add_argument("--amp", default="bfloat16", choices=["bfloat16", "float16", "false"],
                        help="autocast of the training steps")
    parser.add_argument("--config", default=None, help="experiment config (default: the checkout's config/paper.yaml)")
    parser.add_argument("--record-path", default=None, help="also write the JSON's path to this file (for wrappers)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        _worker(json.loads(args.worker))
        return 0
    if args.quick and not args.out:
        parser.error("--quick needs --out (quick figures never go under results/reference/gpu/)")
    if args.quick and Path(args.out).resolve().is_relative_to(REFERENCE_DIR.resolve()):
        parser.error(f"--quick must not write under {REFERENCE_DIR}/")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    t_start = time.monotonic()

    import torch

    from logvmamba.io import atomic_write_text
    from logvmamba.profiling import provenance
    from logvmamba.provenance import load_average

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = dict(SETTINGS["quick" if args.quick else "full"], quick=args.quick)
    budget = args.time_budget if args.time_budget is not None else settings["time_budget"]
    threads = len(os.sched_getaffinity(0))
    amp = False if args.amp == "false" else args.amp
    isolate = not args.quick
    info = provenance(device, threads)
    out_path = Path(args.out) if args.out else default_out(info.get("gpu") or info.get("cpu") or device)
    log.info("device check on %s (%s), %s, time budget %g s, JSON to %s", device, info.get("gpu") or info["cpu"],
             "quick" if args.quick else "full", budget, out_path)

    result: dict = {"schema": SCHEMA, "provenance": info,
                    "config": {"device": device, "quick": args.quick, "sections": args.sections, "amp": args.amp,
                               "time_budget_s": budget, "threads": threads, "isolated_workers": isolate,
                               **{k: v for k, v in settings.items() if k not in ("quick", "time_budget")}}}
    result["pytest"] = pytest_summary(args.pytest_junit, args.pytest_exit_status)
    log.info("pytest: %s", _figure_text(result["pytest"]) if "tests" not in result["pytest"] else
             f"{result['pytest']['passed']} passed, {result['pytest']['failed']} failed, "
             f"{result['pytest']['skipped']} skipped")
    runner = _Runner(device, threads, t_start + budget, settings["worker_caps"], budget)
    cases: list[dict] = []
    if args.sections:
        try:
            cases = train_cases(_config(args.config, args.quick), args.quick)
        except Exception as err:  # noqa: BLE001 - no cases: every section says why
            result["cases_error"] = _error(err)
            log.error("no cases: %s", result["cases_error"])
    if "scan" in args.sections:
        result["scan"] = _scan_section(runner, cases, settings, isolate)
    if "train" in args.sections:
        result["train"] = _train_section(runner, cases, settings, isolate, amp)
    result["targets"] = targets(result.get("scan"), result.get("train"),
                                QUICK_LENGTHS if args.quick else LENGTHS, args.quick)
    info["load_average_end"] = load_average()
    info["elapsed_seconds"] = round(time.monotonic() - t_start, 1)
    result["errors"] = _errors(result)
    atomic_write_text(out_path, json.dumps(result, indent=1) + "\n")
    if args.record_path:
        atomic_write_text(args.record_path, str(out_path) + "\n")
    print(_summary(result))
    print(f"\n{result['errors']} error(s); {info['elapsed_seconds']} s; JSON written to {out_path}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
