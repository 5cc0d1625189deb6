"""The "fused" C++ CPU scan: equals "ref" in outputs and every gradient, is cached, falls back."""

import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import torch
from test_scan import NAMES, OPTIONS, ScanModule, assert_close, make_inputs, outputs_and_grads, run_scan

from logvmamba.ops import (
    available_backends,
    count_flops,
    fused,
    get_backend,
    resolve_backend,
    scan_backend,
    selective_scan_flops,
)

pytestmark = pytest.mark.skipif(
    fused._compiler() is None, reason="no C++ compiler: the fused backend cannot be built here")


@pytest.fixture(scope="module", autouse=True)
def built_library():
    """Builds (or loads the cached) kernel once; every test below needs it."""
    assert fused.load_library() is not None, fused.build_info()
    yield


@pytest.fixture
def small_chunks(monkeypatch):
    """Checkpoints every 16 steps, so L = 37 and 130 cross several chunk boundaries."""
    monkeypatch.setattr(get_backend("fused"), "chunk_size", 16)


def check_against_ref(x, softplus, return_last_state, rel, backend="fused"):
    ref_out, ref_grads = outputs_and_grads(x, "ref", softplus, return_last_state)
    out, grads = outputs_and_grads(x, backend, softplus, return_last_state)
    assert len(out) == len(ref_out)
    for i, (a, e) in enumerate(zip(out, ref_out)):
        assert a.shape == e.shape
        assert_close(a, e, rel, f"output {i}")
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert grads[k].shape == x[k].shape, k
        assert_close(grads[k], ref_grads[k], rel, f"grad {k}")


