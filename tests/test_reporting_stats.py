"""Bootstrap CIs, paired Wilcoxon, Holm and the per-dataset statistics table."""

import doctest
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from logvmamba.reporting import stats
from logvmamba.reporting.stats import (
    STATISTICS_COLUMNS,
    bootstrap_ci,
    case_means,
    dataset_statistics,
    holm,
    paired_wilcoxon,
    write_statistics,
)

REFERENCE = "logvmamba"
DIRECTIONS = {"DSC": True, "HD95": False}


def test_docstring_example():
    assert doctest.testmod(stats).failed == 0


# bootstrap_ci

@pytest.mark.parametrize("level", [0.8, 0.95])
def test_bootstrap_ci_covers_true_mean_at_its_level(level):
    rng = np.random.default_rng(1)
    samples = rng.normal(5.0, 1.0, (300, 40))
    covered = [low < 5.0 < high for low, high in (bootstrap_ci(x, level=level, n_boot=1000) for x in samples)]
    # The percentile bootstrap undercovers a little at n = 40; binomial noise is about 0.02.
    assert level - 0.06 < np.mean(covered) < level + 0.04


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_bootstrap_ci_width_matches_normal_theory(level):
    x = np.random.default_rng(1).normal(5.0, 1.0, 400)
    low, high = bootstrap_ci(x, level=level, n_boot=4000)
    # Normal quantile from the standard library, not from scipy (which bootstrap_ci calls).
    half = NormalDist().inv_cdf(0.5 + level / 2) * x.std(ddof=1) / np.sqrt(x.size)
    assert (high - low) == pytest.approx(2 * half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(x.mean(), abs=0.2 * half)


def test_bootstrap_ci_narrows_with_n():
    rng = np.random.default_rng(2)
    intervals = [bootstrap_ci(rng.normal(0, 1, n), n_boot=2000) for n in (25, 100, 400)]
    widths = [high - low for low, high in intervals]
    assert widths[0] > widths[1] > widths[2] > 0


def test_bootstrap_ci_is_deterministic_per_seed():
    x = np.random.default_rng(3).normal(0, 1, 50)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)


def test_bootstrap_ci_drops_nan():
    x = np.random.default_rng(4).normal(0, 1, 30)
    with_nan = np.insert(x, [0, 10, 30], np.nan)
    assert bootstrap_ci(with_nan, n_boot=500) == bootstrap_ci(x, n_boot=500)


@pytest.mark.parametrize("values", [[], [np.nan, np.nan]])
def test_bootstrap_ci_without_values_is_nan(values):
    assert np.isnan(bootstrap_ci(values)).all()


@pytest.mark.parametrize("values", [[0.7], [np.nan, 0.7]])
def test_bootstrap_ci_of_one_value_is_that_value(values):
    assert bootstrap_ci(values) == (0.7, 0.7)


@pytest.mark.parametrize("level", [0.5, 0.95])
def test_bootstrap_ci_of_a_constant_sample_is_the_constant(level):
    # Every resample of twenty 0.75s has mean 0.75 (exact in binary), so both percentiles are 0.75.
    assert bootstrap_ci([0.75] * 20, level=level, n_boot=200) == (0.75, 0.75)


@pytest.mark.parametrize("kwargs", [{"level": 0}, {"level": 1}, {"level": 1.5}, {"level": np.nan},
                                    {"n_boot": 0}])
def test_bootstrap_ci_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0, 3.0], **kwargs)


# paired_wilcoxon

