"""The train rule under Snakemake: reruns keep trained weights; only weight-deciding settings retrain."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from logvmamba.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RUN = Path("results/endoscopy/logvmamba/fold0/seed0")
TARGET = str(RUN / "summary.json")


def _snakemake(workdir: Path, *args: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), f"--configfile={workdir / 'config.yaml'}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return out.returncode, out.stdout + out.stderr


def _jobs(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}


def _write_config(workdir: Path, **changes) -> None:
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config.update(datasets=["endoscopy"], models=["logvmamba"], synthetic_cases=10,
                  data_root=str(workdir / "data"), ablations={"datasets": ["endoscopy"], "mixers": [], "placements": []})
    config["training"].update(epochs=2, iterations=2, val_every=1, val_cases=1)
    config["dataset_training"] = {}
    config["overrides"] = {m: v for m, v in config["overrides"].items() if m in config["models"]}  # trained models only
    for key, value in changes.items():
        config["training"][key] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.slow
def test_reruns_keep_the_weights_and_only_weight_settings_retrain(tmp_path):
    _write_config(tmp_path)
    code, out = _snakemake(tmp_path, TARGET)
    assert code == 0, out[-3000:]
    best = tmp_path / RUN / "checkpoint_best.pt"
    weights, mtime = load_checkpoint(best)["model"], best.stat().st_mtime_ns

    # touching the config changes nothing the run depends on
    (tmp_path / "config.yaml").touch()
    code, out = _snakemake(tmp_path, TARGET)
    assert code == 0, out[-3000:]
    assert best.stat().st_mtime_ns == mtime

    # a forced rerun of a finished training resumes at its end and writes every output again
    code, out = _snakemake(tmp_path, TARGET, "--forcerun", "train")
    assert code == 0, out[-3000:]
    for name in ("checkpoint_best.pt", "log.csv", "train_done.json"):
        assert (tmp_path / RUN / name).is_file()
    again = load_checkpoint(best)["model"]
    assert all(torch.equal(again[k], v) for k, v in weights.items())
    # ... and the next plain run has nothing to do
    code, out = _snakemake(tmp_path, "-n", TARGET)
    assert code == 0 and "train" not in _jobs(out), out[-3000:]

    # an inference setting reruns prediction and scoring, never training
    _write_config(tmp_path, tta=True, overlap=0.25)
    code, out = _snakemake(tmp_path, "-n", TARGET)
    jobs = _jobs(out)
    assert code == 0 and "train" not in jobs and jobs.get("predict") == 1, out[-3000:]

    # a weight-deciding setting retrains
    _write_config(tmp_path, iterations=3)
    code, out = _snakemake(tmp_path, "-n", TARGET)
    assert code == 0 and _jobs(out).get("train") == 1, out[-3000:]
