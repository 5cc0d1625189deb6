"""The paper's tables from the workflow's results: CSV, Markdown, LaTeX (booktabs) and HTML.

Tables: ``main_2d`` (Endoscopy, Cell), ``main_3d`` (BraTS, ACDC), ``ablation_mixers``,
``ablation_placements``, ``efficiency`` and ``statistics``. Each of our cells is
mean +- std over runs (folds x seeds) with the number of runs; the best of ours per column is bold;
published values stand in their own columns, one per source; the caption says
where the numbers came from. :func:`write_tables` is what the ``tables`` rule runs.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from logvmamba.data import get_info
from logvmamba.io import atomic_write_text
from logvmamba.reporting.collect import HIGHER_IS_BETTER, SOURCES, dataset_title, published, user_dataset_note

__all__ = ["Column", "Table", "table_names", "table_caption", "build_tables", "budget_table", "write_tables", "render_markdown", "render_latex",
           "render_html", "render_csv"]

SOURCE_TAGS = {source: tag for source, tag in zip(SOURCES, "abcdefgh")}
ALPHA = 0.05


@dataclass
class Column:
    key: str                    # CSV stem, e.g. endoscopy_DSC or endoscopy_DSC_pub_a
    header: str
    decimals: int
    higher: bool | None = None  # direction for bold; None: never bold
    source: str | None = None   # published column of this source


@dataclass
class Table:
    name: str
    title: str
    caption: str
    index: list[str]            # leading text columns (model label, ...)
    columns: list[Column]
    rows: list[dict] = field(default_factory=list)   # index values + {key: cell}; ours: (mean, std, n, mark)


def _is_2d(dataset: str) -> bool:
    return get_info(dataset).spatial_dims == 2


def _title(dataset: str) -> str:
    return dataset_title(dataset)


def table_names(config: Mapping, datasets: Sequence[str]) -> list[str]:
    """The tables a config produces (``datasets``: the datasets it runs)."""
    ablations = config.get("ablations") or {}
    main = [d for d in datasets if d in config["datasets"]]
    names = [n for n, dims in (("main_2d", True), ("main_3d", False)) if any(_is_2d(d) == dims for d in main)]
    names += [f"ablation_{k}" for k in ("mixers", "placements") if ablations.get(k)]
    return names + ["efficiency", "statistics", "budget", "rank_stability", "claims"]


# ---------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------

def _decimals(metric: str) -> int:
    return 2 if metric.startswith("HD95") else 4


def _display(metric: str) -> str:
    return metric.replace("_mean", " mean").replace("_", " ")


def _seed_stats(runs: pd.DataFrame) -> dict:
    """(dataset, model, metric) -> (mean, std, n) over runs (folds x seeds)."""
    grouped = runs.groupby(["dataset", "model", "metric"])["value"]
    agg = grouped.agg(["mean", "std", "count"])
    return {k: (r["mean"], r["std"] if r["count"] > 1 else math.nan, int(r["count"])) for k, r in agg.iterrows()}


def _marks(stats: pd.DataFrame | None) -> dict:
    """(dataset, model, metric) -> "down" (reference significantly better) / "up" / ""."""
    if stats is None or not len(stats):
        return {}
    out = {}
    for r in stats.itertuples():
        out[(r.dataset, r.model, r.metric)] = {"reference": "down", "model": "up"}.get(r.better if isinstance(r.better, str) else "", "")
    return out


def _sources_with(reference: pd.DataFrame, datasets: Sequence[str], models: Sequence[str], metric: str) -> list[str]:
    return [s for s in SOURCES if any(not math.isnan(published(reference, d, m, metric, s)) for d in datasets for m in models)]


def _metric_columns(dataset: str, metrics: Sequence[str], models, reference, with_cost: bool) -> list[Column]:
    cols = []
    if with_cost:
        for metric, header, dec in (("params_M", "Params (M)", 2), ("gflops", "GFLOPs", 1)):
            cols.append(Column(f"{dataset}_{metric}", f"{_title(dataset)} {header}", dec, higher=False))
            cols += [Column(f"{dataset}_{metric}_pub_{SOURCE_TAGS[s]}", f"pub. [{SOURCE_TAGS[s]}]", dec, source=s)
                     for s in _sources_with(reference, [dataset], models, metric)]
    for metric in metrics:
        cols.append(Column(f"{dataset}_{metric}", f"{_title(dataset)} {_display(metric)}", _decimals(metric),
                           higher=HIGHER_IS_BETTER[metric]))
        cols += [Column(f"{dataset}_{metric}_pub_{SOURCE_TAGS[s]}", f"pub. [{SOURCE_TAGS[s]}]", _decimals(metric), source=s)
                 for s in _sources_with(reference, [dataset], models, metric)]
    return cols


def _cost(profiles: pd.DataFrame, dataset: str, model: str, column: str) -> float:
    if profiles is None or not len(profiles):
        return math.nan
    hit = profiles[(profiles.dataset == dataset) & (profiles.model == model)]
    return float(hit[column].iloc[0]) if len(hit) else math.nan


def _fill_row(row: dict, columns: Sequence[Column], model: str, seeds: dict, marks: dict, profiles, reference) -> dict:
    for col in columns:
        dataset, rest = col.key.split("_", 1)
        metric = rest.split("_pub_")[0]
        if col.source is not None:
            row[col.key] = published(reference, dataset, model, metric, col.source)
        elif metric in ("params_M", "gflops"):
            row[col.key] = (_cost(profiles, dataset, model, metric), math.nan, None, "")
        else:
            mean, std, n = seeds.get((dataset, model, metric), (math.nan, math.nan, 0))
            row[col.key] = (mean, std, n, marks.get((dataset, model, metric), ""))
    return row


def table_caption(prov: Mapping, config: Mapping, extra: str = "", stats_note: bool = True, ours: str | None = None,
             columns: Sequence[Column] | None = None) -> str:
    """``columns``: the table's, whose published sources the caption names (None: every source)."""
    ref = config.get("report", {}).get("reference", "logvmamba")
    from logvmamba.config import model_label

    if prov["data"] == "synthetic":
        data = ("Synthetic demo data generated by the suite, not the paper's datasets: compare our rows with "
                "each other, not with the published columns")
    else:
        data = f"Data: {prov['data']} datasets"
    nets = ("reduced _test networks trained briefly" if config.get("model_variant") == "test"
            else "paper-size networks")
    if ours is None:
        ours = f"Ours: mean ± std over runs (folds x seeds; number of runs), {nets}; bold: best of ours per column."
    parts = [data + ".", user_dataset_note(config["datasets"]), ours]
    if stats_note:
        parts.append(f"↓ / ↑: {model_label(config, ref)} is significantly better / worse than this row "
                     f"(paired Wilcoxon signed-rank test over cases, Holm-adjusted p < {ALPHA}).")
    parts.append(extra)
    used = set(SOURCES) if columns is None else {c.source for c in columns if c.source}
    if used:
        parts.append("Published: " + "; ".join(f"[{SOURCE_TAGS[s]}] {text}" for s, text in SOURCES.items() if s in used) + ".")
    parts.append(f"Trained on {', '.join(prov['train_devices'])}; config {', '.join(prov['configs'])}; "
                 f"commit {prov['commit']}.")
    return " ".join(p for p in parts if p)


