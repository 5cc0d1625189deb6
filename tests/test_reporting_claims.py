"""Claims, verdicts, paired-difference CIs, rank stability, cross-validation pooling and the budget.

Expected values are hand computations: the exact bootstrap distributions of two-
and four-case examples, and verdicts on score tables built to differ by a known sign.
"""

import json

import numpy as np
import pandas as pd
import pytest

from logvmamba.config import ROOT, load_config
from logvmamba.data import DATASETS
from logvmamba.reporting.claims import VERDICTS, Claim, claims_table, compare, rank_stability, verdict
from logvmamba.reporting.collect import load_budget
from logvmamba.reporting.stats import case_means, dataset_statistics, paired_bootstrap_ci, rank_probabilities

PROV = {"data": "synthetic", "train_devices": ["cpu"], "configs": ["config.yaml"], "commit": "abc"}


# ----------------------------------------------------------------------------- paired-difference CI


def test_paired_bootstrap_ci_of_two_differences_is_their_range():
    # differences 0 and 1: the resampled mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5 % and 97.5 % percentiles are 0 and 1
    assert paired_bootstrap_ci([1.0, 2.0], [1.0, 1.0], n_boot=4000) == (0.0, 1.0)


def test_paired_bootstrap_ci_of_four_differences_by_hand():
    # differences 0, 0, 0, 1: the mean is k/4 with k ~ Binomial(4, 1/4): P(k <= 2) = 0.949,
    # P(k <= 3) = 0.996, so the 97.5 % percentile is 3/4 and the 2.5 % one 0 (P(k = 0) = 0.316)
    a = np.array([0.5, 0.6, 0.7, 1.8])
    b = np.array([0.5, 0.6, 0.7, 0.8])
    assert paired_bootstrap_ci(a, b, n_boot=20000) == pytest.approx((0.0, 0.75))


def test_paired_bootstrap_ci_pairs_the_cases():
    # a constant difference has a zero-width CI whatever the spread of the scores themselves
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, 30)
    assert paired_bootstrap_ci(b + 0.2, b, n_boot=500) == pytest.approx((0.2, 0.2))
    low, high = paired_bootstrap_ci([1.0, np.nan, 3.0], [0.0, 1.0, np.inf], n_boot=500)
    assert (low, high) == (1.0, 1.0)  # one finite pair left


def test_statistics_carry_the_difference_ci():
    cases = pd.DataFrame({"dataset": "d", "model": ["ref"] * 4 + ["other"] * 4, "seed": 0,
                          "case_id": list("abcd") * 2, "metric": "Dice",
                          "value": [0.5, 0.6, 0.7, 1.8, 0.5, 0.6, 0.7, 0.8]})
    table = dataset_statistics(cases, "ref", {"Dice": True}, n_boot=20000).set_index("model")
    assert table.loc["other", "diff"] == pytest.approx(0.25)
    assert (table.loc["other", "diff_ci_low"], table.loc["other", "diff_ci_high"]) == pytest.approx((0.0, 0.75))


# ----------------------------------------------------------------------------- rank stability


def test_rank_probabilities_by_hand():
    # A = (1, 0), B = (0.5, 0.5): resampling (c0, c0) ranks A first, (c1, c1) B first, a mixed
    # resample (probability 1/2) ties them and both get rank 1
    scores = pd.DataFrame({"A": [1.0, 0.0], "B": [0.5, 0.5]}, index=["c0", "c1"])
    probs = rank_probabilities(scores, higher_is_better=True, n_boot=20000, seed=1)
    for model in ("A", "B"):
        assert probs.loc[model, 1] == pytest.approx(0.75, abs=0.015)
        assert probs.loc[model, 2] == pytest.approx(0.25, abs=0.015)
    assert probs["n_cases"].tolist() == [2, 2]


