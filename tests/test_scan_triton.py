"""The "triton" scan backend: lazy import, dispatch rules, the kernel's arithmetic.

Without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``,
numpy on the CPU), in a subprocess so the setting stays out of this one.
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from test_scan import assert_close, make_inputs, outputs_and_grads, run_scan

from logvmamba.ops import BackendUnavailableError, available_backends, get_backend, resolve_backend, scan_backend

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@pytest.fixture
def gpu_without_mamba_ssm(monkeypatch):
    """Pretends to be a CUDA machine with triton and without mamba-ssm (and "auto" really automatic)."""
    monkeypatch.setattr(get_backend("cuda"), "unavailable_reason", lambda u=None: "mamba_ssm cannot be imported")
    monkeypatch.setattr(get_backend("triton"), "unavailable_reason", lambda u=None: None)
    monkeypatch.setattr(get_backend("fused"), "unavailable_reason", lambda u=None: "CPU only")
    with scan_backend("auto"):
        yield


def test_import_does_not_pull_in_triton():
    code = (
        "import sys, torch\n"
        "from logvmamba.ops import selective_scan, available_backends\n"
        "u = torch.randn(1, 2, 3)\n"
        "selective_scan(u, u.abs(), -torch.ones(2, 2), torch.randn(1, 2, 3), torch.randn(1, 2, 3))\n"
        "available_backends()\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_triton_backend_raises_clearly_without_cuda():
    x = make_inputs(L=5)
    assert "triton" not in available_backends(x["u"])
    with pytest.raises(BackendUnavailableError, match="'triton' is unavailable: CUDA"):
        run_scan(x, "triton", False, False)


def test_auto_prefers_mamba_ssm_then_triton_with_and_without_gradients(gpu_without_mamba_ssm, monkeypatch):
    u = torch.empty(1, 2, 3)
    assert resolve_backend("auto", u).name == "triton"
    assert resolve_backend("auto", u, requires_grad=True).name == "triton"
    monkeypatch.setattr(get_backend("cuda"), "unavailable_reason", lambda u=None: None)
    assert resolve_backend("auto", u).name == "cuda"
    assert resolve_backend("auto", u, requires_grad=True).name == "cuda"


def test_selective_scan_routes_training_to_triton(gpu_without_mamba_ssm, monkeypatch):
    calls = []
    triton_be = get_backend("triton")
    torch_be = get_backend("torch")
    monkeypatch.setattr(triton_be, "forward", lambda inputs, sp: calls.append("fwd") or torch_be.forward(inputs, sp))
    monkeypatch.setattr(triton_be, "backward", lambda *a: calls.append("bwd") or torch_be.backward(*a))
    x = make_inputs(L=9)
    with torch.no_grad():
        run_scan(x, "auto", True, False)
    assert calls == ["fwd"]
    y = run_scan(x, "auto", True, False)  # inputs require grad: triton still runs it
    y.sum().backward()
    assert calls == ["fwd", "fwd", "bwd"] and x["u"].grad is not None


def test_inference_only_backend_is_skipped_for_gradients(gpu_without_mamba_ssm, monkeypatch):
    # The mechanism stays for registered backends without a backward.
    monkeypatch.setattr(get_backend("triton"), "supports_grad", False)
    u = torch.empty(1, 2, 3)
    assert resolve_backend("auto", u).name == "triton"
    assert resolve_backend("auto", u, requires_grad=True).name == "torch"
    x = make_inputs(L=5)
    with pytest.raises(BackendUnavailableError, match="inference-only"):
        run_scan(x, "triton", True, False)
    with scan_backend("triton"), pytest.raises(BackendUnavailableError, match="inference-only"):
        run_scan(x, "auto", True, False)


# Runs in a subprocess under TRITON_INTERPRET=1: the kernels against "ref",
# through selective_scan and its autograd Function (the availability check,
# which wants CUDA, is switched off). Chunks of 16 steps, so L = 37 ends in a
# partial chunk and L = 130 crosses eight chunk boundaries.
INTERPRETER_CHECK = """
import itertools, sys, torch
sys.path.insert(0, {tests!r})
from test_scan import OPTIONS, assert_close, make_inputs, outputs_and_grads
from logvmamba.ops import get_backend
be = get_backend("triton")
be.unavailable_reason = lambda u=None: None
be.block_l = 16
grid = {grid}
for dtype, L, layout, (with_D, with_z, with_bias, softplus), last in grid:
    dtype = getattr(torch, dtype)
    rel = 1e-10 if dtype == torch.float64 else 1e-4
    x = make_inputs(batch=2, d=4, L=L, n=5, groups=2 if layout == "g2" else 1, bc_3d=layout == "3d",
                    dtype=dtype, with_D=with_D, with_z=with_z, with_bias=with_bias)
    outs_ref, grads_ref = outputs_and_grads(x, "ref", softplus, last)
    outs, grads = outputs_and_grads(x, "triton", softplus, last)
    what = f"{{dtype}} L={{L}} {{layout}} D/z/bias/softplus={{with_D, with_z, with_bias, softplus}} last={{last}}"
    for o, o_ref in zip(outs, outs_ref):
        assert_close(o, o_ref, rel, "output " + what)
    assert grads.keys() == grads_ref.keys(), what
    for k in grads_ref:
        assert_close(grads[k], grads_ref[k], rel, f"grad of {{k}} " + what)
# What the backward keeps: the inputs and one state per chunk, nothing of (batch, d, L, n)
saved = []
with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
    x = make_inputs(batch=2, d=4, L=130, n=5, dtype=torch.float32)
    outputs_and_grads(x, "triton", True, True)
