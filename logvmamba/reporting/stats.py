"""Statistics for the result tables: bootstrap CIs over test cases, paired Wilcoxon tests, Holm.

The input is the long "cases" table, one row per scored case, metric and run:
``dataset, model, seed, case_id, metric, value`` and optionally ``fold``. Scores
are first averaged over the runs (folds x seeds) that scored a case
(:func:`case_means`): under cross-validation each case is in one fold, so this is
its mean over seeds; a test case scored by every fold's model counts once. A
model's confidence interval is a percentile bootstrap of the mean over cases;
each baseline is compared with the reference model by a two-sided Wilcoxon
signed-rank test on the cases both have, Holm-adjusted over the baselines of a
metric, and by the paired bootstrap CI of the mean difference
(:func:`dataset_statistics`). :func:`rank_probabilities` resamples cases and
re-ranks the models (rank stability). Non-finite values (NaN, inf) count as missing.

Examples::

    >>> import pandas as pd
    >>> cases = pd.DataFrame({
    ...     "dataset": "acdc", "model": ["logvmamba"] * 3 + ["unet"] * 3, "seed": 0,
    ...     "case_id": ["a", "b", "c"] * 2, "metric": "Dice",
    ...     "value": [0.9, 0.8, 0.85, 0.7, 0.75, 0.8]})
    >>> table = dataset_statistics(cases, "logvmamba", {"Dice": True}, n_boot=1000)
    >>> table[["model", "n_pairs", "p_value"]].values.tolist()
    [['logvmamba', <NA>, nan], ['unet', 3, 0.25]]
    >>> paired_bootstrap_ci([1.0, 2.0], [1.0, 1.0], n_boot=2000)  # differences 0 and 1
    (0.0, 1.0)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from logvmamba.io import atomic_write

__all__ = [
    "CASE_COLUMNS",
    "STATISTICS_COLUMNS",
    "bootstrap_ci",
    "case_means",
    "paired_bootstrap_ci",
    "rank_probabilities",
    "dataset_statistics",
    "holm",
    "paired_wilcoxon",
    "write_statistics",
]

CASE_COLUMNS = ("dataset", "model", "seed", "case_id", "metric", "value")
STATISTICS_COLUMNS = (
    "dataset", "model", "metric", "n_cases", "n_runs", "mean", "ci_low", "ci_high",
    "reference", "n_pairs", "diff", "diff_ci_low", "diff_ci_high", "statistic", "p_value", "p_holm", "better",
)
_ALPHA = 0.05


def _as_1d(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D array, got shape {x.shape}")
    return x


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Args:
        values: 1-D scores; non-finite entries are dropped first.
        level: Coverage, in (0, 1).
        n_boot: Number of resamples.
        seed: Seed of ``np.random.default_rng``; the same seed gives the same interval.

    Returns:
        ``(low, high)``; ``(nan, nan)`` without values, ``(v, v)`` for a single value.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    x = _as_1d(values)
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    if n == 1:
        return float(x[0]), float(x[0])
    res = stats.bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                                rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap_ci(a, b, level: float = 0.95, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean paired difference ``a - b``: cases resampled with
    replacement, both scores of a case together; pairs with a non-finite score are dropped.

    Returns ``(nan, nan)`` without pairs, ``(d, d)`` for one pair.
    """
    a, b = _as_1d(a), _as_1d(b)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have equal length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    return bootstrap_ci(a[keep] - b[keep], level=level, n_boot=n_boot, seed=seed)