def _cost_note(profiles: pd.DataFrame) -> str:
    if profiles is None or not len(profiles):
        return ""
    sizes = list(dict.fromkeys(f"{_title(r.dataset)} {r.flops_input}" for r in profiles.itertuples()))
    return (f"Params and GFLOPs (fvcore, scans counted): the paper's architectures built for the inputs "
            f"{', '.join(sizes)} (batch 1).")


def _model_table(name, title, datasets, models, field_name, runs, profiles, stats, reference, config, prov,
                 with_cost=True) -> Table:
    """One row per model over ``datasets``; ``field_name``: the DatasetInfo field listing the columns."""
    from logvmamba.config import model_label

    metrics = {d: list(getattr(get_info(d), field_name)) for d in datasets}

    seeds, marks = _seed_stats(runs), _marks(stats)
    columns = [c for d in datasets for c in _metric_columns(d, metrics[d], models, reference, with_cost)]
    caption = table_caption(prov, config, _cost_note(profiles[profiles.dataset.isin(datasets)]) if with_cost else "",
                       columns=columns)
    table = Table(name, title, caption, ["Model"], columns)
    for model in models:
        if not any((d, model, metrics[d][0]) in seeds for d in datasets):
            continue
        table.rows.append(_fill_row({"Model": model_label(config, model), "_model": model}, columns, model, seeds, marks,
                                    profiles, reference))
    return table


