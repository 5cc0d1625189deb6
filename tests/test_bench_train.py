"""The training benchmark's split of an iteration (issue 15, item 1); no timing is asserted."""

import math

from logvmamba.bench.train import measure_run
from logvmamba.config import ROOT, load_config
from logvmamba.data import RawDataset, split_case_ids


def test_measure_run_splits_an_iteration(synth_root):
    ds = RawDataset(next(synth_root.glob("Dataset904_*")))
    config = load_config(str(ROOT / "config" / "config.yaml"))
    row = measure_run(config, "nnunet", ds, iterations=2, warmup=1)
    parts = row["load"] + row["fwd_bwd"] + row["optimizer"]
    assert math.isclose(row["iteration"], parts) and math.isclose(row["load_share"], row["load"] / parts)
    assert all(row[k] > 0 for k in ("load", "load_uncached", "fwd_bwd", "optimizer", "val_window", "val_score"))
    run = {**config["training"], **config.get("dataset_training", {}).get("endoscopy", {})}  # the dataset's run
    assert row["patch"] == "64x96" and row["batch"] == run["batch_size"]
    val = split_case_ids(ds, "val", 0)
    assert row["val_cases"] == min(run["val_cases"] or len(val), len(val))  # 0: all