def test_rank_probabilities_follow_the_metric_direction_and_common_cases():
    scores = pd.DataFrame({"A": [1.0, 2.0, 3.0, np.nan], "B": [2.0, 3.0, 4.0, 0.0], "C": [3.0, 4.0, 5.0, 9.0]})
    better_high = rank_probabilities(scores, higher_is_better=True, n_boot=300)
    better_low = rank_probabilities(scores, higher_is_better=False, n_boot=300)
    # C dominates on every common case (the fourth, missing for A, is dropped)
    assert better_high.loc["C", 1] == 1.0 and better_high.loc["A", 3] == 1.0
    assert better_low.loc["A", 1] == 1.0 and better_low.loc["C", 3] == 1.0
    assert better_high["rank"].tolist() == [3, 2, 1] and better_high["n_cases"].iloc[0] == 3
    assert np.allclose(better_high[[1, 2, 3]].sum(axis=1), 1.0)


# ----------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("args, expected", [
    ((0.1, 0.05, 0.15, 0.001), "supported"),
    ((0.1, 0.05, 0.15, 0.2), "inconclusive"),      # CI excludes 0 but the Holm-adjusted test is not significant
    ((0.01, -0.02, 0.04, 0.5), "inconclusive"),
    ((-0.1, -0.15, -0.05, 0.001), "not supported"),
    ((np.nan, np.nan, np.nan, np.nan), "not tested"),
])
def test_verdict_rule(args, expected):
    assert verdict(*args) == expected


def _config(**changes):
    config = load_config(ROOT / "config" / "config.yaml")
    config.update(datasets=["endoscopy"], models=["logvmamba", "nnunet"], seeds=[0],
                  ablations={"datasets": ["endoscopy"], "mixers": ["logvmamba_vanilla", "logvmamba"]})
    config["report"] = dict(config["report"], bootstrap=2000)
    config.update(changes)
    return config


def _cases(offsets, n=20, metric="DSC", dataset="endoscopy"):
    """Per-case scores: model -> base + offset (an array or a number) on ``n`` cases."""
    base = np.linspace(0.3, 0.7, n)
    rows = []
    for model, offset in offsets.items():
        for i, v in enumerate(base + offset):
            rows.append(dict(dataset=dataset, model=model, fold=0, seed=0, case_id=f"c{i:02d}", metric=metric,
                             value=float(v)))
    return pd.DataFrame(rows)


def _verdicts(table):
    return {(r["Claim"][:20], r["Comparison"]): r["Verdict"] for r in table.rows}


def test_claims_table_gives_each_verdict():
    n = 20
    noise = np.where(np.arange(n) % 2 == 0, 0.02, -0.02)
    # logvmamba beats nnU-Net clearly; vanilla beats logvmamba clearly (the mixer claim fails);
    # the placement comparison differs by symmetric noise only
    cases = pd.concat([_cases({"logvmamba": 0.1, "nnunet": noise, "logvmamba_vanilla": 0.2}, n=n),
                       _cases({"logvmamba_head": 0.1 + noise}, n=n)])
    config = _config(ablations={"datasets": ["endoscopy"], "mixers": ["logvmamba_vanilla", "logvmamba"],
                                "placements": ["logvmamba_head", "logvmamba"]})
    table = claims_table(config, cases, None, pd.DataFrame(columns=["source", "dataset", "method", "metric", "value"]),
                         PROV)
    rows = {r["Comparison"]: r for r in table.rows if r["Dataset"] != "–"}
    assert rows["LoG-VMamba > nnU-Net"]["Verdict"] == "supported"
    assert rows["LoG-VMamba > nnU-Net"]["diff"] == pytest.approx(0.1, abs=1e-9)  # mean noise is 0
    assert rows["LoG-VMamba > LoG-VMamba (head)"]["Verdict"] == "inconclusive"
    not_tested = [r for r in table.rows if r["Verdict"] == "not tested"]
    assert not_tested and all(r["Dataset"] == "–" for r in not_tested)
    # only L/G vs vanilla are claimed against vanilla; L and G are missing, so the mixer claim is untested
    mixer = [r for r in table.rows if r["Claim"].startswith("Mixers")]
    assert [r["Verdict"] for r in mixer] == ["not tested"]
    assert {r["Verdict"] for r in table.rows} <= set(VERDICTS)
    assert "the verdicts are about this demo, not about the paper" in table.caption
    assert "not supported when the CI excludes 0 the other way" in table.caption