def rank_probabilities(scores: pd.DataFrame, higher_is_better: bool, n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """The bootstrap distribution of each model's rank (rank stability, as challenge reports show it).

    Args:
        scores: one row per case, one column per model (per-case means); only the cases
            every model scored are used.
        higher_is_better: the metric's direction.
        n_boot: resamples of the cases (with replacement, the same cases for every model).
        seed: of ``np.random.default_rng``.

    Returns:
        Rows the models (``scores``' column order), columns ``1 .. n_models``: the fraction
        of resamples in which the model has that rank (1 the best), plus ``rank`` (the rank of
        the mean over all cases) and ``n_cases``. Tied means share the better rank.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    values = scores.to_numpy(dtype=float)
    values = values[np.isfinite(values).all(axis=1)]
    models = list(scores.columns)
    ranks = list(range(1, len(models) + 1))
    out = pd.DataFrame(0.0, index=pd.Index(models, name="model"), columns=ranks)
    if not len(values) or not models:
        out[:] = np.nan
        return out.assign(rank=pd.NA, n_cases=len(values))
    sign = -1.0 if higher_is_better else 1.0
    rng = np.random.default_rng(seed)
    counts = np.zeros((len(models), len(models)))
    for start in range(0, n_boot, 1000):  # blocks: memory stays small for many cases
        take = rng.integers(0, len(values), size=(min(1000, n_boot - start), len(values)))
        means = sign * values[take].mean(axis=1)  # (resamples, models), lower is better
        rank = stats.rankdata(means, method="min", axis=1).astype(int)
        for m in range(len(models)):
            counts[m] += np.bincount(rank[:, m] - 1, minlength=len(models))
    out[:] = counts / n_boot
    full = stats.rankdata(sign * values.mean(axis=0), method="min").astype(int)
    return out.assign(rank=full, n_cases=len(values))


def paired_wilcoxon(a, b) -> dict:
    """Two-sided Wilcoxon signed-rank test of ``a - b`` over the pairs where both are finite.

    Returns:
        ``n``, ``mean_diff``, ``median_diff``, ``statistic`` and ``p_value``. Without
        pairs everything but ``n`` is NaN; when every difference is zero the
        statistic is NaN and ``p_value`` is 1 (identical scores are no evidence
        of a difference).
    """
    a, b = _as_1d(a), _as_1d(b)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have equal length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    out = {"n": int(d.size), "mean_diff": float("nan"), "median_diff": float("nan"),
           "statistic": float("nan"), "p_value": float("nan")}
    if d.size == 0:
        return out
    out.update(mean_diff=float(d.mean()), median_diff=float(np.median(d)))
    if not d.any():
        out["p_value"] = 1.0
        return out
    result = stats.wilcoxon(d)
    out.update(statistic=float(result.statistic), p_value=float(result.pvalue))
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order; NaN entries stay NaN and are not counted."""
    p = _as_1d(pvalues)
    valid = ~np.isnan(p)
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[valid].tolist()}")
    out = np.full(p.shape, np.nan)
    index = np.flatnonzero(valid)
    order = index[np.argsort(p[index], kind="stable")]
    m = order.size
    # The step-down adjustment is made monotone by a running maximum.
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _check_columns(cases: pd.DataFrame) -> None:
    missing = [c for c in CASE_COLUMNS if c not in cases.columns]
    if missing:
        raise ValueError(f"cases table lacks columns {missing}; it has {list(cases.columns)}")


def _run_keys(cases: pd.DataFrame) -> list[str]:
    return ["fold", "seed"] if "fold" in cases.columns else ["seed"]


def case_means(cases: pd.DataFrame) -> pd.DataFrame:
    """Mean over runs (folds x seeds) per ``(dataset, model, metric, case_id)``.

    Returns:
        Columns ``dataset, model, metric, case_id, value, n_runs``, groups in
        first-appearance order; ``n_runs`` counts the runs with a finite value,
        ``value`` is NaN where there is none.
    """
    _check_columns(cases)
    keys = ["dataset", "model", "metric", "case_id"]
    run = _run_keys(cases)
    duplicated = cases.duplicated(keys + run)
    if duplicated.any():
        first = cases.loc[duplicated, keys + run].iloc[0].to_dict()
        raise ValueError(f"cases table has more than one row for {first}")
    value = cases["value"].astype(float)
    value = value.where(np.isfinite(value))
    frame = cases[keys + run].assign(value=value)
    # Summing in run order makes identical scores give bit-identical means, whatever the row order.
    frame = frame.sort_values(run, kind="stable")
    frame["finite_run"] = pd.Series(list(zip(*(frame[k] for k in run))), index=frame.index).where(frame["value"].notna())
    out = frame.groupby(keys, sort=False).agg(value=("value", "mean"), n_runs=("finite_run", "nunique"))
    out = out.reindex(pd.MultiIndex.from_frame(cases[keys].drop_duplicates()))
    return out.reset_index().astype({"n_runs": int})