def _efficiency_table(profiles, reference, config, prov) -> Table:
    from logvmamba.config import model_label

    def published_columns(metric: str, decimals: int) -> list[Column]:
        sources = dict.fromkeys(reference[reference.metric == metric].source)
        return [Column(f"{metric}_pub_{SOURCE_TAGS[s]}", f"pub. [{SOURCE_TAGS[s]}]", decimals, source=s)
                for s in SOURCES if s in sources]

    cols = [Column("params_M", "Params (M)", 2, higher=False), *published_columns("params_M", 0),
            Column("gflops", "GFLOPs", 1, higher=False), *published_columns("gflops", 1)]
    cols += [Column("latency_inference_ms", "Inference (ms)", 1, higher=False),
             Column("memory_inference_MiB", "Inference peak (MiB)", 0, higher=False),
             Column("latency_train_ms", "Train step (ms)", 1, higher=False),
             Column("memory_train_MiB", "Train peak (MiB)", 0, higher=False)]
    sizes = "; ".join(sorted({f"{_title(r.dataset)}: FLOPs at {r.flops_input}"
                              + (f", runtime at {r.runtime_input}" if r.runtime_input else ", runtime not measured")
                              for r in profiles.itertuples()}))
    devices = "; ".join(prov["profile_devices"])
    cpu = profiles[profiles.device == "cpu"]
    if len(cpu) and cpu.load.notna().any():
        devices += (f" (CPU load average {cpu.load.min():.1f}-{cpu.load.max():.1f} during the measurements: "
                    "other workflow jobs ran beside them, so CPU timings are indicative)")
    extra = (f"Batch 1; latency is the median of the timed runs, memory the peak increase during one call "
             f"(inference: forward under inference_mode; train step: forward, backward, optimizer step). "
             f"Inputs: {sizes}. Devices: {devices}. Bold: lowest per dataset and device.")
    title = "Efficiency: parameters, FLOPs, latency and memory"
    caption = table_caption(prov, config, extra, stats_note=False,
                       ours="Ours: the paper's architectures, measured by the suite's profile rule.", columns=cols)
    table = Table("efficiency", title, caption, ["Dataset", "Model", "Device"], cols)
    for r in profiles.itertuples():
        row = {"Dataset": _title(r.dataset), "Model": model_label(config, r.model), "Device": r.device,
               "_group": (r.dataset, r.device), "_model": r.model}
        for col in cols:
            if col.source is not None:
                row[col.key] = published(reference, r.dataset, r.model, col.key.split("_pub_")[0], col.source)
            else:
                row[col.key] = (getattr(r, col.key), math.nan, None, "")
        table.rows.append(row)
    return table


