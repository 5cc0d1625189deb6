"""Selective scan: backends agree, the recurrence is right, FLOPs are counted."""

import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from logvmamba.ops import (
    BackendUnavailableError,
    available_backends,
    count_flops,
    flop_handles,
    get_backend,
    resolve_backend,
    scan_backend,
    selective_scan,
    selective_scan_flops,
)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# (with D, with z, with delta_bias, delta_softplus)
OPTIONS = [
    (False, False, False, False),
    (True, True, True, True),
    (True, False, True, True),
    (False, True, False, True),
    (True, True, False, False),
]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 16 steps, so L = 37 and 130 cross several chunk boundaries."""
    monkeypatch.setattr(get_backend("torch"), "chunk_size", 16)


def make_inputs(batch=2, d=4, L=37, n=3, groups=1, bc_3d=False, with_D=True, with_z=True,
                with_bias=True, dtype=torch.float64, seed=0, delta_scale=0.5):
    """Scan inputs as a dict; absent optional ones are None. All require grad."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    bc_shape = (batch, n, L) if bc_3d else (batch, groups, n, L)
    x = {
        "u": rnd(batch, d, L),
        "delta": rnd(batch, d, L, scale=delta_scale),
        "A": -(torch.rand(d, n, generator=g, dtype=torch.float64) + 0.2).to(dtype),
        "B": rnd(*bc_shape),
        "C": rnd(*bc_shape),
        "D": rnd(d) if with_D else None,
        "z": rnd(batch, d, L) if with_z else None,
        "delta_bias": rnd(d, scale=0.3) if with_bias else None,
    }
    return {k: (v.requires_grad_() if v is not None else None) for k, v in x.items()}


def run_scan(x, backend, softplus, return_last_state):
    return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                          delta_bias=x["delta_bias"], delta_softplus=softplus,
                          return_last_state=return_last_state, backend=backend)


def outputs_and_grads(x, backend, softplus, return_last_state, seed=1):
    """Outputs, then gradients of a random projection w.r.t. every given input."""
    out = run_scan(x, backend, softplus, return_last_state)
    outs = list(out) if return_last_state else [out]
    g = torch.Generator().manual_seed(seed)
    cot = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs]
    wrt = [x[k] for k in NAMES if x[k] is not None]
    grads = torch.autograd.grad(outs, wrt, cot)
    return outs, dict(zip([k for k in NAMES if x[k] is not None], grads))


