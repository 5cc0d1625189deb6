"""The scan backend as an argument: model keywords, ``scan_backend()`` contexts, the environment read once."""

import os
import subprocess
import sys
import threading

import pytest
import torch

from test_registry_models import CASES, input_size

from logvmamba import create_model
from logvmamba.models.mamba_layer import Mamba
from logvmamba.models.mixer import LoGMixer
from logvmamba.ops import SCAN_ENV, get_backend, get_default_backend, resolve_backend, scan_backend


@pytest.fixture
def calls(monkeypatch):
    """Names of the backends whose forward ran, in order."""
    seen = []
    for name in ("ref", "torch"):
        be = get_backend(name)
        monkeypatch.setattr(be, "forward", lambda inputs, sp, _f=be.forward, _n=name: seen.append(_n) or _f(inputs, sp))
    return seen


def _mixer(**kwargs):
    torch.manual_seed(0)
    return LoGMixer(16, 2, (4, 6), mixer="log", gtx_stride=2, **kwargs)


def test_inside_a_context_the_models_scan_resolves_to_it(calls):
    mixer, x = _mixer(), torch.randn(1, 4, 6, 16)
    outside = get_default_backend()
    with scan_backend("ref"):
        assert resolve_backend("auto", x).name == "ref"
        y_ref = mixer(x)
    assert calls == ["ref"] and get_default_backend() == outside
    with scan_backend("torch"):
        y_torch = mixer(x)
    assert calls == ["ref", "torch"]
    torch.testing.assert_close(y_torch, y_ref, rtol=1e-4, atol=1e-5)


def test_a_backend_keyword_wins_over_the_context(calls):
    mixer, block = _mixer(scan_backend="ref"), Mamba(8, d_state=4, scan_backend="ref")
    with scan_backend("torch"):
        mixer(torch.randn(1, 4, 6, 16))
        block(torch.randn(1, 5, 8))
    assert calls == ["ref", "ref"]


def test_nested_contexts_restore_the_outer_default():
    outer = get_default_backend()
    with scan_backend("torch"):
        with scan_backend("ref"):
            assert get_default_backend() == "ref"
        assert get_default_backend() == "torch"
        with pytest.raises(RuntimeError):
            with scan_backend("ref"):
                raise RuntimeError("leaving by an exception restores too")
        assert get_default_backend() == "torch"
        with scan_backend("auto"):
            assert get_default_backend() == "auto"
    assert get_default_backend() == outer


def test_a_context_belongs_to_its_thread():
    seen = {}
    with scan_backend("ref"):
        worker = threading.Thread(target=lambda: seen.update(default=get_default_backend()))
        worker.start()
        worker.join()
        assert get_default_backend() == "ref"
    assert seen["default"] == get_default_backend()


def test_the_environment_set_after_import_changes_nothing(monkeypatch):
    u = torch.randn(1, 2, 3)
    before = resolve_backend("auto", u).name, get_default_backend()
    monkeypatch.setenv(SCAN_ENV, "ref" if before[0] != "ref" else "torch")
    assert (resolve_backend("auto", u).name, get_default_backend()) == before


def test_the_environment_at_start_is_the_initial_default():
    code = (
        "import os, torch\n"
        "from logvmamba.ops import get_default_backend, resolve_backend, scan_backend\n"
        "u = torch.randn(1, 2, 3)\n"
        "assert get_default_backend() == 'ref' and resolve_backend('auto', u).name == 'ref'\n"
        "with scan_backend('torch'):\n"
        "    assert resolve_backend('auto', u).name == 'torch'\n"
        "os.environ['LOGVMAMBA_SCAN'] = 'torch'\n"
        "assert resolve_backend('auto', u).name == 'ref'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, SCAN_ENV: "Ref "})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
    bad = subprocess.run(
        [sys.executable, "-c", "import torch; from logvmamba.ops import resolve_backend; resolve_backend('auto', torch.randn(1, 2, 3))"],
        capture_output=True, text=True, env={**os.environ, SCAN_ENV: "nonsense"},
    )
    assert bad.returncode != 0 and "unknown selective-scan backend 'nonsense'" in bad.stderr


def test_unknown_backend_names_raise():
    with pytest.raises(ValueError, match="unknown selective-scan backend 'fast'"):
        with scan_backend("fast"):
            pass
    with pytest.raises(ValueError, match="'fast'"):
        _mixer(scan_backend="fast")
    with pytest.raises(ValueError, match="'fast'"):
        Mamba(8, scan_backend="fast")


@pytest.mark.parametrize("name,dims", CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def test_network_keyword_reaches_every_scan(name, dims):
    build = dict(spatial_dims=dims, in_channels=1, out_channels=2, img_size=input_size(name, dims))
    if not any(hasattr(m, "scan_backend") for m in create_model(name, **build).modules()):
        pytest.skip(f"{name} runs no selective scan")
    net = create_model(name, scan_backend="ref", **build)
    scans = [m.scan_backend for m in net.modules() if hasattr(m, "scan_backend")]
    assert scans and set(scans) == {"ref"}


def test_benchmark_step_uses_the_context_not_the_environment(monkeypatch):
    from logvmamba.bench import scan as bench

    monkeypatch.setattr(bench, "E2E_MODEL", "logvmamba_test")
    monkeypatch.setattr(bench, "E2E_CASES", {"3d": ((32, 32, 32), 1, 2)})
    env, default = dict(os.environ), get_default_backend()
    threads = torch.get_num_threads()
    try:
        result = bench.measure_step("3d", "torch", "cpu", repeat=1, threads=threads)
    finally:
        torch.set_num_threads(threads)
    assert result["scan_backend"] == "torch" and result["model"] == "logvmamba_test"
    assert dict(os.environ) == env and get_default_backend() == default