# Exact two-sided p-values by hand, n = 5 with distinct |d| = 1..5 (ranks 1..5): under the null
# each of the 2^5 = 32 sign patterns is equally likely, W- is the rank sum of the negative
# differences, and p = 2 * #{patterns with W- <= observed} / 32 (the null is symmetric).
#   d = 1, 2, 3, 4, 5:   W- = 0; only {} has rank sum <= 0                -> p = 2 * 1 / 32 = 0.0625
#   d = -1, 2, 3, 4, 5:  W- = 1; {}, {1}                                 -> p = 2 * 2 / 32 = 0.125
#   d = 1, 2, 3, 4, -5:  W- = 5; {}, {1}, {2}, {3}, {1,2}, {4}, {1,3},
#                        {5}, {1,4}, {2,3}                               -> p = 2 * 10 / 32 = 0.625
# The statistic is min(W+, W-): 0, 1 and 5 (W+ = 15 - W-).
@pytest.mark.parametrize("diffs, statistic, p_value", [
    ([1, 2, 3, 4, 5], 0.0, 0.0625),
    ([-1, 2, 3, 4, 5], 1.0, 0.125),
    ([1, 2, 3, 4, -5], 5.0, 0.625),
])
def test_paired_wilcoxon_exact_by_hand(diffs, statistic, p_value):
    b = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    a = b + np.array(diffs, dtype=float)
    result = paired_wilcoxon(a, b)
    assert result["n"] == 5
    assert result["statistic"] == statistic
    assert result["p_value"] == pytest.approx(p_value, abs=1e-12)
    assert result["mean_diff"] == pytest.approx(np.mean(diffs))
    assert result["median_diff"] == float(np.median(diffs))


def test_paired_wilcoxon_drops_pairs_with_a_missing_side():
    # Pairs 1 (a is NaN) and 4 (b is inf) go; the five left differ by 1..5, all positive:
    # p = 2 / 32 = 0.0625 as above.
    a = np.array([2.0, np.nan, 4.0, 6.0, 7.0, 9.0, 11.0])
    b = np.array([1.0, 0.0, 2.0, 3.0, np.inf, 5.0, 6.0])
    result = paired_wilcoxon(a, b)
    assert result["n"] == 5
    assert result["statistic"] == 0.0
    assert result["p_value"] == pytest.approx(0.0625, abs=1e-12)
    assert result["mean_diff"] == pytest.approx(3.0)


def test_paired_wilcoxon_identical_scores_give_p_one():
    a = np.linspace(0.5, 0.9, 12)
    result = paired_wilcoxon(a, a.copy())
    assert result["n"] == 12 and result["p_value"] == 1.0
    assert np.isnan(result["statistic"])
    assert result["mean_diff"] == 0.0


def test_paired_wilcoxon_without_pairs_is_nan():
    result = paired_wilcoxon([np.nan, 1.0], [2.0, np.nan])
    assert result["n"] == 0
    assert np.isnan([result[k] for k in ("mean_diff", "median_diff", "statistic", "p_value")]).all()


def test_paired_wilcoxon_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal length"):
        paired_wilcoxon([1.0, 2.0, 3.0], [1.0, 2.0])


# holm

# By hand: sort the valid p, multiply the k-th smallest (k = 0, 1, ...) by m - k, take the running
# maximum, cap at 1, put back in input order. [0.01, 0.04, 0.03] (m = 3): sorted 0.01, 0.03, 0.04
# -> 3 * 0.01, 2 * 0.03, 1 * 0.04 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06 -> input
# order [0.03, 0.06, 0.06]. [0.02, 0.5, 0.3]: 0.06, 2 * 0.3 = 0.6, 0.5 -> 0.06, 0.6, 0.6 ->
# [0.06, 0.6, 0.6]. [0.4, 0.6]: 2 * 0.4, 0.6 = 0.8, 0.6 -> 0.8, 0.8. [0.7, 0.6]: sorted 0.6, 0.7
# -> 1.2, 0.7 -> running max 1.2, 1.2 -> capped 1, 1. A NaN is left out of m and stays NaN.
@pytest.mark.parametrize("pvalues, expected", [
    ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),
    ([0.01, np.nan, 0.04, 0.03], [0.03, np.nan, 0.06, 0.06]),
    ([0.02, 0.5, 0.3], [0.06, 0.6, 0.6]),
    ([0.4, 0.6], [0.8, 0.8]),
    ([0.7, 0.6], [1.0, 1.0]),
    ([np.nan], [np.nan]),
    ([], []),
])
def test_holm_by_hand(pvalues, expected):
    np.testing.assert_allclose(holm(pvalues), expected)


def test_holm_is_monotone_in_the_raw_p_values():
    p = np.random.default_rng(8).uniform(0, 0.2, 15)
    adjusted = holm(p)
    assert (np.diff(adjusted[np.argsort(p)]) >= 0).all()
    assert (adjusted >= p).all() and (adjusted <= 1).all()


def test_holm_rejects_p_values_outside_unit_interval():
    with pytest.raises(ValueError):
        holm([0.5, 1.5])


