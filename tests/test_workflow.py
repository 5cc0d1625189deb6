"""The Snakemake workflow: lint, dry runs of its targets, config validation."""

import os
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
    # 2D datasets x 10 models + 3D datasets x 8 (the Swin-UMamba models are 2D only), 3 seeds
    assert _jobs(out)["train"] == (2 * 10 + 2 * 8) * 3
    assert "results/brats/logvmamba/seed2/summary.json" in out and "results/brats/swin_umamba/" not in out


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


TOY = '''
import torch.nn as nn
from logvmamba import register_model


@register_model
def toy_unet(*, spatial_dims, in_channels, out_channels, img_size, **kwargs):
    conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2]
    return nn.Sequential(conv(in_channels, 8, 3, padding=1), nn.ReLU(), conv(8, out_channels, 1))
'''


def test_a_new_baseline_is_one_file_and_one_config_line(tmp_path):
    (tmp_path / "toy_baseline.py").write_text(TOY)
    config = tmp_path / "with_toy.yaml"
    config.write_text((ROOT / "config/config.yaml").read_text().replace("models: [logvmamba]", "models: [logvmamba, toy_unet]"))
    args = ("-n", "all_metrics", "--configfile", str(config), "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"))
    code, out = _snakemake(*args)
    assert code != 0 and "'toy_unet' needs the architecture 'toy_unet', which no module registers" in out
    env = dict(os.environ, PYTHONPATH=str(tmp_path), LOGVMAMBA_MODEL_MODULES="toy_baseline")
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    text = out.stdout + out.stderr
    assert _jobs(text)["train"] == 8 and "results/acdc/toy_unet/seed0/summary.json" in text


def test_toy_baseline_trains_through_the_registry(tmp_path, monkeypatch, synth_root):
    (tmp_path / "toy_baseline.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LOGVMAMBA_MODEL_MODULES", "toy_baseline")
    from logvmamba.config import load_config, resolve_recipe
    from logvmamba.data import DATASETS, RawDataset
    from logvmamba.train import train

    ds = RawDataset(synth_root / DATASETS["acdc"].synthetic_name)
    recipe = resolve_recipe(load_config(ROOT / "config/config.yaml"), "toy_unet", ds)
    recipe.update(epochs=1, iterations=2, batch_size=1, val_cases=1, deep_supervision=False, model_kwargs={})
    assert train(recipe, ds.path, tmp_path / "run", progress=False)["epochs"] == 1
