"""Every command-line entry point ends an expected error in one line naming the file; --debug
and LOGVMAMBA_DEBUG=1 show the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from logvmamba.cli import one_line
from logvmamba.data import convert, synthetic
from logvmamba.evaluation.evaluate import main as evaluate_main
from logvmamba.infer import main as infer_main
from logvmamba.profile import main as profile_main
from logvmamba.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_train_names_a_missing_dataset(tmp_path, capsys):
    missing = tmp_path / "Dataset999_Nowhere"
    assert train_main(["--model", "nnunet", "--dataset", str(missing), "--out", str(tmp_path / "run")]) == 2
    assert str(missing) in _one_error_line(capsys)


def test_train_names_a_broken_config(tmp_path, capsys, synth_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {epochs: [1,\n")
    dataset = synth_root / "Dataset904_SynthEndoscopy"
    assert train_main(["--model", "nnunet", "--dataset", str(dataset), "--out", str(tmp_path / "run"),
                       "--config", str(bad)]) == 2
    line = _one_error_line(capsys)
    assert f"{bad}: not valid YAML" in line
    assert not (tmp_path / "run").exists()


def test_infer_names_a_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nothing.pt"
    assert infer_main(["--checkpoint", str(missing), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in _one_error_line(capsys)


def test_evaluation_names_a_missing_prediction_folder(tmp_path, capsys, synth_root):
    dataset = synth_root / "Dataset903_SynthCell"
    assert evaluate_main([str(dataset), str(tmp_path / "nopred"), str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'nopred'}: prediction folder missing" in _one_error_line(capsys)


def test_convert_names_a_missing_release(tmp_path, capsys):
    assert convert.main(["cell", str(tmp_path / "no_download"), str(tmp_path / "raw")]) == 2
    assert str(tmp_path / "no_download") in _one_error_line(capsys)


def test_synthetic_names_a_destination_that_is_a_file(tmp_path, capsys):
    dest = tmp_path / "a_file"
    dest.write_text("not a folder")
    assert synthetic.main(["cell", str(dest), "--cases", "5"]) == 2
    assert f"error: {dest}: the destination is a file, not a folder" == _one_error_line(capsys)


def test_profile_names_an_unknown_model(tmp_path, capsys):
    assert profile_main(["--model", "no_such_net", "--dataset", "cell", "--out", str(tmp_path / "p.json"),
                         "--no-runtime"]) == 2
    assert "no_such_net" in _one_error_line(capsys)
    assert not (tmp_path / "p.json").exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    missing = tmp_path / "Dataset999_Nowhere"
    with pytest.raises(ValueError, match="Dataset999_Nowhere"):
        train_main(["--model", "nnunet", "--dataset", str(missing), "--out", str(tmp_path / "run"), "--debug"])
    monkeypatch.setenv("LOGVMAMBA_DEBUG", "1")
    with pytest.raises(ValueError, match="Dataset999_Nowhere"):
        train_main(["--model", "nnunet", "--dataset", str(missing), "--out", str(tmp_path / "run")])


def test_the_module_exits_non_zero_with_one_line(tmp_path):
    missing = tmp_path / "Dataset999_Nowhere"
    env = {k: v for k, v in os.environ.items() if k != "LOGVMAMBA_DEBUG"}
    res = subprocess.run([sys.executable, "-m", "logvmamba.train", "--model", "nnunet", "--dataset", str(missing),
                          "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: ") and str(missing) in res.stderr


def test_one_line_joins_lines_and_names_the_path():
    assert one_line(KeyError("no model 'x'")) == "no model 'x'"
    assert one_line(ValueError("first\n  second")) == "first second"
    assert one_line(OSError(28, "No space left on device", "/out/run/checkpoint_last.pt")) == \
        "[Errno 28] No space left on device: '/out/run/checkpoint_last.pt'"


def test_the_workflow_names_the_bad_key_and_value_not_the_schema(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "config/config.yaml").read_text()
    assert "\n  epochs: 3\n" in text
    bad.write_text(text.replace("\n  epochs: 3\n", "\n  epochs: -3\n"))
    res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "-n", "all_metrics", "--configfile", str(bad),
                          "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "training/epochs: -3 is less than the minimum of 0" in out
    assert "Failed validating" not in out and "'description'" not in out, out


def test_train_names_an_output_folder_that_is_a_file(tmp_path, capsys, synth_root):
    out = tmp_path / "run"
    out.write_text("a file")
    assert train_main(["--model", "nnunet", "--dataset", str(synth_root / "Dataset904_SynthEndoscopy"),
                       "--out", str(out)]) == 2
    assert f"the output folder is a file: '{out}'" in _one_error_line(capsys)


def test_train_reads_the_checkouts_config_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no config/config.yaml here
    missing = tmp_path / "Dataset999_Nowhere"
    assert train_main(["--model", "nnunet", "--dataset", str(missing), "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    assert str(missing) in line and "config file not found" not in line


def test_train_names_an_output_folder_it_cannot_write(tmp_path, monkeypatch, synth_root):
    """Root writes into read-only folders, so the refusal is simulated where the probe file is made."""
    import tempfile

    import logvmamba.io as io_module
    from logvmamba.config import load_config, resolve_recipe
    from logvmamba.data import RawDataset
    from logvmamba.train import train

    ds = RawDataset(synth_root / "Dataset904_SynthEndoscopy")
    recipe = resolve_recipe(load_config(ROOT / "config/config.yaml"), "nnunet", ds)
    real = tempfile.mkstemp

    def refuse(*args, dir=None, prefix="", **kwargs):
        if prefix == ".write_probe.":
            raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "x"))
        return real(*args, dir=dir, prefix=prefix, **kwargs)

    monkeypatch.setattr(io_module.tempfile, "mkstemp", refuse)
    out = tmp_path / "run"
    with pytest.raises(PermissionError, match="output folder is not writable") as err:
        train(recipe, ds.path, out, progress=False)
    assert err.value.filename == str(out)
    assert list(out.iterdir()) == []  # no lock, no log


def test_train_without_a_checkout_config_asks_for_one(tmp_path, monkeypatch, capsys, synth_root):
    import logvmamba.config as config_module

    monkeypatch.setattr(config_module, "ROOT", tmp_path)  # an installed wheel: no config/ beside the package
    assert train_main(["--model", "nnunet", "--dataset", str(synth_root / "Dataset904_SynthEndoscopy"),
                       "--out", str(tmp_path / "run")]) == 2
    assert _one_error_line(capsys) == (f"error: {tmp_path / 'config' / 'config.yaml'}: no checkout config beside "
                                       f"this installed package; pass --config FILE")