# case_means and dataset_statistics

def _wide(n_cases=30, seeds=(0, 1, 2)):
    """Per-model arrays ``(metric, seed, case)`` of a synthetic dataset, seeds deliberately different."""
    rng = np.random.default_rng(9)
    shape = (len(seeds), n_cases)
    ref_dsc = rng.uniform(0.6, 0.9, shape)
    ref_hd = rng.uniform(5, 20, shape)
    return {
        REFERENCE: {"DSC": ref_dsc, "HD95": ref_hd},
        "worse": {"DSC": ref_dsc - rng.uniform(0.05, 0.15, shape),
                  "HD95": ref_hd + rng.uniform(2, 6, shape)},
        "same": {"DSC": ref_dsc.copy(), "HD95": ref_hd.copy()},
        "better": {"DSC": ref_dsc + rng.uniform(0.05, 0.15, shape),
                   "HD95": ref_hd - rng.uniform(2, 4, shape)},
    }


def _long(wide, seeds=(0, 1, 2), dataset="acdc"):
    rows = []
    for model, metrics in wide.items():
        for metric, values in metrics.items():
            for s, seed in enumerate(seeds):
                for c, value in enumerate(values[s]):
                    rows.append((dataset, model, seed, f"case_{c:03d}", metric, float(value)))
    return pd.DataFrame(rows, columns=list(stats.CASE_COLUMNS))


@pytest.fixture
def table():
    """Cases table rows shuffled; ``worse`` lacks case_005 for every metric and seed."""
    cases = _long(_wide())
    cases = cases[~((cases["model"] == "worse") & (cases["case_id"] == "case_005"))]
    return cases.sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_case_means_average_finite_seeds():
    cases = pd.DataFrame({"dataset": "d", "model": "m", "seed": [0, 1, 2, 0, 1],
                          "case_id": ["a", "a", "a", "b", "b"], "metric": "DSC",
                          "value": [0.2, 0.4, np.nan, np.nan, np.inf]})
    means = case_means(cases)
    assert means["case_id"].tolist() == ["a", "b"]
    assert means["value"].iloc[0] == pytest.approx(0.3) and np.isnan(means["value"].iloc[1])
    assert means["n_runs"].tolist() == [2, 0]


def test_case_means_rejects_duplicate_rows():
    cases = _long(_wide(n_cases=3))
    with pytest.raises(ValueError, match="more than one row"):
        case_means(pd.concat([cases, cases.iloc[[4]]]))


def test_dataset_statistics_layout(table):
    result = dataset_statistics(table, REFERENCE, DIRECTIONS, n_boot=500)
    assert list(result.columns) == list(STATISTICS_COLUMNS)
    first_models = list(pd.unique(table["model"]))
    expected_models = [REFERENCE] + [m for m in first_models if m != REFERENCE]
    expected_metrics = list(pd.unique(table["metric"]))
    assert result["metric"].tolist() == [m for m in expected_metrics for _ in expected_models]
    assert result["model"].tolist() == expected_models * len(expected_metrics)
    assert (result["dataset"] == "acdc").all() and (result["reference"] == REFERENCE).all()
    assert (result["n_runs"] == 3).all()


def test_dataset_statistics_means_average_seeds_then_cases(table):
    wide = _wide()
    result = dataset_statistics(table, REFERENCE, DIRECTIONS, n_boot=500).set_index(["model", "metric"])
    for model in (REFERENCE, "same", "better"):
        for metric in DIRECTIONS:
            row = result.loc[(model, metric)]
            assert row["n_cases"] == 30
            assert row["mean"] == pytest.approx(wide[model][metric].mean(axis=0).mean())
            assert row["ci_low"] < row["mean"] < row["ci_high"]
            assert row["ci_low"] == pytest.approx(
                bootstrap_ci(wide[model][metric].mean(axis=0), n_boot=500)[0])
    worse = np.delete(wide["worse"]["DSC"].mean(axis=0), 5)
    assert result.loc[("worse", "DSC"), "n_cases"] == 29
    assert result.loc[("worse", "DSC"), "mean"] == pytest.approx(worse.mean())