def test_a_claim_that_fails_is_not_supported_and_distances_count_lower_as_better():
    cases = _cases({"logvmamba": 0.0, "nnunet": 0.1})
    table = claims_table(_config(), cases, None, pd.DataFrame(columns=["source", "dataset", "method", "metric", "value"]),
                         PROV, claims=[Claim("x", (("logvmamba", "nnunet"),))])
    assert [r["Verdict"] for r in table.rows] == ["not supported"]
    # for HD95, lower is better: a model 1 mm closer wins
    hd = _cases({"a": 1.0, "b": 2.0}, metric="HD95_mean")
    means = case_means(hd)
    result = compare(means, "a", "b", "HD95_mean", n_boot=500)
    assert result["diff"] == pytest.approx(1.0) and result["ci_low"] == pytest.approx(1.0) and result["n"] == 20


def test_the_flops_claim_is_a_count():
    profiles = pd.DataFrame({"dataset": ["endoscopy"] * 3, "model": ["logvmamba", "swin_umamba_d", "umamba_enc"],
                             "gflops": [40.0, 30.0, 60.0]})
    claim = Claim("flops", (("logvmamba", "swin_umamba_d"), ("logvmamba", "umamba_enc")), kind="flops")
    table = claims_table(_config(), _cases({"logvmamba": 0.0}), profiles,
                         pd.DataFrame(columns=["source", "dataset", "method", "metric", "value"]), PROV, claims=[claim])
    assert [r["Verdict"] for r in table.rows] == ["not supported", "supported"]
    assert table.rows[0]["Evidence"].startswith("40.0 vs 30.0 GFLOPs")


def test_rank_stability_of_the_main_metric():
    cases = pd.concat([_cases({"logvmamba": 0.2, "nnunet": 0.0}), _cases({"logvmamba": 0.0}, metric="NSD")])
    ranks = rank_stability(_config(), cases, ["logvmamba", "nnunet"])
    top = ranks[(ranks["rank"] == 1)].set_index("model")["probability"]
    assert top["logvmamba"] == 1.0 and top["nnunet"] == 0.0 and set(ranks.dataset) == {"endoscopy"}


# ----------------------------------------------------------------------------- cross-validation pooling


def test_cross_validation_pools_each_case_once_per_seed():
    # five folds validate disjoint cases: each case has one score per seed
    rows = [dict(dataset="d", model="m", fold=f, seed=s, case_id=f"f{f}c{c}", metric="Dice", value=0.1 * f + 0.01 * s)
            for f in range(5) for s in (0, 1) for c in range(3)]
    means = case_means(pd.DataFrame(rows))
    assert len(means) == 15 and (means.n_runs == 2).all()
    assert means.set_index("case_id").loc["f3c1", "value"] == pytest.approx(0.305)
    # a held-out test case scored by every fold's model counts once, its mean over folds x seeds
    test = [dict(dataset="d", model="m", fold=f, seed=s, case_id="t", metric="Dice", value=float(f + s))
            for f in range(5) for s in (0, 1)]
    pooled = case_means(pd.DataFrame(test))
    assert len(pooled) == 1 and pooled.n_runs.iloc[0] == 10 and pooled.value.iloc[0] == pytest.approx(2.5)


def test_evaluation_cases_protocol_and_validation(tmp_path):
    from logvmamba.data import split_case_ids
    from logvmamba.data.synthetic import generate
    from logvmamba.data.raw import RawDataset
    from logvmamba.pipeline import evaluation_cases

    ds = RawDataset(generate("endoscopy", tmp_path, seed=0, num_cases=10))
    tests = evaluation_cases(ds, 0)
    assert tests and set(tests) == set(split_case_ids(ds, "test", 0))
    pooled = [c for f in range(5) for c in evaluation_cases(ds, f, "validation")]
    train = split_case_ids(ds, "train", 0) + split_case_ids(ds, "val", 0)
    assert sorted(pooled) == sorted(train) and len(pooled) == len(set(pooled))
    with pytest.raises(ValueError, match="evaluate_on"):
        evaluation_cases(ds, 0, "test")


