"""The built wheel works without the checkout: synthesize, train, predict and score from a fresh venv.

The venv sees the system's site-packages (torch and the other dependencies
come from there; nothing is downloaded), so it also sees the editable install
of the checkout. The test runs every command isolated (``python -I``: no
current directory, PYTHONPATH or user site on ``sys.path``) from a temporary
directory, and first checks that ``logvmamba`` imports from the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATASET = "Dataset904_SynthEndoscopy"

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _outputs(folder: str, names: list[str]) -> set[str]:
    """Names copytree leaves out: build outputs anywhere, workflow outputs at the top."""
    skip = {n for n in names if n in {".git", "build", "__pycache__"} or n.endswith(".egg-info")}
    if Path(folder) == ROOT:
        skip |= {".snakemake", "results", "resources", "logs"} & set(names)
    return skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Python of a fresh venv holding the wheel of this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy: a stale build/ of the checkout would put deleted modules into the wheel.
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=_outputs)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(tmp / "dist"), str(source)], cwd=tmp)
    wheels = list((tmp / "dist").glob("logvmamba-*.whl"))
    assert len(wheels) == 1, wheels
    venv.create(tmp / "venv", system_site_packages=True, with_pip=False)
    python = tmp / "venv" / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
          "--force-reinstall", "--no-index", str(wheels[0])], cwd=tmp)
    return python


def test_wheel_imports_from_the_venv(installed, tmp_path):
    where = _run([str(installed), "-I", "-c", "import logvmamba; print(logvmamba.__file__)"], cwd=tmp_path)
    package = Path(where.strip()).resolve()
    assert package.is_relative_to(installed.parents[1].resolve()), package
    assert not package.is_relative_to(ROOT), package


def test_wheel_trains_predicts_and_scores(installed, tmp_path):
    python = [str(installed), "-I"]
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["training"].update(epochs=1, iterations=2, val_cases=1)
    config["dataset_training"] = {}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))

    _run([*python, "-m", "logvmamba.data.synthetic", "endoscopy", "data", "--cases", "8"], cwd=tmp_path)
    dataset = tmp_path / "data" / DATASET
    _run([*python, "-m", "logvmamba.train", "--model", "logvmamba", "--dataset", str(dataset),
          "--out", "run", "--config", "tiny.yaml"], cwd=tmp_path)
    assert (tmp_path / "run" / "checkpoint_best.pt").is_file()
    _run([*python, "-m", "logvmamba.infer", "--checkpoint", "run/checkpoint_best.pt", "--dataset", str(dataset),
          "--subset", "Ts", "--out", "pred", "--device", "cpu"], cwd=tmp_path)
    predictions = sorted((tmp_path / "pred").iterdir())
    assert predictions, "infer wrote no predictions"
    _run([*python, "-m", "logvmamba.evaluation", str(dataset), "pred", "scores", "--subset", "Ts"], cwd=tmp_path)
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert summary
    assert (tmp_path / "scores" / "per_case.csv").is_file()