inputs = [tuple(v.shape) for v in x.values() if v is not None]
assert sorted(saved) == sorted(inputs + [(2, 4, 9, 5)]), saved
print("ok", len(grid))
"""

# A few cases for the default test run: every option on and off, all three
# layouts, L = 1, a partial chunk and several chunks, both dtypes, last state.
QUICK_GRID = [
    ("float32", 37, "g2", (True, True, True, True), True),
    ("float32", 130, "3d", (False, False, False, False), False),
    ("float64", 1, "g1", (True, False, True, True), True),
    ("float64", 37, "3d", (False, True, False, True), False),
]
FULL_GRID = [
    (dtype, L, layout, options, last)
    for dtype in ("float32", "float64")
    for L in ((1, 37, 130) if dtype == "float32" else (37,))
    for layout in ("3d", "g1", "g2")
    for options in [(False, False, False, False), (True, True, True, True), (True, False, True, True),
                    (False, True, False, True), (True, True, False, False)]
    for last in ((False, True) if L == 37 else (L == 130,))
]


def _interpret(grid):
    tests = os.path.dirname(os.path.abspath(__file__))
    code = INTERPRETER_CHECK.format(tests=tests, grid=repr(grid))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith(f"ok {len(grid)}")


@needs_triton
def test_triton_forward_and_gradients_match_ref_in_interpreter():
    _interpret(QUICK_GRID)


@pytest.mark.slow
@needs_triton
def test_triton_forward_and_gradients_match_ref_in_interpreter_full_grid():
    _interpret(FULL_GRID)


HALF_CHECK = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_scan import make_inputs, outputs_and_grads
from logvmamba.ops import get_backend
get_backend("triton").unavailable_reason = lambda u=None: None
for half in (torch.bfloat16, torch.float16):
    x = make_inputs(batch=1, d=4, L=40, n=4, dtype=torch.float32)
    # as under autocast: activations in half precision, parameters in float32
    low = {{k: (v.detach().to(half).requires_grad_() if k in ("u", "delta", "B", "C", "z") else v)
           for k, v in x.items()}}
    exact = {{k: v.detach().double().requires_grad_() for k, v in low.items()}}
    outs, grads = outputs_and_grads(low, "triton", True, False)
    outs_ref, grads_ref = outputs_and_grads(exact, "ref", True, False)
    assert outs[0].dtype == half
    # float32 inside: only the final rounding of y and of each gradient to its
    # input's dtype (8 bits of mantissa for bfloat16, 11 for float16) remains
    tol = 2.0 ** -7 if half == torch.bfloat16 else 2.0 ** -10
    err = (outs[0].double() - outs_ref[0]).abs().max() / outs_ref[0].abs().max()
    assert err < tol, (half, "y", float(err))
    for k, g in grads.items():
        assert g.dtype == low[k].dtype, k
        err = (g.double() - grads_ref[k]).abs().max() / grads_ref[k].abs().max()
        assert err < tol, (half, k, float(err))
print("ok")
"""


@needs_triton
def test_triton_half_precision_inputs_are_scanned_in_float32():
    tests = os.path.dirname(os.path.abspath(__file__))
    res = subprocess.run([sys.executable, "-c", HALF_CHECK.format(tests=tests)], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")


@needs_triton
@pytest.mark.parametrize("kernel", ["scan_fwd", "scan_bwd"])
@pytest.mark.parametrize("fp64", [False, True])
def test_triton_kernels_compile_for_a_gpu_without_one(kernel, fp64):
    # Triton's whole compiler (Triton IR -> LLVM -> PTX -> cubin with its own
    # ptxas) runs on any machine; only launching a kernel needs a GPU. sm_80
    # (A100) and sm_90 (H100 / H200): the atomics and the reverse scan of the
    # backward must lower on both.
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        pytest.skip(f"this triton has no offline compile API ({e})")
    from logvmamba.ops import _triton_kernels

    fn = getattr(_triton_kernels, kernel)
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, FP64=fp64, BLOCK_N=16, BLOCK_L=64)
    flags.update(SAVE_STATES=True) if kernel == "scan_fwd" else flags.update(HAS_GY=True, HAS_GLAST=True)
    names = [p.name for p in fn.params]
    assert sorted(p.name for p in fn.params if p.is_constexpr) == sorted(flags)
    ptr = "*fp64" if fp64 else "*fp32"
    signature = {k: "constexpr" if k in flags else ptr if k.endswith("_ptr") else "i32" for k in names}
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in flags.items()})
    for arch in (80, 90):
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32))
        assert "ptx" in compiled.asm and "cubin" in compiled.asm


@pytest.mark.gpu
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("L", [1, 300, 4097])
@pytest.mark.parametrize("layout", ["3d", "g2"])
def test_triton_matches_torch_on_gpu(L, layout):
    x = make_inputs(batch=2, d=8, L=L, n=16, groups=2 if layout == "g2" else 1, bc_3d=layout == "3d",
                    dtype=torch.float32)
    gpu = {k: (v.detach().cuda().requires_grad_() if v is not None else None) for k, v in x.items()}
    for last in (False, True):
        outs, grads = outputs_and_grads(gpu, "triton", True, last)
        outs_ref, grads_ref = outputs_and_grads(gpu, "torch", True, last)
        for o, o_ref in zip(outs, outs_ref):
            assert_close(o, o_ref, 1e-4, f"output last={last}")
        for k in grads_ref:
            assert_close(grads[k], grads_ref[k], 1e-4, f"grad of {k} last={last}")
    half = {k: (v.detach().half().requires_grad_() if v is not None else None) for k, v in gpu.items()}
    assert resolve_backend("auto", half["u"], requires_grad=True).name in ("cuda", "triton")
    outs, grads = outputs_and_grads(half, "auto", True, False)
    assert outs[0].dtype == torch.float16 and all(torch.isfinite(g).all() for g in grads.values())