def _statistics_table(stats: pd.DataFrame, config, prov) -> Table:
    from logvmamba.config import model_label

    cols = [Column("n_cases", "Cases", 0), Column("n_runs", "Runs", 0),
            Column("mean", "Mean", 4), Column("ci_low", "95% CI low", 4), Column("ci_high", "95% CI high", 4),
            Column("diff", "Ref. − model", 4), Column("diff_ci_low", "Diff. CI low", 4),
            Column("diff_ci_high", "Diff. CI high", 4), Column("p_value", "p", 4), Column("p_holm", "p (Holm)", 4)]
    ref = config.get("report", {}).get("reference", "logvmamba")
    extra = (f"Main metric per dataset. Runs: folds x seeds. CI: percentile bootstrap over cases of the mean of the "
             f"per-case means over runs "
             f"({config.get('report', {}).get('bootstrap', 10000)} resamples). Ref. − model: mean paired difference over "
             f"the cases both scored, with its paired bootstrap 95% CI (Diff. CI). p: two-sided Wilcoxon signed-rank test "
             f"of {model_label(config, ref)} against the row over paired cases; Holm over the rows of a dataset. "
             "All metrics: stats_<dataset>.csv.")
    caption = table_caption(prov, config, extra, stats_note=False, ours="", columns=cols)
    table = Table("statistics", "Statistics: bootstrap confidence intervals and paired tests", caption,
                  ["Dataset", "Metric", "Model"], cols)
    for dataset, group in stats.groupby("dataset", sort=False):
        main = get_info(dataset).main_metric
        for r in group[group.metric == main].itertuples():
            row = {"Dataset": _title(dataset), "Metric": _display(main), "Model": model_label(config, r.model),
                   "_model": r.model}
            for col in cols:
                value = getattr(r, col.key)
                row[col.key] = float(value) if value is not None else math.nan
            table.rows.append(row)
    return table


def budget_table(config: Mapping, budget: pd.DataFrame, reference: pd.DataFrame, prov: Mapping) -> Table:
    """The training budget per dataset and model (``budget``), with nnU-Net Revisited's published budgets."""
    from logvmamba.config import model_label

    source = "nnunet-revisited-table"
    tag = SOURCE_TAGS[source]
    cols = [Column("runs", "Runs", 0), Column("train_minutes", "Wall time per run (min)", 1, higher=False),
            Column("device_hours", "Device-hours, all runs", 4, higher=False),
            Column("peak_memory_MiB", "Peak memory (MiB)", 0, higher=False), Column("memory", "Memory measured as", 0),
            Column("train_hours_pub", f"pub. [{tag}] hours", 0, source=source),
            Column("train_vram_gb_pub", f"pub. [{tag}] VRAM (GB)", 1, source=source)]
    kinds = {"cuda_allocated": "CUDA max allocated", "cpu_max_rss": "CPU max resident set"}
    extra = ("Budget of our training runs from their train_done.json and log.csv: wall time of the epochs "
             "(validation included, summed over resumed processes), device-hours = wall time x processes, "
             "peak memory of the training process (on a GPU torch's max allocated, on a CPU the process's max "
             "resident set, which includes the Python runtime). Comparisons at a matched budget read these columns. "
             f"Published [{tag}]: training time and nvidia-smi VRAM on one A100 40GB, averaged over datasets "
             "(the paper-size networks and 1000 epochs, so not comparable with a reduced run).")
    table = Table("budget", "Training budget: wall time, device-hours and peak memory", table_caption(
        prov, config, extra, stats_note=False, ours="", columns=cols), ["Dataset", "Model", "Device"], cols)
    for (dataset, model), group in budget.groupby(["dataset", "model"], sort=False):
        row = {"Dataset": _title(dataset), "Model": model_label(config, model),
               "Device": ", ".join(sorted(set(group.device) - {""})) or "–", "_group": dataset, "_model": model}
        row["runs"] = (float(len(group)), math.nan, None, "")
        row["train_minutes"] = (float(group.train_hours.mean()) * 60, math.nan, None, "")
        row["device_hours"] = (float(group.device_hours.sum(min_count=1)), math.nan, None, "")
        row["peak_memory_MiB"] = (float(group.peak_memory_MiB.max()), math.nan, None, "")
        row["memory"] = ", ".join(kinds.get(k, k) for k in sorted(set(group.peak_memory_kind) - {""})) or "–"
        for key, metric in (("train_hours_pub", "train_hours"), ("train_vram_gb_pub", "train_vram_gb")):
            hit = reference[(reference.source == source) & (reference.dataset == "all")
                            & (reference.method == model) & (reference.metric == metric)]
            row[key] = float(hit.value.iloc[0]) if len(hit) else math.nan
        table.rows.append(row)
    return table


