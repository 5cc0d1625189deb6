"""The Snakemake workflow: lint and dry runs of its targets."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _snakemake(*args, cwd=ROOT):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("target", ["all"])
def test_dry_run(target, tmp_path):
    out = _snakemake("-n", target, "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"),
                     "--configfile", str(ROOT / "config/default.yaml"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "synthesize" in out.stdout and "summarize_models" in out.stdout


def test_lint_is_clean():
    out = _snakemake("--lint")
    assert out.returncode == 0 and "Congratulations" in out.stdout + out.stderr, (out.stdout + out.stderr)[-2000:]


def test_config_schema_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/default.yaml").read_text() + "epochz: 3\n")
    out = _snakemake("-n", "all", "--configfile", str(bad))
    assert out.returncode != 0 and "'epochz' was unexpected" in out.stdout + out.stderr
