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


def test_auto_prefers_mamba_ssm_then_triton_for_inference(gpu_without_mamba_ssm, monkeypatch):
    u = torch.empty(1, 2, 3)
    assert resolve_backend("auto", u).name == "triton"
    assert resolve_backend("auto", u, requires_grad=True).name == "torch"
    monkeypatch.setattr(get_backend("cuda"), "unavailable_reason", lambda u=None: None)
    assert resolve_backend("auto", u).name == "cuda"
    assert resolve_backend("auto", u, requires_grad=True).name == "cuda"


def test_selective_scan_routes_by_grad_mode(gpu_without_mamba_ssm, monkeypatch):
    calls = []
    triton_be = get_backend("triton")
    torch_be = get_backend("torch")
    monkeypatch.setattr(triton_be, "forward", lambda inputs, sp: calls.append("triton") or torch_be.forward(inputs, sp))
    x = make_inputs(L=9)
    with torch.no_grad():
        y = run_scan(x, "auto", True, False)
    assert calls == ["triton"] and y.shape == x["u"].shape
    y = run_scan(x, "auto", True, False)  # inputs require grad: torch runs it
    assert calls == ["triton"] and y.requires_grad
    plain = {k: (v.detach() if v is not None else None) for k, v in x.items()}
    run_scan(plain, "auto", True, False)  # nothing requires grad
    assert calls == ["triton", "triton"]


def test_triton_by_name_with_gradients_raises(gpu_without_mamba_ssm, monkeypatch):
    x = make_inputs(L=5)
    with pytest.raises(BackendUnavailableError, match="inference-only"):
        run_scan(x, "triton", True, False)
    with scan_backend("triton"), pytest.raises(BackendUnavailableError, match="inference-only"):
        run_scan(x, "auto", True, False)
    with pytest.raises(RuntimeError, match="no backward"):
        get_backend("triton").backward((), (), True, None, None)


INTERPRETER_CHECK = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_scan import make_inputs, run_scan, assert_close
from logvmamba.ops.triton_scan import triton_selective_scan_forward
cases = [  # dtype, rel, L, n, groups, bc_3d, with D / z / delta_bias / softplus
    (torch.float32, 1e-4, 37, 16, 1, True, True),
    (torch.float32, 1e-4, 1, 3, 2, False, False),
    (torch.float64, 1e-10, 37, 4, 2, False, True),
    (torch.float64, 1e-10, 16, 3, 1, False, False),
]
for dtype, rel, L, n, groups, bc_3d, opt in cases:
    x = make_inputs(batch=1, d=4, L=L, n=n, groups=groups, bc_3d=bc_3d, dtype=dtype,
                    with_D=opt, with_z=opt, with_bias=opt)
    x = {{k: (v.detach() if v is not None else None) for k, v in x.items()}}
    y_ref, last_ref = run_scan(x, "ref", opt, True)
    y, last = triton_selective_scan_forward(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], opt, block_l=16)
    assert_close(y, y_ref, rel, f"y {{dtype}} L={{L}}")
    assert_close(last, last_ref, rel, f"last {{dtype}} L={{L}}")
print("ok")
"""


@needs_triton
def test_triton_kernel_matches_ref_in_interpreter():
    # Tiles of 16 steps: L = 37 carries the state across two tiles and ends in a partial one.
    tests = os.path.dirname(os.path.abspath(__file__))
    res = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK.format(tests=tests)], capture_output=True,
                         text=True, env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")


@needs_triton
@pytest.mark.parametrize("fp64", [False, True])
def test_triton_kernel_compiles_for_a_gpu_without_one(fp64):
    # Triton's whole compiler (Triton IR -> LLVM -> PTX -> cubin with its own
    # ptxas) runs on any machine; only launching the kernel needs a GPU.
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        pytest.skip(f"this triton has no offline compile API ({e})")
    from logvmamba.ops._triton_kernels import scan_fwd

    consts = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, FP64=fp64, BLOCK_N=16, BLOCK_L=128)
    names = [p.name for p in scan_fwd.params]
    assert sorted(p.name for p in scan_fwd.params if p.is_constexpr) == sorted(consts)
    ptr = "*fp64" if fp64 else "*fp32"
    signature = {k: "constexpr" if k in consts else ptr if k.endswith("_ptr") else "i32" for k in names}
    src = ASTSource(fn=scan_fwd, signature=signature, constexprs={(names.index(k),): v for k, v in consts.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 80, 32))
    assert "ptx" in compiled.asm and "cubin" in compiled.asm


@pytest.mark.gpu
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("L", [1, 300, 4097])
@pytest.mark.parametrize("layout", ["3d", "g2"])
def test_triton_matches_torch_on_gpu(L, layout):
    x = make_inputs(batch=2, d=8, L=L, n=16, groups=2 if layout == "g2" else 1, bc_3d=layout == "3d",
                    dtype=torch.float32)
    gpu = {k: (v.detach().cuda() if v is not None else None) for k, v in x.items()}
    with torch.no_grad():
        y, last = run_scan(gpu, "triton", True, True)
        y_ref, last_ref = run_scan(gpu, "torch", True, True)
    assert_close(y, y_ref, 1e-4, "y")
    assert_close(last, last_ref, 1e-4, "last")
    with torch.no_grad():
        half = {k: (v.half() if v is not None else None) for k, v in gpu.items()}
        assert run_scan(half, "auto", True, False).dtype == torch.float16
    grad_in = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in gpu.items()}
    with pytest.raises(BackendUnavailableError, match="inference-only"):
        run_scan(grad_in, "triton", True, False)
    _, grads = outputs_and_grads(grad_in, "auto", True, False)  # auto falls back for training
    assert all(torch.isfinite(g).all() for g in grads.values())