def build_tables(config: Mapping, runs: pd.DataFrame, profiles: pd.DataFrame, stats: pd.DataFrame,
                 reference: pd.DataFrame, prov: Mapping, datasets: Sequence[str],
                 budget: pd.DataFrame | None = None) -> list[Table]:
    """The tables of :func:`table_names` in that order, but ``rank_stability`` and ``claims``
    (:mod:`logvmamba.reporting.claims`) and, without ``budget``, ``budget``."""
    from logvmamba.config import ablation_models

    main = [d for d in datasets if d in config["datasets"]]
    tables = []
    for name in table_names(config, datasets):
        if name in ("main_2d", "main_3d"):
            ds = [d for d in main if _is_2d(d) == (name == "main_2d")]
            title = "Main results, 2D datasets" if name == "main_2d" else "Main results, 3D datasets"
            tables.append(_model_table(name, title, ds, list(config["models"]), "metrics", runs, profiles, stats, reference,
                                       config, prov))
        elif name.startswith("ablation_"):
            kind = name.split("_", 1)[1]
            abl = config["ablations"]
            ds = [d for d in abl.get("datasets", config["datasets"]) if d in datasets]
            title = ("Ablation: token mixers (vanilla, L, G, LoG; no Mamba: the control)" if kind == "mixers"
                     else "Ablation: global-token placement (head, center, split, interleaved)")
            tables.append(_model_table(name, title, ds, abl[kind], "ablation_metrics", runs, profiles, stats, reference,
                                       config, prov))
        elif name == "efficiency":
            models = {m: i for i, m in enumerate(list(config["models"]) + ablation_models(config))}
            rank = {d: i for i, d in enumerate(datasets)}
            ordered = profiles.assign(_d=profiles.dataset.map(rank), _m=profiles.model.map(models)).sort_values(
                ["_d", "device", "_m"], kind="stable")
            tables.append(_efficiency_table(ordered, reference, config, prov))
        elif name == "statistics":
            tables.append(_statistics_table(stats, config, prov))
        elif name == "budget" and budget is not None:
            tables.append(budget_table(config, budget, reference, prov))
    return tables


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------

def _best(table: Table) -> set[tuple[int, str]]:
    """(row index, column key) of the best of ours per column (per group where rows carry ``_group``)."""
    best = set()
    for col in table.columns:
        if col.higher is None or col.source is not None:
            continue
        groups: dict = {}
        for i, row in enumerate(table.rows):
            cell = row.get(col.key)
            if isinstance(cell, tuple) and not math.isnan(cell[0]):
                groups.setdefault(row.get("_group"), []).append((i, cell[0]))
        for members in groups.values():
            if len(members) < 2:
                continue
            target = (max if col.higher else min)(v for _, v in members)
            best |= {(i, col.key) for i, v in members if v == target}
    return best


def _number(value: float, decimals: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def _text(cell, col: Column, fmt: str) -> str:
    """One cell as text; ``fmt`` is md, tex or html."""
    if isinstance(cell, str):
        return _tex_escape(cell) if fmt == "tex" else cell
    if not isinstance(cell, tuple):
        if col.source is not None:  # published values as printed in their source (33, 55.9, 0.6264)
            return "–" if cell is None or math.isnan(cell) else f"{cell:g}"
        return _number(cell, col.decimals)
    mean, std, n, mark = cell
    if math.isnan(mean):
        return "–"
    text = _number(mean, col.decimals)
    if n is not None:
        pm = {"md": " ± ", "tex": r" $\pm$ ", "html": " ± "}[fmt]
        text += pm + ("–" if math.isnan(std) else _number(std, col.decimals)) + f" ({n})"
    if mark:
        text += {"md": {"down": "↓", "up": "↑"}, "html": {"down": "↓", "up": "↑"},
                 "tex": {"down": r"$^{\downarrow}$", "up": r"$^{\uparrow}$"}}[fmt][mark]
    return text


def _tex_escape(text: str) -> str:
    out = text
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
                 ("±", r"$\pm$"), ("†", r"$^\dagger$"), ("↓", r"$\downarrow$"), ("↑", r"$\uparrow$"),
                 ("−", "$-$"), ("–", "--"), ("≥", r"$\geq$"), ("<", "$<$"), (">", "$>$")):
        out = out.replace(a, b)
    return out