def _better(diff: float, p_holm: float, higher_is_better: bool) -> str:
    if not (p_holm < _ALPHA and np.isfinite(diff) and diff != 0):
        return ""
    return "reference" if (diff > 0) == higher_is_better else "model"


def dataset_statistics(cases: pd.DataFrame, reference: str, higher_is_better: Mapping[str, bool],
                       level: float = 0.95, n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Per model and metric of one dataset: mean over cases, bootstrap CI, and the comparison with ``reference``.

    Args:
        cases: One dataset's cases table (columns :data:`CASE_COLUMNS`).
        reference: The model every other model is compared with.
        higher_is_better: Direction of every metric in ``cases``.
        level, n_boot, seed: Passed to :func:`bootstrap_ci`.

    Returns:
        Columns :data:`STATISTICS_COLUMNS`, one row per (model, metric): metrics
        in first-appearance order, within each the reference first, then the
        other models in first-appearance order. ``diff`` is the mean of
        reference minus model over the cases both have (paired by ``case_id``);
        ``p_holm`` is adjusted over the baselines of the metric; ``better`` is
        ``"reference"``, ``"model"`` or ``""`` (``p_holm`` not below 0.05). The
        test columns are NaN and ``n_pairs`` is ``<NA>`` on the reference row.
    """
    _check_columns(cases)
    datasets = list(pd.unique(cases["dataset"]))
    if len(datasets) != 1:
        raise ValueError(f"dataset_statistics takes one dataset's cases, got datasets {datasets}")
    models = list(pd.unique(cases["model"]))
    if reference not in models:
        raise ValueError(f"reference model {reference!r} is not in the cases; models present: {models}")
    metrics = list(pd.unique(cases["metric"]))
    unknown = [m for m in metrics if m not in higher_is_better]
    if unknown:
        raise ValueError(f"higher_is_better has no direction for metrics {unknown}")

    means = case_means(cases)
    # Sorted by case_id so that the bootstrap does not depend on the row order of ``cases``.
    per_case = {key: group.set_index("case_id")["value"].sort_index()
                for key, group in means.groupby(["model", "metric"], sort=False)}
    empty = pd.Series(dtype=float)
    n_runs = cases.drop_duplicates(["model", *_run_keys(cases)]).groupby("model").size()
    order = [reference] + [m for m in models if m != reference]

    rows = []
    for metric in metrics:
        ref = per_case.get((reference, metric), empty)
        block = []
        for model in order:
            scores = per_case.get((model, metric), empty)
            low, high = bootstrap_ci(scores.to_numpy(), level=level, n_boot=n_boot, seed=seed)
            row = {"dataset": datasets[0], "model": model, "metric": metric,
                   "n_cases": int(scores.notna().sum()), "n_runs": int(n_runs[model]),
                   "mean": float(scores.mean()), "ci_low": low, "ci_high": high,
                   "reference": reference, "n_pairs": pd.NA, "diff": float("nan"),
                   "diff_ci_low": float("nan"), "diff_ci_high": float("nan"),
                   "statistic": float("nan"), "p_value": float("nan")}
            if model != reference:
                a, b = ref.align(scores, join="inner")
                test = paired_wilcoxon(a.to_numpy(), b.to_numpy())
                low, high = paired_bootstrap_ci(a.to_numpy(), b.to_numpy(), level=level, n_boot=n_boot, seed=seed)
                row.update(n_pairs=test["n"], diff=test["mean_diff"], diff_ci_low=low, diff_ci_high=high,
                           statistic=test["statistic"], p_value=test["p_value"])
            block.append(row)
        adjusted = holm([row["p_value"] for row in block[1:]])
        block[0].update(p_holm=float("nan"), better="")
        for row, p in zip(block[1:], adjusted):
            row.update(p_holm=float(p), better=_better(row["diff"], p, bool(higher_is_better[metric])))
        rows.extend(block)
    return pd.DataFrame(rows, columns=list(STATISTICS_COLUMNS)).astype({"n_pairs": "Int64"})


def write_statistics(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as CSV atomically (floats to 6 significant digits); return the path."""
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return Path(path)
