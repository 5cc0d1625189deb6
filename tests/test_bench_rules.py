"""Per-rule wall times from Snakemake benchmark files (issue 15, item 1)."""

import pytest

from logvmamba.bench.rules import rule_times

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _write(path, seconds, rss):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{seconds}\n")


def test_rule_times_sums_per_rule(tmp_path):
    _write(tmp_path / "train/endoscopy/a/fold0/seed0.tsv", 30.0, 500)
    _write(tmp_path / "train/cell/a/fold0/seed0.tsv", 10.0, 700)
    _write(tmp_path / "evaluate/cell/a/fold0/seed0.tsv", 20.0, 100)
    _write(tmp_path / "tables.tsv", 1.0, 50)
    table = rule_times(tmp_path).set_index("rule")
    # by hand: train 30 + 10 = 40 of 61 job seconds
    assert table.loc["train", "jobs"] == 2 and table.loc["train", "wall_s"] == 40.0
    assert table.loc["train", "mean_s"] == 20.0 and table.loc["train", "max_rss_MiB"] == 700
    assert table.loc["train", "share"] == pytest.approx(40 / 61)
    assert list(table.index) == ["train", "evaluate", "tables"]


def test_rule_times_names_a_bad_file(tmp_path):
    bad = tmp_path / "train" / "x.tsv"
    bad.parent.mkdir()
    bad.write_text("nothing here\n")
    with pytest.raises(ValueError, match="x.tsv: not a Snakemake benchmark file"):
        rule_times(tmp_path)
    with pytest.raises(ValueError, match="no benchmark files"):
        rule_times(tmp_path / "missing")
