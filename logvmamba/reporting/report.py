"""What the report rules run: statistics, tables and Figure 5 from ``results/``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from logvmamba.data import get_info
from logvmamba.data.registry import registered
from logvmamba.reporting.collect import (
    HIGHER_IS_BETTER,
    dataset_title,
    user_dataset_note,
    load_budget,
    load_cases,
    load_profiles,
    load_reference,
    load_runs,
    provenance,
    published,
)

__all__ = ["statistics_from_results", "tables_from_results", "figures_from_results", "rank_figure_from_results",
           "figure_points", "FIGURE_AXES"]

# x column of the profile table, axis label, published metric (None: never published)
FIGURE_AXES = {
    "gflops": ("gflops", "GFLOPs", "gflops"),
    "params": ("params_M", "Parameters (M)", "params_M"),
    "latency": ("latency_inference_ms", "Inference latency (ms, batch 1)", None),
}
# Figure 5 prefers the LoG-VMamba figure's points (its protocol), then the Swin-UMamba table.
FIGURE_SOURCES = ("logvmamba-paper-fig5", "swin-umamba-paper-table")


def _reference_model(config: Mapping) -> str:
    return config.get("report", {}).get("reference", "logvmamba")


def statistics_from_results(config: Mapping, root: str | Path, dataset: str, out_csv: str | Path) -> pd.DataFrame:
    """Bootstrap CIs and paired tests of every run on ``dataset``; written to ``out_csv``."""
    from logvmamba.config import register_datasets, run_grid
    from logvmamba.reporting.stats import dataset_statistics, write_statistics

    register_datasets(config)
    cases = load_cases(root, run_grid(config, dataset))
    stats = dataset_statistics(cases, _reference_model(config), HIGHER_IS_BETTER,
                               n_boot=config.get("report", {}).get("bootstrap", 10000))
    write_statistics(stats, out_csv)
    return stats


def _collect(config: Mapping, root, reference_csv, configs, ablations: bool = True):
    from logvmamba.config import register_datasets, run_grid

    register_datasets(config)
    grid = run_grid(config, ablations=ablations)
    pairs = list(dict.fromkeys((d, m) for d, m, *_ in grid))
    runs = load_runs(root, grid)
    profiles = load_profiles(root, pairs, config["profile"]["devices"])
    prov = provenance(root, grid, configs, profiles)
    return grid, runs, profiles, load_reference(reference_csv), prov


def tables_from_results(config: Mapping, root: str | Path, reference_csv, configs: Sequence[str], out_dir) -> list[Path]:
    """Every table (:func:`logvmamba.reporting.tables.table_names`) in CSV, Markdown, LaTeX and HTML."""
    from logvmamba.reporting.tables import build_tables, write_tables

    grid, runs, profiles, reference, prov = _collect(config, root, reference_csv, configs)
    datasets = list(dict.fromkeys(d for d, *_ in grid))
    stats = pd.concat([pd.read_csv(Path(out_dir) / f"stats_{d}.csv") for d in datasets], ignore_index=True)
    from logvmamba.reporting.claims import claims_table, rank_stability, rank_table

    tables = build_tables(config, runs, profiles, stats, reference, prov, datasets, budget=load_budget(root, grid))
    cases = load_cases(root, grid)
    main = cases[cases.dataset.isin(config["datasets"]) & cases.model.isin(config["models"])]
    tables += [rank_table(config, rank_stability(config, main, list(config["models"])), prov),
               claims_table(config, cases, profiles, reference, prov)]
    return write_tables(tables, out_dir, prov)


def figure_points(runs: pd.DataFrame, profiles: pd.DataFrame, reference: pd.DataFrame, models: Sequence[str],
                  x: str, device: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, published) frames of one Figure 5 variant: each seed's figure-metric score against cost ``x``."""
    column, _, pub_metric = FIGURE_AXES[x]
    prof = profiles[profiles.device == device].set_index(["dataset", "model"])[column]
    figure_metric = {key: info.figure_metric for key, info in registered().items()}
    keep = runs[runs.model.isin(models) & (runs.metric == runs.dataset.map(figure_metric))]
    points = pd.DataFrame({
        "dataset": keep.dataset, "model": keep.model, "seed": keep.seed, "score": keep.value,
        "x": [float(prof.get((d, m), math.nan)) for d, m in zip(keep.dataset, keep.model)],
    })
    rows = []
    for dataset in dict.fromkeys(points.dataset):
        metric = get_info(dataset).figure_metric
        for model in models:
            for source in FIGURE_SOURCES:
                score = published(reference, dataset, model, metric, source)
                if math.isnan(score):
                    continue
                cost = published(reference, dataset, model, pub_metric, source) if pub_metric else math.nan
                if math.isnan(cost) and pub_metric:
                    cost = next((v for s in FIGURE_SOURCES if not math.isnan(v := published(reference, dataset, model, pub_metric, s))), math.nan)
                rows.append(dict(dataset=dataset, model=model, score=score, x=cost, source=source))
                break
    return points.reset_index(drop=True), pd.DataFrame(rows, columns=["dataset", "model", "score", "x", "source"])


