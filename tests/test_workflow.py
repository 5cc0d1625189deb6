"""The Snakemake workflow: lint, dry runs of its targets, config validation."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _snakemake(*args, cwd=ROOT, timeout=300):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *args]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout + out.stderr


def _jobs(text: str) -> dict[str, int]:
    """Job counts of a dry run's 'Job stats' table."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}


@pytest.mark.parametrize("target", ["all_metrics", "all", "metrics_brats"])
def test_default_dry_run(target, tmp_path):
    code, out = _snakemake("-n", target, "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"))
    assert code == 0, out[-3000:]
    jobs = _jobs(out)
    datasets = 1 if target == "metrics_brats" else 4
    assert jobs["train"] == jobs["predict"] == jobs["evaluate"] == datasets
    assert jobs["prepare_data"] == jobs["split"] == datasets


def test_paper_dry_run_lists_the_full_grid(tmp_path):
    code, out = _snakemake("-n", "all_metrics", "--configfile", str(ROOT / "config/paper.yaml"),
                           "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"))
    assert code == 0, out[-3000:]
    assert _jobs(out)["train"] == 4 * 3  # 4 datasets x LoG-VMamba x 3 seeds
    assert "results/brats/logvmamba/seed2/summary.json" in out


def test_paper_real_run_fails_fast_with_the_missing_dataset_message(tmp_path):
    code, out = _snakemake("resources/prepared/endoscopy.json",
                           "--configfile", str(ROOT / "config/paper.yaml"),
                           "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"))
    assert code != 0
    log = (tmp_path / "logs/prepare_data/endoscopy.log").read_text()
    assert "Dataset704_Endovis17" in log and "http" in log


def test_lint_is_clean():
    code, out = _snakemake("--lint")
    assert code == 0 and "Congratulations" in out, out[-2000:]


def test_config_typo_is_an_error_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/config.yaml").read_text() + "epochz: 3\n")
    code, out = _snakemake("-n", "all_metrics", "--configfile", str(bad), "--directory", str(tmp_path),
                           "--snakefile", str(ROOT / "Snakefile"))
    assert code != 0 and "'epochz' was unexpected" in out
