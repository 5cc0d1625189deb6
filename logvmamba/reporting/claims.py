"""The paper's claims, each with its evidence and a verdict, and the rank-stability table.

A claim compares two models on a dataset's main metric over the cases both scored
(per-case means over runs, :func:`logvmamba.reporting.stats.case_means`). Its
evidence is the mean paired difference in the claimed direction (positive: the
claim's winner is better), its paired bootstrap 95 % CI and the two-sided Wilcoxon
signed-rank p-value, Holm-adjusted over the comparisons of the claim on that dataset.
:func:`verdict` states the rule. The FLOPs claim is a count, not a sample: it holds
or not. Comparisons whose models the config does not run are listed as not tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from logvmamba.data import get_info
from logvmamba.reporting.collect import HIGHER_IS_BETTER, dataset_title, published
from logvmamba.reporting.stats import case_means, holm, paired_bootstrap_ci, paired_wilcoxon, rank_probabilities
from logvmamba.reporting.tables import Column, Table, table_caption

__all__ = ["VERDICTS", "VERDICT_RULE", "Claim", "paper_claims", "verdict", "compare", "claims_table",
           "rank_table", "rank_stability"]

ALPHA = 0.05
VERDICTS = ("supported", "not supported", "inconclusive", "not tested")
VERDICT_RULE = (f"Verdict: supported when the paired-difference 95% CI excludes 0 in the claimed direction and the "
                f"Holm-adjusted Wilcoxon p < {ALPHA}; not supported when the CI excludes 0 the other way; "
                "inconclusive otherwise (the CI contains 0, or the test is not significant); not tested when the "
                "config does not run both models. FLOPs: a count (fvcore, paper-size networks), supported when lower.")

# The paper's baselines by family (LoG-VMamba, ACCV 2024, Tables 1-2).
FAMILIES = {
    "CNN": ("nnunet", "segresnet"),
    "Transformer": ("unetr", "swin_unetr", "nnformer"),
    "Vision-Mamba": ("umamba_bot", "umamba_enc", "swin_umamba", "swin_umamba_d"),
}
# Controls the paper did not run: nnU-Net Revisited's strong CNNs.
CONTROL_BASELINES = ("nnunet_resenc_m", "nnunet_resenc_l")


@dataclass(frozen=True)
class Claim:
    """``winner`` beats each of ``others`` on the main metric (or needs fewer FLOPs, ``kind="flops"``)."""

    name: str
    pairs: tuple[tuple[str, str], ...]   # (claimed better, other); Holm runs over them per dataset
    scope: str = "main"                  # main: the config's datasets; ablation: the ablation datasets
    kind: str = "score"


def paper_claims(reference: str = "logvmamba") -> list[Claim]:
    """The claims of the LoG-VMamba paper, and the No-Mamba control (issue: do the LoG layers help?)."""
    baselines = tuple((reference, m) for family in FAMILIES.values() for m in family)
    return [
        Claim("LoG-VMamba beats each CNN, Transformer and Vision-Mamba baseline", baselines),
        Claim("LoG-VMamba beats nnU-Net ResEnc M / L (nnU-Net Revisited's baselines, not in the paper)",
              tuple((reference, m) for m in CONTROL_BASELINES)),
        Claim("Mixers: LoG > L-VMamba, LoG > G-VMamba, both > vanilla",
              ((reference, "logvmamba_local"), (reference, "logvmamba_global"),
               ("logvmamba_local", "logvmamba_vanilla"), ("logvmamba_global", "logvmamba_vanilla")), scope="ablation"),
        Claim("Interleaved placement beats head / center / split",
              tuple((reference, f"logvmamba_{p}") for p in ("head", "center", "split")), scope="ablation"),
        Claim("LoG-VMamba needs fewer FLOPs than Swin-UMamba† and U-Mamba-Enc",
              ((reference, "swin_umamba_d"), (reference, "umamba_enc")), kind="flops"),
        Claim("Control: LoG-VMamba beats its No-Mamba control", ((reference, "logvmamba_nomamba"),), scope="ablation"),
        Claim("Control: U-Mamba-Bot / -Enc beat their No-Mamba controls",
              (("umamba_bot", "umamba_bot_nomamba"), ("umamba_enc", "umamba_enc_nomamba"))),
    ]


def verdict(diff: float, ci_low: float, ci_high: float, p_holm: float) -> str:
    """The rule of :data:`VERDICT_RULE`; ``diff`` and the CI are oriented so that positive favours the claim."""
    if not all(np.isfinite(v) for v in (diff, ci_low, ci_high)):
        return "not tested"
    if ci_low > 0 and np.isfinite(p_holm) and p_holm < ALPHA:
        return "supported"
    if ci_high < 0:
        return "not supported"
    return "inconclusive"


def compare(means: pd.DataFrame, a: str, b: str, metric: str, n_boot: int = 10000, seed: int = 0) -> dict:
    """``a`` against ``b`` on ``metric`` over the cases both scored; positive ``diff``: ``a`` is better."""
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    sub = means[means.metric == metric]
    x = sub[sub.model == a].set_index("case_id")["value"]
    y = sub[sub.model == b].set_index("case_id")["value"]
    x, y = x.align(y, join="inner")
    d_a, d_b = sign * x.to_numpy(dtype=float), sign * y.to_numpy(dtype=float)
    test = paired_wilcoxon(d_a, d_b)
    low, high = paired_bootstrap_ci(d_a, d_b, n_boot=n_boot, seed=seed)
    return {"n": test["n"], "diff": test["mean_diff"], "ci_low": low, "ci_high": high, "p_value": test["p_value"]}


def _flops(profiles: pd.DataFrame | None, dataset: str, model: str) -> float:
    if profiles is None or not len(profiles):
        return math.nan
    hit = profiles[(profiles.dataset == dataset) & (profiles.model == model)]
    return float(hit.gflops.iloc[0]) if len(hit) else math.nan


def _claim_rows(claim: Claim, datasets: Sequence[str], means: pd.DataFrame, profiles, reference_table,
                trained: set, label, n_boot: int) -> list[dict]:
    rows, untested = [], []
    for dataset in datasets:
        info = get_info(dataset)
        metric = info.main_metric
        block = []
        for a, b in claim.pairs:
            have = {(dataset, a), (dataset, b)} <= trained
            if claim.kind == "flops":
                fa, fb = _flops(profiles, dataset, a), _flops(profiles, dataset, b)
                if math.isnan(fa) or math.isnan(fb):
                    untested.append((dataset, b))
                    continue
                pub_a = published(reference_table, dataset, a, "gflops", "logvmamba-paper-fig5")
                pub_b = published(reference_table, dataset, b, "gflops", "logvmamba-paper-fig5")
                pub = "" if math.isnan(pub_a) or math.isnan(pub_b) else f"; published {pub_a:g} vs {pub_b:g}"
                block.append({"Claim": claim.name, "Dataset": dataset_title(dataset), "Comparison": f"{label(a)} vs {label(b)}",
                              "Metric": "GFLOPs", "diff": fb - fa, "ci_low": math.nan, "ci_high": math.nan,
                              "p_holm": math.nan, "n": math.nan,
                              "Evidence": f"{fa:.1f} vs {fb:.1f} GFLOPs{pub}",
                              "Verdict": "supported" if fa < fb else "not supported"})
                continue
            if not have:
                untested.append((dataset, b if (dataset, a) in trained else a))
                continue
            result = compare(means[means.dataset == dataset], a, b, metric, n_boot=n_boot)
            if result["n"] == 0:
                untested.append((dataset, b))
                continue
            block.append({"Claim": claim.name, "Dataset": dataset_title(dataset), "Comparison": f"{label(a)} > {label(b)}",
                          "Metric": metric, "diff": result["diff"], "ci_low": result["ci_low"],
                          "ci_high": result["ci_high"], "p_value": result["p_value"], "n": result["n"]})
        if claim.kind != "flops" and block:
            for row, p in zip(block, holm([r["p_value"] for r in block])):
                row["p_holm"] = float(p)
                row["Verdict"] = verdict(row["diff"], row["ci_low"], row["ci_high"], row["p_holm"])
                row["Evidence"] = (f"Δ {row['diff']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}], "
                                   f"p_Holm {row['p_holm']:.3g}, {row['n']} cases")
        rows += block
    if untested:
        missing = list(dict.fromkeys(label(m) for _, m in untested))
        rows.append({"Claim": claim.name, "Dataset": "–", "Comparison": "vs " + ", ".join(missing), "Metric": "–",
                     "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_holm": math.nan, "n": math.nan,
                     "Evidence": "these models are not run by this config (or have no profile)",
                     "Verdict": "not tested"})
    return rows


def claims_table(config: Mapping, cases: pd.DataFrame, profiles: pd.DataFrame | None, reference_table: pd.DataFrame,
                 prov: Mapping, claims: Sequence[Claim] | None = None) -> Table:
    """The claims table (``claims``): one row per claim x dataset x comparison."""
    from logvmamba.config import config_models, model_label, run_grid

    ref = (config.get("report") or {}).get("reference", "logvmamba")
    claims = paper_claims(ref) if claims is None else claims
    n_boot = (config.get("report") or {}).get("bootstrap", 10000)
    trained = {(d, m) for d, m, *_ in run_grid(config)}
    known = set(config_models(config))
    main = [d for d in config["datasets"]]
    ablation = [d for d in (config.get("ablations") or {}).get("datasets", main)]
    means = case_means(cases) if len(cases) else pd.DataFrame(columns=["dataset", "model", "metric", "case_id", "value"])

    def label(m: str) -> str:
        return model_label(config, m) if m in known or m in config["recipes"] else m

    rows = []
    for claim in claims:
        rows += _claim_rows(claim, ablation if claim.scope == "ablation" else main, means, profiles, reference_table,
                            trained, label, n_boot)
    columns = [Column("Verdict", "Verdict", 0), Column("diff", "Δ (claimed − other)", 4),
               Column("ci_low", "95% CI low", 4), Column("ci_high", "95% CI high", 4),
               Column("p_holm", "p (Holm)", 4), Column("n", "Cases", 0), Column("Evidence", "Evidence", 0)]
    demo = (" The data are the suite's synthetic demo and the networks its reduced _test variants trained briefly: "
            "the verdicts are about this demo, not about the paper." if prov["data"] == "synthetic" else "")
    extra = (f"Δ: mean over cases of the paired difference of the dataset's main metric (per-case means over "
             f"runs), signed so that positive favours the claim; CI: paired percentile bootstrap ({n_boot} resamples); "
             f"p: two-sided Wilcoxon signed-rank test, Holm over the comparisons of a claim on a dataset. "
             f"{VERDICT_RULE}{demo}")
    caption = table_caption(prov, config, extra, stats_note=False, ours="", columns=[])
    table = Table("claims", "Claims of the paper: evidence and verdict", caption, ["Claim", "Dataset", "Comparison", "Metric"],
                  columns)
    for row in rows:
        table.rows.append({k: v for k, v in row.items() if k != "p_value"})
    return table


def rank_stability(config: Mapping, cases: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """Per dataset and model: the bootstrap probability of each rank on the main metric (long format:
    ``dataset, model, rank, probability``, plus ``mean_rank`` and ``n_cases`` per row)."""
    n_boot = (config.get("report") or {}).get("bootstrap", 10000)
    frames = []
    means = case_means(cases) if len(cases) else None
    for dataset in dict.fromkeys(cases.dataset) if len(cases) else []:
        metric = get_info(dataset).main_metric
        sub = means[(means.dataset == dataset) & (means.metric == metric) & means.model.isin(models)]
        wide = sub.pivot(index="case_id", columns="model", values="value")
        wide = wide[[m for m in models if m in wide.columns]]
        if wide.shape[1] == 0:
            continue
        probs = rank_probabilities(wide, HIGHER_IS_BETTER[metric], n_boot=n_boot)
        ranks = [c for c in probs.columns if isinstance(c, (int, np.integer))]
        for model, row in probs.iterrows():
            expected = float(sum(r * row[r] for r in ranks))
            for r in ranks:
                frames.append(dict(dataset=dataset, model=model, rank=int(r), probability=float(row[r]),
                                   mean_rank=expected, rank_of_mean=int(row["rank"]), n_cases=int(row["n_cases"])))
    return pd.DataFrame(frames, columns=["dataset", "model", "rank", "probability", "mean_rank", "rank_of_mean", "n_cases"])


def rank_table(config: Mapping, ranks: pd.DataFrame, prov: Mapping) -> Table:
    """The rank-stability table (``rank_stability``): P(rank = k) per dataset and model."""
    from logvmamba.config import model_label

    n_models = int(ranks["rank"].max()) if len(ranks) else 0
    columns = [Column(f"p_rank{k}", f"P(rank {k})", 3) for k in range(1, n_models + 1)]
    columns += [Column("mean_rank", "Mean rank", 2), Column("rank_of_mean", "Rank of the mean", 0),
                Column("n_cases", "Cases", 0)]
    n_boot = (config.get("report") or {}).get("bootstrap", 10000)
    extra = (f"Rank stability on each dataset's main metric: the cases are resampled with replacement "
             f"({n_boot} times, the same cases for every model), the models re-ranked by their mean (1: best, ties "
             "share the better rank); P(rank k): the fraction of resamples with that rank. A model whose rank-1 "
             "probability is far below 1 does not win reliably on these cases.")
    caption = table_caption(prov, config, extra, stats_note=False, ours="", columns=[])
    table = Table("rank_stability", "Rank stability: bootstrap distribution of each model's rank", caption,
                  ["Dataset", "Model"], columns)
    for (dataset, model), group in ranks.groupby(["dataset", "model"], sort=False):
        row = {"Dataset": dataset_title(dataset), "Model": model_label(config, model), "_model": model}
        for r in group.itertuples():
            row[f"p_rank{r.rank}"] = r.probability
        first = group.iloc[0]
        row.update(mean_rank=float(first.mean_rank), rank_of_mean=float(first.rank_of_mean), n_cases=float(first.n_cases))
        table.rows.append(row)
    return table