@pytest.mark.parametrize("return_last_state", [False, True])
@pytest.mark.parametrize("L", [1, 37, 130])
@pytest.mark.parametrize("layout", ["3d", "g1", "g2"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fused_matches_ref(small_chunks, dtype, rel, options, layout, L, return_last_state):
    with_D, with_z, with_bias, softplus = options
    x = make_inputs(L=L, groups=2 if layout == "g2" else 1, bc_3d=layout == "3d", with_D=with_D,
                    with_z=with_z, with_bias=with_bias, dtype=dtype)
    check_against_ref(x, softplus, return_last_state, rel)


@pytest.mark.parametrize("n", [3, 4, 8, 16, 32])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fused_state_sizes(small_chunks, n, dtype, rel):
    # 4, 8, 16, 32 (and 64) have compile-time loops; 3 takes the generic path.
    x = make_inputs(batch=2, d=4, L=37, n=n, groups=2, dtype=dtype)
    check_against_ref(x, True, True, rel)


@pytest.mark.parametrize("n", [5, 16])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fused_default_chunks_long_sequence(n, dtype, rel):
    # L = 1000 with the default chunk of 128 steps: 7 full chunks and a partial one.
    x = make_inputs(batch=1, d=6, L=1000, n=n, groups=3, dtype=dtype)
    check_against_ref(x, True, True, rel)


def test_fused_is_stable_for_long_sequences_and_large_steps():
    # Large steps: the decays underflow; nothing may turn into inf or nan.
    x = make_inputs(batch=1, d=4, L=2048, n=16, dtype=torch.float32, with_z=False, delta_scale=2.0)
    with torch.no_grad():
        x["delta_bias"].fill_(4.0)
        x["A"].copy_(-torch.arange(1, 17, dtype=torch.float32).repeat(4, 1))
    out, grads = outputs_and_grads(x, "fused", True, True)
    ref_out, ref_grads = outputs_and_grads(x, "ref", True, True)
    for a, e in zip(out, ref_out):
        assert torch.isfinite(a).all()
        assert_close(a, e, 1e-4)
    for k in grads:
        assert torch.isfinite(grads[k]).all(), k
        assert_close(grads[k], ref_grads[k], 1e-4, k)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch,groups", [(1, 1), (3, 1), (2, 2)])
def test_fused_threads_and_work_split(small_chunks, threads, batch, groups):
    # Fewer (batch, group) pairs than threads: the channels of a pair are cut
    # into slices whose gradients of B and C are summed afterwards.
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = make_inputs(batch=batch, d=6, L=70, n=4, groups=groups, bc_3d=groups == 1)
        check_against_ref(x, True, True, 1e-10)
    finally:
        torch.set_num_threads(old)


def test_fused_gradient_of_last_state_only():
    x = make_inputs(L=50)
    _, last = run_scan(x, "fused", True, True)
    _, last_ref = run_scan(x, "ref", True, True)
    wrt = [x[k] for k in NAMES]
    g = torch.autograd.grad(last.sum(), wrt, allow_unused=True)
    g_ref = torch.autograd.grad(last_ref.sum(), wrt, allow_unused=True)
    for k, a, e, t in zip(NAMES, g, g_ref, wrt):
        # C, D and z do not reach the last state: ref leaves them out, fused gives zeros
        e = torch.zeros_like(t) if e is None else e
        assert_close(a, e, 1e-10, k)


def test_fused_gradients_only_for_inputs_that_need_them():
    x = make_inputs(L=33)
    plain = {k: (v.detach() if v is not None else None) for k, v in x.items()}
    plain["u"].requires_grad_()
    (gu,) = torch.autograd.grad(run_scan(plain, "fused", True, False).sum(), plain["u"])
    expected = torch.autograd.grad(run_scan(x, "ref", True, False).sum(), x["u"])[0]
    assert_close(gu, expected, 1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_low_precision_inputs_are_computed_in_float32(dtype):
    x = make_inputs(L=20, dtype=dtype)
    x32 = {k: (v.detach().float().requires_grad_() if v is not None else None) for k, v in x.items()}
    (y, last), grads = outputs_and_grads(x, "fused", True, True)
    (y32, _), _ = outputs_and_grads(x32, "ref", True, True)
    assert y.dtype == dtype and last.dtype == torch.float32
    assert all(grads[k].dtype == dtype for k in grads)
    torch.testing.assert_close(y, y32.to(dtype))


def test_fused_non_contiguous_inputs(small_chunks):
    x = make_inputs(L=40, groups=2)
    strided = {k: (v.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
                   if v is not None and v.dim() >= 3 else v) for k, v in x.items()}
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    ref_out, ref_grads = outputs_and_grads(x, "ref", True, True)
    out, grads = outputs_and_grads(strided, "fused", True, True)
    for a, e in zip(out, ref_out):
        assert_close(a, e, 1e-10)
    for k in grads:
        assert_close(grads[k], ref_grads[k], 1e-10, k)


def test_fused_saves_no_per_step_states():
    # The backward keeps one state every chunk_size steps, never (batch, d, L, n).
    b, d, L, n = 2, 8, 1024, 16
    x = make_inputs(batch=b, d=d, L=L, n=n, dtype=torch.float32)
    y = run_scan(x, "fused", True, False)
    saved = sum(t.numel() for t in y.grad_fn.saved_tensors)
    inputs = sum(v.numel() for v in x.values() if v is not None)
    chunk = get_backend("fused").chunk_size
    assert chunk >= 16
    assert saved - inputs == b * d * (-(-L // chunk)) * n


def test_auto_picks_fused_on_cpu():
    x = make_inputs(L=5)
    with scan_backend("auto"):
        assert "fused" in available_backends(x["u"])
        assert resolve_backend("auto", x["u"]).name == "fused"
        assert resolve_backend("auto", x["u"], requires_grad=True).name == "fused"
    with scan_backend("torch"):
        assert resolve_backend("auto", x["u"]).name == "torch"


def test_fused_refuses_non_cpu_tensors():
    reason = get_backend("fused").unavailable_reason(torch.empty(0, device="meta"))
    assert reason is not None and "CPU" in reason


@pytest.mark.parametrize("with_D", [False, True])
@pytest.mark.parametrize("with_z", [False, True])
def test_fvcore_counts_one_fused_scan(with_D, with_z):
    b, d, L, n = 2, 6, 11, 4
    inputs = (torch.randn(b, d, L), torch.randn(b, d, L), torch.randn(b, 2, n, L), torch.randn(b, 2, n, L))
    total, unsupported = count_flops(ScanModule(d, n, with_D, with_z, "fused"), inputs)
    assert total == selective_scan_flops(b, L, d, n, with_D=with_D, with_z=with_z)
    assert unsupported == Counter()


def _run_python(code, **env):
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=600)


def test_cached_library_is_loaded_without_a_compiler(tmp_path):
    # Every checkout with the same kernel source shares one build (the cache
    # folder is named by a hash of the source, flags and CPU): a fresh clone
    # elsewhere loads it without compiling, even with no compiler at all.
    clone = tmp_path / "clone"
    shutil.copytree(os.path.dirname(os.path.dirname(fused.__file__)), clone / "logvmamba",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import logvmamba.ops.fused as f\n"
        f"assert f.__file__.startswith({str(clone)!r}), f.__file__\n"
        "info = f.build_info()\n"
        "assert info['reason'] is None and not info['built'], info\n"
        "print(info['library'])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=clone,
                         env={**os.environ, "CXX": "false", "PATH": "/nonexistent", "PYTHONPATH": str(clone)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == fused.build_info()["library"]


def test_build_failure_falls_back_to_torch_with_one_warning(tmp_path):
    code = (
        "import warnings, torch\n"
        "from logvmamba.ops import selective_scan, resolve_backend, BackendUnavailableError\n"
        "u = torch.randn(1, 2, 3)\n"
        "args = (u, u.abs(), -torch.ones(2, 2), torch.randn(1, 2, 3), torch.randn(1, 2, 3))\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    assert resolve_backend('auto', u).name == 'torch'\n"
        "    selective_scan(*args)\n"
        "    selective_scan(*args)\n"
        "msgs = [str(x.message) for x in w if 'fused' in str(x.message)]\n"
        "assert len(msgs) == 1 and 'falling back to the torch backend' in msgs[0], msgs\n"
        "try:\n"
        "    selective_scan(*args, backend='fused')\n"
        "except BackendUnavailableError as e:\n"
        "    assert 'compil' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('fused ran without a library')\n"
    )
    res = _run_python(code, CXX="/bin/false", LOGVMAMBA_EXTENSIONS_DIR=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert not any(tmp_path.rglob("*.so"))


def test_benchmark_measures_backends_and_prints_skips():
    from logvmamba.bench import scan as bench

    backends = ["fused", "torch"] + (["mambapy"] if bench._mambapy_available() else [])
    threads = torch.get_num_threads()
    rows = {}
    try:
        for be in backends:
            for p in bench.PASSES:
                rows[(be, p)] = bench.measure(be, 64, p, batch=1, dim=8, state=4, device="cpu", repeat=1,
                                              threads=threads)
    finally:
        torch.set_num_threads(threads)
    for p in bench.PASSES:
        rows[("ref", p)] = {"skipped": "skipped above --max-ref-length 32"}
    table = bench._table(rows, backends + ["ref"])
    lines = table.splitlines()
    assert all(r["seconds"] > 0 and r["peak_bytes"] >= 0 for k, r in rows.items() if k[0] != "ref")
    assert lines[2].split()[0] == "fused" and "ref fwdbwd: skipped above --max-ref-length 32" in table