def test_evaluate_on_per_dataset():
    from logvmamba.config import evaluate_on

    config = {"evaluate_on": {"default": "validation", "brats": "protocol"}}
    assert evaluate_on(config, "acdc") == "validation" and evaluate_on(config, "brats") == "protocol"
    assert evaluate_on({}, "acdc") == "protocol" and evaluate_on({"evaluate_on": "validation"}, "cell") == "validation"


# ----------------------------------------------------------------------------- budget


def test_budget_from_train_done_and_log(tmp_path):
    run = tmp_path / "endoscopy" / "nnunet" / "fold1" / "seed0"
    run.mkdir(parents=True)
    (run / "train_done.json").write_text(json.dumps({"device": "cuda", "world_size": 2, "train_seconds": 1800.0,
                                                     "peak_memory_MiB": 512.0, "peak_memory_kind": "cuda_allocated"}))
    old = tmp_path / "endoscopy" / "nnunet" / "fold1" / "seed1"
    old.mkdir(parents=True)
    (old / "train_done.json").write_text(json.dumps({"device": "cpu"}))  # before the budget fields
    (old / "log.csv").write_text("epoch,train_loss,val_score,lr,seconds\n0,1.0,,0.01,3000\n1,0.9,0.5,0.01,600\n")
    budget = load_budget(tmp_path, [("endoscopy", "nnunet", 1, 0), ("endoscopy", "nnunet", 1, 1)])
    assert budget.train_hours.tolist() == pytest.approx([0.5, 1.0])
    assert budget.device_hours.tolist() == pytest.approx([1.0, 1.0])   # 0.5 h x 2 GPUs; 1 h x 1
    assert budget.peak_memory_MiB.iloc[0] == 512.0 and np.isnan(budget.peak_memory_MiB.iloc[1])


def test_training_writes_its_budget(tmp_path):
    from logvmamba.config import resolve_recipe
    from logvmamba.data.synthetic import generate
    from logvmamba.data.raw import RawDataset
    from logvmamba.train import train

    ds = RawDataset(generate("endoscopy", tmp_path / "data", seed=0, num_cases=10))
    config = _config(training=dict(load_config(ROOT / "config" / "config.yaml")["training"], epochs=1, iterations=2,
                                   val_cases=1), dataset_training={})
    done = train(resolve_recipe(config, "nnunet", ds), ds.path, tmp_path / "run", seed=0, fold=0, progress=False)
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert done["train_seconds"] == pytest.approx(log.seconds.sum()) and done["train_seconds"] > 0
    assert done["peak_memory_MiB"] > 50 and done["peak_memory_kind"] == "cpu_max_rss"
    assert json.loads((tmp_path / "run" / "train_done.json").read_text())["train_seconds"] == done["train_seconds"]
    assert "endoscopy" in DATASETS


def test_rank_figure_draws_the_probabilities(tmp_path):
    from logvmamba.reporting.figures import build_rank_figure, rank_figure

    ranks = pd.DataFrame({"dataset": "endoscopy", "model": ["a", "a", "b", "b"], "rank": [1, 2, 1, 2],
                          "probability": [0.7, 0.3, 0.3, 0.7]})
    fig = build_rank_figure(ranks, labels={"a": "Model A"}, titles={"endoscopy": "Endoscopy"}, caption="demo")
    ax = fig.axes[0]
    widths = {}
    for patch in ax.patches:
        widths.setdefault(patch.get_gid(), []).append(round(patch.get_width(), 6))
    # best (lowest mean rank) at the top: y order b, a; rank-1 segments 0.3 (b) and 0.7 (a)
    assert sorted(widths["bar:endoscopy:1"]) == [0.3, 0.7] and sorted(widths["bar:endoscopy:2"]) == [0.3, 0.7]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "Model A"]
    png, pdf = rank_figure(ranks, tmp_path / "r.png", tmp_path / "r.pdf")
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="probability"):
        build_rank_figure(ranks.drop(columns="probability"))
