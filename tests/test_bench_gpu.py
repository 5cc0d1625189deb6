"""The device check (``logvmamba.bench.gpu`` and ``workflow/scripts/gpu_check.sh``) on the CPU, in quick mode."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from logvmamba.bench.gpu import default_out, pytest_summary

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference" / "gpu"


def _listing() -> set:
    return {p.name for p in REFERENCE.iterdir()} if REFERENCE.is_dir() else set()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick CPU run through the shell wrapper, its pytest pointed at a one-test file."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    (tmp / "test_trivial.py").write_text("def test_one():\n    pass\n")
    before = _listing()
    env = dict(os.environ, GPU_CHECK_PYTEST_ARGS=str(tmp / "test_trivial.py"), PYTHONWARNINGS="ignore")
    res = subprocess.run(["bash", str(ROOT / "workflow/scripts/gpu_check.sh"), "--device", "cpu", "--quick",
                          "--out", str(tmp / "x.json")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    return res, tmp / "x.json", before


def _reason(f: dict) -> str:
    return f.get("error") or f.get("skipped") or ""


def _is_figure(f: dict, keys) -> bool:
    """Numbers under ``keys``, or an error / skip with its reason."""
    if "error" in f or "skipped" in f:
        return isinstance(_reason(f), str) and len(_reason(f)) > 3
    return all(isinstance(f[k], (int, float)) and math.isfinite(f[k]) for k in keys)


def test_quick_cpu_run_writes_every_section(quick_run):
    res, out, before = quick_run
    assert f"JSON: {out}" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    # exit status 1 exactly when a figure failed (recorded with its reason, checked below)
    assert res.returncode == (1 if r["errors"] else 0), res.stdout[-3000:] + res.stderr[-3000:]
    assert r["schema"] == "logvmamba.bench.gpu/1" and r["config"]["quick"] and r["config"]["device"] == "cpu"
    assert set(r) >= {"provenance", "config", "pytest", "scan", "train", "targets", "errors"}
    # the wrapper's pytest run: the one trivial test
    p = r["pytest"]
    assert (p["passed"], p["failed"], p["errors"], p["exit_status"]) == (1, 0, 0, 0) and "error" not in p
    prov = r["provenance"]
    assert {"git_commit", "torch", "triton", "load_average", "date_utc", "device"} <= set(prov)
    assert prov["git_commit"] and prov["torch"]
    # scan: torch measured at both quick lengths and passes; triton and cuda skipped with their reasons
    figs = r["scan"]["figures"]
    assert all(_is_figure(f, ("seconds", "peak_bytes")) for f in figs)
    fixed = [f for f in figs if f["shape"].startswith("B2 D192 N16 L")]
    assert {(f["backend"], f["pass"], f["length"]) for f in fixed} == {
        (b, p, n) for b in ("torch", "triton", "cuda") for p in ("fwd", "fwdbwd") for n in (256, 1024)}
    for f in fixed:
        if f["backend"] == "torch":
            assert "seconds" in f and f["seconds"] > 0 and f["peak_bytes"] >= 0
        else:
            assert "CUDA" in f["skipped"]
    # the paper networks' scan calls were recorded, and their largest shapes benchmarked
    records = r["scan"]["network_shapes"]
    assert {rec["dataset"] for rec in records} == {"endoscopy", "cell", "brats", "acdc"}
    assert all("largest" in rec or _reason(rec) for rec in records)
    largest = [s for s in r["scan"]["shapes"] if s.get("source", "").startswith("network")]
    assert largest and any("seconds" in f for f in figs if f["shape"] == largest[0]["name"])
    # training: every case, a number or its reason; the target case first
    train = r["train"]["figures"]
    assert {f["arch"] for f in train} >= {"logvmamba_test", "nnunet_test", "umamba_enc_test", "swin_umamba_d_test"}
    assert all(_is_figure(f, ("median_seconds", "peak_bytes")) for f in train)
    assert any("median_seconds" in f for f in train)
    assert train[0]["role"] == "paper" and train[0]["dataset"] == "endoscopy" and train[0]["batch"] == 1
    assert len(r["targets"]) == 3
    for t in r["targets"]:
        assert t.get("met") is None and ("value" in t or t.get("error"))
    assert _listing() == before


@pytest.mark.parametrize("out", [None, "results/reference/gpu/quick.json"])
def test_quick_run_needs_an_out_path_away_from_the_reference_results(out):
    before = _listing()
    cmd = [sys.executable, "-m", "logvmamba.bench.gpu", "--device", "cpu", "--quick"] + (["--out", out] if out else [])
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and ("needs --out" in res.stderr or "must not write" in res.stderr)
    assert _listing() == before


def test_default_out_names_the_device():
    assert default_out("NVIDIA H200") == Path("results/reference/gpu/h200_gpu_check.json")
    assert default_out("NVIDIA GeForce RTX 4090") == Path("results/reference/gpu/geforce_rtx_4090_gpu_check.json")


def test_pytest_summary_counts_a_junit_file(tmp_path):
    assert "skipped" in pytest_summary(None, None)
    xml = tmp_path / "j.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="5" failures="1" errors="0" '
                   'skipped="2" time="1.5"><testcase classname="t" name="a"><failure message="x"/></testcase>'
                   '<testcase classname="t" name="b"/></testsuite></testsuites>')
    s = pytest_summary(str(xml), 1)
    assert (s["passed"], s["failed"], s["skipped"], [f["test"] for f in s["failed_tests"]]) == (2, 1, 2, ["t::a"])
    assert "error" in s and "error" not in pytest_summary(str(xml), 0)


RECORD = """
import torch
from logvmamba.bench.gpu import record_scan_shapes
from logvmamba.ops import scan_backend, selective_scan
u, dt = torch.randn(3, 8, 10), torch.rand(3, 8, 10)
A, B, C = -torch.rand(8, 4), torch.randn(3, 2, 4, 10), torch.randn(3, 2, 4, 10)
calls = record_scan_shapes("torch")
with scan_backend("bench_record"):
    y = selective_scan(u, dt, A, B, C)
    selective_scan(u[:, :, :7], dt[:, :, :7], A, B[..., :7], C[..., :7], z=u[:, :, :7])
assert torch.allclose(y, selective_scan(u, dt, A, B, C, backend="ref"), atol=1e-5)
print([(c["batch"], c["dim"], c["state"], c["length"], c["groups"], c["z"]) for c in calls])
"""


def test_record_scan_shapes_sees_every_call():
    # In a subprocess: the recorder registers a scan backend, which other tests' backend lists must not see.
    res = subprocess.run([sys.executable, "-c", RECORD], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[(3, 8, 4, 10, 2, False), (3, 8, 4, 7, 2, True)]"
