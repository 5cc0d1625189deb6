"""Ctrl-C in the middle of a training job, then the same command again: the run resumes from
checkpoint_last.pt and ends with every epoch trained once."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 30
RUN = "results/endoscopy/nnunet/fold0/seed0"


def _config(tmp_path: Path) -> Path:
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config.update(datasets=["endoscopy"], synthetic_cases=8)
    config["training"].update(epochs=EPOCHS, iterations=6, val_every=EPOCHS, val_cases=1)
    config["dataset_training"] = {}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _command(tmp_path: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--cores", "1", f"{RUN}/train_done.json", "--configfile", str(config),
            "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile")]


def _epochs_logged(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open() as f:
        return sum(1 for _ in csv.DictReader(f))


@pytest.mark.slow
def test_a_rerun_after_ctrl_c_resumes_the_training(tmp_path):
    config = _config(tmp_path)
    run = tmp_path / RUN
    # a terminal's Ctrl-C reaches Snakemake and its jobs: the whole process group
    first = subprocess.Popen(_command(tmp_path, config), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while _epochs_logged(run / "log.csv") < 2:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGINT)
    out = first.communicate(timeout=120)[0]
    assert first.returncode != 0, out[-3000:]
    interrupted_after = _epochs_logged(run / "log.csv")
    assert 2 <= interrupted_after < EPOCHS, out[-3000:]
    assert (run / "checkpoint_last.pt").is_file() and not (run / "train_done.json").exists()

    second = subprocess.run(_command(tmp_path, config), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    log = (tmp_path / "logs/train/endoscopy/nnunet/fold0/seed0.log").read_text()
    assert f"resuming after epoch {interrupted_after} of {EPOCHS}" in log, log[-3000:]
    with (run / "log.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(EPOCHS))
    done = json.loads((run / "train_done.json").read_text())
    assert done["epochs"] == EPOCHS and (run / "checkpoint_best.pt").is_file()
