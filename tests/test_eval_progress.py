"""The commands log their progress; stdout holds only the result line; no bar when stderr is not a terminal."""

from __future__ import annotations

import logging
import shutil

from logvmamba.data import RawDataset, get_info
from logvmamba.data import synthetic
from logvmamba.evaluation.evaluate import main as evaluate_main


def test_evaluation_logs_progress_and_prints_one_line(synth_root, tmp_path, capsys, caplog):
    ds = RawDataset(synth_root / get_info("acdc").synthetic_name)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for files in ds.cases("Tr")[:2]:
        shutil.copy(files.label, pred_dir / files.label.name)
    with caplog.at_level(logging.INFO, logger="logvmamba.evaluation"):
        assert evaluate_main([str(ds.path), str(pred_dir), str(tmp_path / "out"), "--cases", "files"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{ds.name}: Dice_mean = 1.0000 over 2 case(s)"]
    assert "score" not in err  # stderr is no terminal here: no progress bar
    assert any("scoring 2 case(s)" in r.getMessage() for r in caplog.records)


def test_synthetic_command_logs_progress_and_prints_the_folders(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="logvmamba.data.synthetic"):
        assert synthetic.main(["cell", str(tmp_path), "--cases", "5"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / get_info("cell").synthetic_name)]
    assert any("5 training and 8 test case(s)" in r.getMessage() for r in caplog.records)