def _figure_caption(config: Mapping, prov: Mapping, x: str, device: str, profiles: pd.DataFrame, n_runs: int,
                    published: pd.DataFrame) -> str:
    from logvmamba.config import model_label
    from logvmamba.reporting.collect import SOURCES

    ref = model_label(config, _reference_model(config))
    if prov["data"] == "synthetic":
        data = ("Synthetic demo: scores of the reduced _test networks on the suite's synthetic stand-ins, "
                "not comparable with the published (hollow) points")
    else:
        data = f"{prov['data'].capitalize()} data"
    metric = ", ".join(f"{d}: {info.figure_metric}" for d, info in registered().items() if d in set(profiles.dataset))
    dev = next((r.device_name for r in profiles.itertuples() if r.device == device), device)
    flops_inputs = ", ".join(dict.fromkeys(f"{r.dataset} {r.flops_input}" for r in profiles.itertuples()))
    cost = {"gflops": f"GFLOPs (fvcore, scans counted) of the paper's architectures at inputs {flops_inputs}",
            "params": f"parameters of the paper's architectures built for inputs {flops_inputs}",
            "latency": f"inference latency at batch 1 on {device} ({dev}), input "
                       + ", ".join(sorted({f"{r.dataset} {r.runtime_input}" for r in profiles.itertuples() if r.runtime_input}))}[x]
    shown = published[published.x.notna() & published.score.notna()] if len(published) else published
    sources = "; ".join(f"{SOURCES[s]}" for s in dict.fromkeys(shown.source)) if len(shown) else "none for this axis"
    users = user_dataset_note(config["datasets"])
    return (f"{data}.{' ' + users if users else ''} y: {metric}; x: {cost}. Stars: mean over runs (folds x seeds, up to {n_runs}); dots: single runs; "
            f"arrows: gap of {ref} to the annotated baselines (x100). Hollow: published ({sources}). "
            f"Trained on {', '.join(prov['train_devices'])}; config {', '.join(prov['configs'])}; commit {prov['commit']}.")


def figures_from_results(config: Mapping, root: str | Path, reference_csv, configs: Sequence[str], out_dir) -> list[Path]:
    """Figure 5 against GFLOPs, parameters and latency, PNG and PDF each."""
    from logvmamba.config import config_folds, model_label
    from logvmamba.reporting.figures import efficiency_figure

    _, runs, profiles, reference, prov = _collect(config, root, reference_csv, configs, ablations=False)
    models = list(config["models"])
    settings = config.get("report", {})
    device = settings.get("device", config["profile"]["devices"][0])
    datasets = [d for d in config["datasets"]]
    labels = {m: model_label(config, m) for m in models}
    written = []
    for x, (_, x_label, _) in FIGURE_AXES.items():
        points, pub = figure_points(runs, profiles, reference, models, x, device)
        caption = _figure_caption(config, prov, x, device, profiles, len(config["seeds"]) * len(config_folds(config)), pub)
        written += efficiency_figure(
            points, pub, Path(out_dir) / f"figure5_{x}.png", Path(out_dir) / f"figure5_{x}.pdf",
            x_label=x_label, y_labels={d: info.figure_metric.replace("_mean", " mean") for d, info in registered().items()},
            titles={d: dataset_title(d) for d in datasets}, labels=labels, reference=_reference_model(config),
            annotate=settings.get("annotate", ["nnunet", "umamba_enc", "swin_unetr"]), caption=caption,
            datasets=datasets,
        )
    return written


def rank_figure_from_results(config: Mapping, root: str | Path, configs: Sequence[str], out_png, out_pdf) -> list[Path]:
    """The rank-stability figure of the config's models on its datasets (main metric), PNG and PDF."""
    from logvmamba.config import model_label, register_datasets, run_grid
    from logvmamba.reporting.claims import rank_stability
    from logvmamba.reporting.figures import rank_figure

    register_datasets(config)
    grid = run_grid(config, ablations=False)
    cases = load_cases(root, grid)
    ranks = rank_stability(config, cases, list(config["models"]))
    prov = provenance(root, grid, configs)
    data = ("Synthetic demo (reduced _test networks trained briefly): ranks on the demo, not the paper's"
            if prov["data"] == "synthetic" else f"{prov['data'].capitalize()} data")
    n_boot = config.get("report", {}).get("bootstrap", 10000)
    metrics = ", ".join(f"{dataset_title(d)}: {get_info(d).main_metric}" for d in dict.fromkeys(ranks.dataset))
    caption = (f"{data}. Rank stability: cases resampled with replacement ({n_boot} times), models re-ranked by the "
               f"mean of the main metric ({metrics}); bar segments: probability of each rank (1: best). "
               f"Trained on {', '.join(prov['train_devices'])}; config {', '.join(prov['configs'])}; commit {prov['commit']}.")
    labels = {m: model_label(config, m) for m in config["models"]}
    titles = {d: dataset_title(d) for d in dict.fromkeys(ranks.dataset)}
    return list(rank_figure(ranks, out_png, out_pdf, labels=labels, titles=titles, caption=caption))