def render_markdown(table: Table) -> str:
    best = _best(table)
    head = table.index + [c.header for c in table.columns]
    lines = [f"**Table: {table.title}.** {table.caption}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * len(table.index) + ["---:"] * len(table.columns)) + "|"]
    for i, row in enumerate(table.rows):
        cells = [str(row[k]) for k in table.index]
        for col in table.columns:
            text = _text(row.get(col.key), col, "md")
            cells.append(f"**{text}**" if (i, col.key) in best else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_latex(table: Table) -> str:
    best = _best(table)
    spec = "l" * len(table.index) + "r" * len(table.columns)
    head = [_tex_escape(h) for h in table.index + [c.header for c in table.columns]]
    lines = [r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\scriptsize",
             rf"\caption{{{_tex_escape(table.title)}. {_tex_escape(table.caption)}}}", rf"\label{{tab:{table.name}}}",
             r"\resizebox{\textwidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(head) + r" \\",
             r"\midrule"]
    for i, row in enumerate(table.rows):
        cells = [_tex_escape(str(row[k])) for k in table.index]
        for col in table.columns:
            text = _text(row.get(col.key), col, "tex").replace("–", "--").replace("(", "{\\tiny(").replace(")", ")}")
            cells.append(rf"\textbf{{{text}}}" if (i, col.key) in best else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_html(table: Table) -> str:
    best = _best(table)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.index + [c.header for c in table.columns])
    body = []
    for i, row in enumerate(table.rows):
        cells = [f"<td>{html.escape(str(row[k]))}</td>" for k in table.index]
        for col in table.columns:
            text = html.escape(_text(row.get(col.key), col, "html"))
            cells.append(f"<td class=num><b>{text}</b></td>" if (i, col.key) in best else f"<td class=num>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    style = ("body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse} "
             "caption{caption-side:top;text-align:left;max-width:70em;padding-bottom:.5em} "
             "th,td{padding:2px 8px;border-bottom:1px solid #ddd} td.num{text-align:right;white-space:nowrap}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(table.title)}</title>"
            f"<style>{style}</style></head><body>\n<table>\n<caption><b>{html.escape(table.title)}.</b> "
            f"{html.escape(table.caption)}</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody></table>\n</body></html>\n")


def render_csv(table: Table) -> str:
    """Numbers only: ``<column>_mean``, ``_std``, ``_n`` for ours, the value for published columns."""
    records = []
    for row in table.rows:
        rec = {k: row[k] for k in table.index}
        if "_model" in row:
            rec["model_key"] = row["_model"]
        for col in table.columns:
            cell = row.get(col.key)
            if isinstance(cell, tuple):
                mean, std, n, mark = cell
                rec[f"{col.key}_mean" if n is not None else col.key] = mean
                if n is not None:
                    rec[f"{col.key}_std"], rec[f"{col.key}_n"] = std, n
                    rec[f"{col.key}_vs_reference"] = {"down": "reference better", "up": "reference worse"}.get(mark, "")
            else:
                rec[col.key] = cell
        records.append(rec)
    return pd.DataFrame(records).to_csv(index=False, float_format="%.6g")


def write_tables(tables: Sequence[Table], out_dir: str | Path, prov: Mapping) -> list[Path]:
    """Write every table in the four formats and ``provenance.json``; each file atomically."""
    out_dir = Path(out_dir)
    written = []
    for table in tables:
        for ext, render in (("csv", render_csv), ("md", render_markdown), ("tex", render_latex), ("html", render_html)):
            written.append(atomic_write_text(out_dir / f"{table.name}.{ext}", render(table)))
    written.append(atomic_write_text(out_dir / "provenance.json", json.dumps(dict(prov), indent=2) + "\n"))
    return written