def assert_close(actual, expected, rel, what=""):
    assert actual.dtype == expected.dtype, what
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1e-30), msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("return_last_state", [False, True])
@pytest.mark.parametrize("L", [1, 37, 130])
@pytest.mark.parametrize("layout", ["3d", "g1", "g2"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_torch_matches_ref(small_chunks, dtype, rel, options, layout, L, return_last_state):
    with_D, with_z, with_bias, softplus = options
    x = make_inputs(L=L, groups=2 if layout == "g2" else 1, bc_3d=layout == "3d", with_D=with_D,
                    with_z=with_z, with_bias=with_bias, dtype=dtype)
    ref_out, ref_grads = outputs_and_grads(x, "ref", softplus, return_last_state)
    out, grads = outputs_and_grads(x, "torch", softplus, return_last_state)
    for i, (a, e) in enumerate(zip(out, ref_out)):
        assert_close(a, e, rel, f"output {i}")
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert grads[k].shape == x[k].shape
        assert_close(grads[k], ref_grads[k], rel, f"grad {k}")


def test_torch_default_chunking_matches_ref():
    x = make_inputs(batch=1, d=6, L=300, n=4, groups=3)
    ref_out, ref_grads = outputs_and_grads(x, "ref", True, True)
    out, grads = outputs_and_grads(x, "torch", True, True)
    for a, e in zip(out, ref_out):
        assert_close(a, e, 1e-10)
    for k in grads:
        assert_close(grads[k], ref_grads[k], 1e-10, k)


def test_ref_matches_hand_unrolled_recurrence():
    x = make_inputs(batch=1, d=2, L=2, n=2, groups=2)
    y, last = run_scan(x, "ref", True, True)
    u, dl, A, B, C, D, z, bias = (x[k].detach() for k in NAMES)
    for c in range(2):  # channel c uses group c (d // groups == 1)
        h = torch.zeros(2, dtype=torch.float64)
        for t in range(2):
            dt = F.softplus(dl[0, c, t] + bias[c])
            h = torch.exp(dt * A[c]) * h + dt * B[0, c, :, t] * u[0, c, t]
            yt = (C[0, c, :, t] * h).sum() + D[c] * u[0, c, t]
            yt = yt * z[0, c, t] * torch.sigmoid(z[0, c, t])
            torch.testing.assert_close(y[0, c, t], yt, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(last[0, c], h, rtol=1e-12, atol=1e-12)


def test_torch_is_stable_for_long_sequences_and_large_steps():
    # The summed log-decay reaches about -1e5; exp of minus that overflows.
    x = make_inputs(batch=1, d=4, L=2048, n=16, dtype=torch.float32, with_z=False, delta_scale=2.0)
    with torch.no_grad():
        x["delta_bias"].fill_(4.0)
        x["A"].copy_(-torch.arange(1, 17, dtype=torch.float32).repeat(4, 1))
    ref_out, ref_grads = outputs_and_grads(x, "ref", True, True)
    out, grads = outputs_and_grads(x, "torch", True, True)
    for a, e in zip(out, ref_out):
        assert torch.isfinite(a).all()
        assert_close(a, e, 1e-4)
    for k in grads:
        assert torch.isfinite(grads[k]).all(), k
        assert_close(grads[k], ref_grads[k], 1e-4, k)


@pytest.mark.parametrize("backend", ["ref", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_computed_in_float32(backend, dtype):
    x = make_inputs(L=20, dtype=dtype)
    x32 = {k: (v.detach().float().requires_grad_() if v is not None else None) for k, v in x.items()}
    (y, last), grads = outputs_and_grads(x, backend, True, True)
    (y32, _), _ = outputs_and_grads(x32, "ref", True, True)
    assert y.dtype == dtype and last.dtype == torch.float32
    assert all(grads[k].dtype == dtype for k in grads)
    torch.testing.assert_close(y, y32.to(dtype))


def test_gradients_only_for_inputs_that_need_them():
    x = make_inputs(L=33)
    plain = {k: (v.detach() if v is not None else None) for k, v in x.items()}
    plain["u"].requires_grad_()
    for backend in ("ref", "torch"):
        (gu,) = torch.autograd.grad(run_scan(plain, backend, True, False).sum(), plain["u"])
        expected = torch.autograd.grad(run_scan(x, "ref", True, False).sum(), x["u"])[0]
        assert_close(gu, expected, 1e-10, backend)


def test_scan_backend_context_overrides_auto(monkeypatch):
    x = make_inputs(L=5)
    calls = []
    ref = get_backend("ref")
    original = ref.forward
    monkeypatch.setattr(ref, "forward", lambda *a: calls.append(1) or original(*a))
    with scan_backend("ref"):
        assert resolve_backend("auto", x["u"]).name == "ref"
        run_scan(x, "auto", False, False)
        # An explicit backend is not overridden.
        assert resolve_backend("torch", x["u"]).name == "torch"
    assert calls == [1]
    with scan_backend("torch"):
        assert resolve_backend("auto", x["u"]).name == "torch"
    with pytest.raises(ValueError, match="nonsense"):
        with scan_backend("nonsense"):
            pass
    with scan_backend("auto"):
        usable = available_backends(x["u"])
        expected = next(b for b in ("cuda", "fused", "torch") if b in usable)
        assert resolve_backend("auto", x["u"]).name == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_backend_raises_clearly_without_cuda():
    x = make_inputs(L=5)
    with pytest.raises(BackendUnavailableError, match="'cuda' is unavailable: CUDA"):
        run_scan(x, "cuda", False, False)
    with scan_backend("cuda"), pytest.raises(BackendUnavailableError, match="cuda"):
        run_scan(x, "auto", False, False)
    assert {"ref", "torch"} <= set(available_backends()) and "cuda" not in available_backends()


def test_bad_arguments_raise():
    x = make_inputs(L=5)
    with pytest.raises(ValueError, match="unknown selective-scan backend 'fast'"):
        run_scan(x, "fast", False, False)
    x["B"] = x["B"][..., :4]
    with pytest.raises(ValueError, match="B must be"):
        run_scan(x, "torch", False, False)
    x = make_inputs(d=4, L=5, groups=3)
    with pytest.raises(ValueError, match="groups dividing d=4"):
        run_scan(x, "torch", False, False)
    x = make_inputs(d=4, L=5, groups=2)
    x["C"] = x["C"][:, :1]
    with pytest.raises(ValueError, match="one number of groups"):
        run_scan(x, "torch", False, False)


def test_import_does_not_pull_in_mamba_ssm():
    code = (
        "import sys, torch\n"
        "from logvmamba.ops import selective_scan, flop_handles\n"
        "u = torch.randn(1, 2, 3)\n"
        "selective_scan(u, u.abs(), -torch.ones(2, 2), torch.randn(1, 2, 3), torch.randn(1, 2, 3))\n"
        "flop_handles()\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mamba_ssm', 'causal_conv1d', 'selective_scan_cuda')]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr


class ScanModule(torch.nn.Module):
    """Tiny model whose only op is a scan (plus its parameters)."""

    def __init__(self, d, n, with_D, with_z, backend, return_last_state=False):
        super().__init__()
        self.A = torch.nn.Parameter(-torch.rand(d, n))
        self.D = torch.nn.Parameter(torch.ones(d)) if with_D else None
        self.bias = torch.nn.Parameter(torch.zeros(d))
        self.with_z, self.backend, self.return_last_state = with_z, backend, return_last_state

    def forward(self, u, delta, B, C):
        z = u if self.with_z else None
        out = selective_scan(u, delta, self.A, B, C, D=self.D, z=z, delta_bias=self.bias,
                             delta_softplus=True, return_last_state=self.return_last_state,
                             backend=self.backend)
        return out[0] if self.return_last_state else out


@pytest.mark.parametrize("backend", ["ref", "torch"])
@pytest.mark.parametrize("with_D", [False, True])
@pytest.mark.parametrize("with_z", [False, True])
@pytest.mark.parametrize("layout", ["3d", "g2"])
def test_fvcore_counts_one_scan(backend, with_D, with_z, layout):
    b, d, L, n = 2, 6, 11, 4
    bc = (b, n, L) if layout == "3d" else (b, 2, n, L)
    inputs = (torch.randn(b, d, L), torch.randn(b, d, L), torch.randn(*bc), torch.randn(*bc))
    model = ScanModule(d, n, with_D, with_z, backend, return_last_state=layout == "g2")
    total, unsupported = count_flops(model, inputs)
    expected = 9 * b * L * d * n + (b * d * L if with_D else 0) + (b * d * L if with_z else 0)
    assert expected == selective_scan_flops(b, L, d, n, with_D=with_D, with_z=with_z)
    assert total == expected
    assert unsupported == Counter()


class SelectiveScanMamba(torch.autograd.Function):
    """Stand-in with VMamba's argument order (u, delta, A, B, C, D, delta_bias, softplus)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
        return u.clone()

    @staticmethod
    def backward(ctx, g):
        return (g,) + (None,) * 7


@pytest.mark.parametrize("with_D", [False, True])
def test_fvcore_handles_vmamba_layout(with_D):
    class M(torch.nn.Module):
        def forward(self, u, A, B, D):
            return SelectiveScanMamba.apply(u, u, A, B, B, D if with_D else None, D, True)

    b, d, L, n = 1, 4, 7, 3
    inputs = (torch.randn(b, d, L), torch.randn(d, n), torch.randn(b, 1, n, L), torch.randn(d))
    total, unsupported = count_flops(M(), inputs)
    assert total == 9 * b * L * d * n + (b * d * L if with_D else 0)
    assert not unsupported
    assert "prim::PythonOp.SelectiveScanMamba" in flop_handles()
    assert "prim::PythonOp.SelectiveScanFn" in flop_handles()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_gpu_backends_match_ref(backend):
    if backend not in available_backends(torch.empty(0, device="cuda")):
        pytest.skip(f"{backend} backend unavailable on this machine")
    cpu = make_inputs(batch=2, d=8, L=300, n=4, groups=2, dtype=torch.float32)
    gpu = {k: (v.detach().cuda().requires_grad_() if v is not None else None) for k, v in cpu.items()}
    ref_out, ref_grads = outputs_and_grads(cpu, "ref", True, True)
    out, grads = outputs_and_grads(gpu, backend, True, True)
    for a, e in zip(out, ref_out):
        assert_close(a.cpu(), e, 1e-4)
    for k in grads:
        assert_close(grads[k].cpu(), ref_grads[k], 1e-4, k)


def test_non_contiguous_inputs(small_chunks):
    # As in a Mamba mixer: u, B and C come out of projections as strided views.
    x = make_inputs(L=40, groups=2)
    strided = {k: (v.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
                   if v is not None and v.dim() >= 3 else v) for k, v in x.items()}
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    ref_out, ref_grads = outputs_and_grads(x, "ref", True, True)
    out, grads = outputs_and_grads(strided, "torch", True, True)
    for a, e in zip(out, ref_out):
        assert_close(a, e, 1e-10)
    for k in grads:
        assert_close(grads[k], ref_grads[k], 1e-10, k)


@pytest.mark.parametrize("backend", ["ref", "torch", "fused"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_scan_runs_in_float32_under_autocast(backend, half, monkeypatch):
    if backend not in available_backends():
        pytest.skip(f"{backend} cannot run here")
    impl = get_backend(backend)
    seen = []
    for method in ("forward", "backward"):
        def spy(*args, _inner=getattr(impl, method), _method=method):
            seen.append((_method, torch.is_autocast_enabled("cpu")))
            return _inner(*args)
        monkeypatch.setattr(impl, method, spy)
    x = make_inputs(batch=1, d=4, L=40, n=4, dtype=torch.float32)
    # as under autocast: activations in half precision, parameters in float32
    low = {k: (v.detach().to(half).requires_grad_() if k in ("u", "delta", "B", "C", "z") else v)
           for k, v in x.items()}
    with torch.autocast("cpu", dtype=half):
        outs, grads = outputs_and_grads(low, backend, True, False)
    assert seen == [("forward", False), ("backward", False)]
    assert outs[0].dtype == half and all(grads[k].dtype == low[k].dtype for k in grads)
    exact = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in low.items()}
    outs_ref, grads_ref = outputs_and_grads(exact, "ref", True, False)
    # float32 inside: only the rounding of y and of each gradient to its input's dtype remains
    tol = 2.0 ** -7 if half == torch.bfloat16 else 2.0 ** -10
    for got, want in [(outs[0], outs_ref[0])] + [(grads[k], grads_ref[k]) for k in grads]:
        assert (got.double() - want).abs().max() / want.abs().max() < tol