@pytest.mark.parametrize("metric", list(DIRECTIONS))
def test_dataset_statistics_tests_against_reference(table, metric):
    wide = _wide()
    result = dataset_statistics(table, REFERENCE, DIRECTIONS, n_boot=500)
    result = result[result["metric"] == metric].set_index("model")

    ref = result.loc[REFERENCE]
    assert pd.isna(ref["n_pairs"]) and ref["better"] == ""
    assert np.isnan(ref[["diff", "statistic", "p_value", "p_holm"]].astype(float)).all()

    # Paired by case_id: case_005 is dropped from the reference side too.
    ref_means = np.delete(wide[REFERENCE][metric].mean(axis=0), 5)
    worse_means = np.delete(wide["worse"][metric].mean(axis=0), 5)
    worse = result.loc["worse"]
    assert worse["n_pairs"] == 29
    assert worse["diff"] == pytest.approx(np.mean(ref_means - worse_means))
    # ``worse`` is worse on every one of the 29 pairs (DSC lower by 0.05-0.15, HD95 higher by 2-6),
    # so all differences share a sign: only 1 of the 2^29 sign patterns is that extreme on each
    # side, p = 2 / 2^29 = 2^-28 exactly.
    assert np.all(np.sign(ref_means - worse_means) == (1 if DIRECTIONS[metric] else -1))
    assert worse["p_value"] == pytest.approx(2.0 ** -28, rel=1e-9)
    assert worse["p_holm"] < 1e-4 and worse["better"] == "reference"

    same = result.loc["same"]
    assert same["n_pairs"] == 30 and same["diff"] == 0.0
    assert same["p_value"] == 1.0 and same["p_holm"] == 1.0 and same["better"] == ""

    assert result.loc["better", "better"] == "model"

    baselines = result.drop(index=REFERENCE)
    np.testing.assert_allclose(baselines["p_holm"], holm(baselines["p_value"]))


def test_dataset_statistics_ignore_row_order(table):
    ordered = table.sort_values(["model", "metric", "seed", "case_id"])

    def run(cases):
        result = dataset_statistics(cases, REFERENCE, DIRECTIONS, n_boot=300)
        return result.sort_values(["model", "metric"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(run(table), run(ordered))


def test_dataset_statistics_reference_goes_first():
    cases = _long({"unet": _wide(5)["worse"], REFERENCE: _wide(5)[REFERENCE]})
    result = dataset_statistics(cases, REFERENCE, DIRECTIONS, n_boot=100)
    assert result["model"].tolist() == [REFERENCE, "unet", REFERENCE, "unet"]


def test_dataset_statistics_rejects_two_datasets():
    cases = pd.concat([_long(_wide(5), dataset="acdc"), _long(_wide(5), dataset="brats")])
    with pytest.raises(ValueError, match="acdc.*brats"):
        dataset_statistics(cases, REFERENCE, DIRECTIONS)


def test_dataset_statistics_rejects_missing_reference(table):
    with pytest.raises(ValueError, match="models present.*worse"):
        dataset_statistics(table[table["model"] != REFERENCE], REFERENCE, DIRECTIONS)


def test_dataset_statistics_rejects_unknown_metric_direction(table):
    with pytest.raises(ValueError, match="HD95"):
        dataset_statistics(table, REFERENCE, {"DSC": True})


def test_dataset_statistics_rejects_missing_columns(table):
    with pytest.raises(ValueError, match="seed"):
        dataset_statistics(table.drop(columns="seed"), REFERENCE, DIRECTIONS)


# write_statistics

def test_write_statistics_round_trips(table, tmp_path):
    result = dataset_statistics(table, REFERENCE, DIRECTIONS, n_boot=200)
    path = write_statistics(result, tmp_path / "tables" / "acdc.csv")
    assert sorted(p.name for p in path.parent.iterdir()) == ["acdc.csv"]
    back = pd.read_csv(path, keep_default_na=False, na_values=[""])
    assert list(back.columns) == list(STATISTICS_COLUMNS)
    assert back["better"].fillna("").tolist() == result["better"].tolist()
    for column in ("mean", "ci_low", "ci_high", "diff", "p_value", "p_holm", "n_pairs"):
        np.testing.assert_allclose(back[column], result[column].astype(float), rtol=1e-5)


def test_write_statistics_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "acdc.csv"
    path.write_text("old\n")

    class Broken(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_statistics(Broken({"a": [1.0]}), path)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["acdc.csv"]
