"""Figure 5 of LoG-VMamba: accuracy against cost, one panel per dataset.

API
    ``efficiency_figure(points, published, out_png, out_pdf, *, x_label,
    y_labels, titles, labels, reference="logvmamba", annotate=(), caption="",
    datasets=None, log_x=False) -> (png_path, pdf_path)`` writes the figure;
    ``build_efficiency_figure(points, published, **same keywords) -> Figure``
    builds it without saving (tests inspect its texts);
    ``model_colors(models, reference="logvmamba") -> {model: RGBA}`` and
    ``gap_text(reference_mean, baseline_mean) -> "+3.1"`` are the pure pieces.

Inputs
    ``points``: one row per (dataset, model, seed) with columns ``dataset``,
    ``model``, ``seed``, ``score`` (y, e.g. DSC in [0, 1]) and ``x`` (the cost:
    GFLOPs, parameters or latency; NaN skips that model in that panel).
    ``published``: ``dataset``, ``model``, ``score``, ``x`` from the papers; a
    row is drawn only when both numbers are finite. May be empty or None.

What is drawn
    Per model a star at (mean x, mean score over seeds) with a short label,
    faint dots for the single seeds, hollow circles for published numbers
    joined to our star by a dotted line, and for each model in ``annotate`` a
    double-headed arrow at that baseline's cost from its mean to the
    reference's mean, labelled with the gap in points (score x 100), as the
    paper's Figure 5 does. Panels with nothing to plot say "no data".

Only :class:`matplotlib.figure.Figure` and the Agg canvas are used, never
pyplot, so callers' global state is untouched and parallel jobs are safe.

Examples::

    >>> import pandas as pd
    >>> pts = pd.DataFrame({"dataset": ["cell"] * 2, "model": ["unet", "logvmamba"],
    ...                     "seed": [0, 0], "score": [0.70, 0.73], "x": [40.0, 60.0]})
    >>> gap_text(0.73, 0.70)
    '+3.0'
    >>> fig = build_efficiency_figure(pts, None, x_label="GFLOPs", y_labels={"cell": "F1"},
    ...                               titles={}, labels={}, annotate=["unet"])
    >>> sorted(t.get_text() for t in fig.axes[0].texts if t.get_gid() == "gap:unet")
    ['+3.0']
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

from logvmamba.io import atomic_write

__all__ = [
    "POINT_COLUMNS",
    "PUBLISHED_COLUMNS",
    "REFERENCE_COLOR",
    "RANK_COLUMNS",
    "build_efficiency_figure",
    "build_rank_figure",
    "efficiency_figure",
    "rank_figure",
    "gap_text",
    "model_colors",
]

POINT_COLUMNS = ("dataset", "model", "seed", "score", "x")
PUBLISHED_COLUMNS = ("dataset", "model", "score", "x")
REFERENCE_COLOR = (0.84, 0.10, 0.11, 1.0)  # strong red, kept out of the baselines' palette

_PANEL_W, _PANEL_H = 4.2, 3.4  # inches per panel: readable at 8-9 pt
_MAX_COLS = 4
_LABEL_FONTSIZE = 7.5
_STAR_SIZE, _REFERENCE_STAR_SIZE = 200, 340
_CAPTION_CHARS_PER_INCH = 17  # DejaVu Sans at 7 pt
_LEGEND_ENTRY_IN = 1.35  # inches per legend column


def model_colors(models: Iterable[str], reference: str = "logvmamba") -> dict[str, tuple]:
    """Map each model key to an RGBA colour, the same for the same set of models.

    The reference gets :data:`REFERENCE_COLOR`; the others take tab10 (tab20
    beyond nine, cycling past eighteen) in sorted key order, skipping the
    palette's reds so no baseline can be mistaken for the reference. The input
    order and repeats do not matter.
    """
    models = {str(m) for m in models}
    others = sorted(models - {reference})
    if len(others) <= 9:
        palette = [colormaps["tab10"](i) for i in range(10) if i != 3]  # 3 is red
    else:
        palette = [colormaps["tab20"](i) for i in range(20) if i not in (6, 7)]  # reds
    colors = {m: tuple(palette[i % len(palette)]) for i, m in enumerate(others)}
    if reference in models:
        colors[reference] = REFERENCE_COLOR
    return colors


def gap_text(reference_mean: float, baseline_mean: float) -> str:
    """Return the gap ``reference - baseline`` in points (x 100) with sign and one decimal."""
    if not (math.isfinite(reference_mean) and math.isfinite(baseline_mean)):
        raise ValueError(f"gap of non-finite means: {reference_mean!r}, {baseline_mean!r}")
    gap = round((reference_mean - baseline_mean) * 100.0, 1)
    return f"{gap + 0.0:+.1f}"  # + 0.0 turns -0.0 into 0.0, so no "-0.0"


def _checked(frame: pd.DataFrame | None, columns: Sequence[str], name: str, optional: bool = False) -> pd.DataFrame:
    """Return ``frame`` with numeric ``score``/``x``; raise if a column is missing.

    An ``optional`` table (the published numbers) may also be None or empty without columns.
    """
    if optional and (frame is None or (len(frame) == 0 and not set(columns) <= set(frame.columns))):
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("score", "x") else object) for c in columns})
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(frame.columns)}")
    frame = frame.copy()
    frame["dataset"] = frame["dataset"].astype(str)
    frame["model"] = frame["model"].astype(str)
    for col in ("score", "x"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame


def _model_summary(sub: pd.DataFrame) -> dict[str, tuple[float, float, np.ndarray, np.ndarray]]:
    """Per model: (mean x, mean score, seed xs, seed scores) over rows with both finite."""
    out = {}
    for model, rows in sub.groupby("model", sort=False):
        ok = np.isfinite(rows["x"].to_numpy()) & np.isfinite(rows["score"].to_numpy())
        if ok.any():
            xs, ys = rows["x"].to_numpy()[ok], rows["score"].to_numpy()[ok]
            out[model] = (float(xs.mean()), float(ys.mean()), xs, ys)
    return out


def _points_box(ax, x: float, y: float, radius: float) -> Bbox:
    """The display box of a marker of ``radius`` points centred on data ``(x, y)``."""
    cx, cy = ax.transData.transform((x, y))
    r = radius * ax.figure.dpi / 72.0
    return Bbox([[cx - r, cy - r], [cx + r, cy + r]])


def _place_text(ax, renderer, xy, text: str, candidates, obstacles: list[Bbox], **text_kw) -> Bbox:
    """Annotate ``xy`` with ``text`` at the first candidate offset that hits no obstacle.

    ``candidates`` are ``(dx, dy, ha, va)`` in points. The measured extent of the
    text decides; the least-bad candidate wins when all collide (ties go to the
    earlier one), so the result is deterministic.
    """
    frame = ax.get_window_extent(renderer)
    ann = ax.annotate(text, xy, xytext=candidates[0][:2], textcoords="offset points", **text_kw)
    ann.set_in_layout(False)  # texts inside the panels must not move the panels
    best = None
    for rank, (dx, dy, ha, va) in enumerate(candidates):
        ann.xyann = (dx, dy)
        ann.set_horizontalalignment(ha)
        ann.set_verticalalignment(va)
        box = ann.get_window_extent(renderer)
        outside = not (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
        cost = (sum(box.overlaps(o) for o in obstacles) + 2 * outside, rank)
        if best is None or cost < best[0]:
            best = (cost, dx, dy, ha, va, box)
        if cost[0] == 0:
            break
    _, dx, dy, ha, va, box = best
    ann.xyann = (dx, dy)
    ann.set_horizontalalignment(ha)
    ann.set_verticalalignment(va)
    return box


def _darker(color) -> tuple:
    """A darker shade of ``color`` so labels stay legible on white."""
    r, g, b, *_ = color
    return (0.75 * r, 0.75 * g, 0.75 * b, 1.0)


def _star_radius(model: str, reference: str) -> float:
    """Half the star's width in points (marker area is in points squared)."""
    return math.sqrt(_REFERENCE_STAR_SIZE if model == reference else _STAR_SIZE) / 2


def build_efficiency_figure(
    points: pd.DataFrame,
    published: pd.DataFrame | None,
    *,
    x_label: str,
    y_labels: Mapping[str, str],
    titles: Mapping[str, str],
    labels: Mapping[str, str],
    reference: str = "logvmamba",
    annotate: Sequence[str] = (),
    caption: str = "",
    datasets: Sequence[str] | None = None,
    log_x: bool = False,
) -> Figure:
    """Build the accuracy-versus-cost figure (see the module docstring) without saving it."""
    points = _checked(points, POINT_COLUMNS, "points")
    published = _checked(published, PUBLISHED_COLUMNS, "published", optional=True)
    if datasets is None:
        datasets = list(dict.fromkeys([*points["dataset"], *published["dataset"]])) or [""]
    datasets = [str(d) for d in datasets]
    # Colours from every model of both tables, so one model has one colour across panels and
    # across the GFLOPs / params / latency variants built from the same results.
    colors = model_colors([*points["model"], *published["model"]], reference)

    def name(model: str) -> str:
        return labels.get(model, model)  # display name, the key where none is given

    # What each panel will show, first: the legend and the figure's size depend on it.
    content = {}
    for ds in datasets:
        ours = _model_summary(points[points["dataset"] == ds])
        pub = published[(published["dataset"] == ds) & np.isfinite(published["x"]) & np.isfinite(published["score"])]
        content[ds] = (ours, pub)
    drawn = {m for ours, pub in content.values() for m in [*ours, *pub["model"]]}
    any_published = any(not pub.empty for _, pub in content.values())
    handles = [Line2D([], [], ls="none", marker="*", markersize=13 if m == reference else 11,
                      color=colors[m], markeredgecolor="black" if m == reference else colors[m],
                      label=name(m))
               for m in sorted(drawn, key=lambda m: (m != reference, m))]
    if drawn:
        handles.append(Line2D([], [], ls="none", marker="o", markersize=4, color="0.5", alpha=0.4,
                              label="single run"))
    if any_published:
        handles.append(Line2D([], [], ls="none", marker="o", markersize=7, markerfacecolor="none",
                              markeredgecolor="0.3", markeredgewidth=1.3, label="published (hollow)"))

    # The legend and the caption get a band of their own under the panels, sized to their
    # rows, so they never cover data and the caption is never cut off.
    n = len(datasets)
    nrows = math.ceil(n / _MAX_COLS)
    ncols = math.ceil(n / nrows)
    width = ncols * _PANEL_W
    caption_text = textwrap.fill(caption, max(40, int(width * _CAPTION_CHARS_PER_INCH))) if caption else ""
    rows = math.ceil(len(handles) / max(1, int(width / _LEGEND_ENTRY_IN))) if handles else 0
    ncol = math.ceil(len(handles) / rows) if handles else 1
    legend_h = 0.26 * rows + 0.1
    caption_h = 0.125 * (caption_text.count("\n") + 1) + 0.1 if caption_text else 0.0
    band = max(legend_h + caption_h, 0.05)
    fig = Figure(figsize=(width, nrows * _PANEL_H + band), layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas: headless, no pyplot figure manager
    top, bottom = fig.subfigures(2, 1, height_ratios=[nrows * _PANEL_H, band])
    legend = None
    if handles:
        # Matplotlib fills legend columns first; reorder so the entries read row by row.
        per_col = [len(range(c, len(handles), ncol)) for c in range(ncol)]
        by_row = [handles[r * ncol + c] for c in range(ncol) for r in range(per_col[c])]
        legend = bottom.legend(handles=by_row, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=ncol,
                               fontsize=8.5, frameon=False, handletextpad=0.3, columnspacing=1.4,
                               borderaxespad=0.0)
    caption_artist = None
    if caption_text:  # placed under the legend once the layout is known, see pass 2
        caption_artist = fig.text(0.5, 0.0, caption_text, ha="center", va="top", fontsize=7, color="0.25",
                                  gid="caption")

    # Pass 1: the data of every panel, so the layout and the axis limits are final.
    axes = np.asarray(top.subplots(nrows, ncols, squeeze=False)).ravel()
    panels = []
    for ax, ds in zip(axes, datasets):
        ours, pub = content[ds]
        ax.set_title(titles.get(ds, ds), fontsize=10)
        ax.set_xlabel(x_label, fontsize=9)
        ax.set_ylabel(y_labels.get(ds, "score"), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3, linewidth=0.6)
        if log_x:
            ax.set_xscale("log")
            # Costs span one or two decades: 1-2-5 ticks in plain numbers read better than 3x10^1.
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if not ours and pub.empty:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                    fontsize=11, color="0.4", gid="no-data")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        # Reference last, so its star is drawn on top of any baseline it covers.
        order = sorted(ours, key=lambda m: (m == reference, m))
        for model in order:
            mx, my, xs, ys = ours[model]
            c, ref = colors[model], model == reference
            ax.scatter(xs, ys, s=14, color=c, alpha=0.3, linewidths=0, zorder=2)
            ax.scatter([mx], [my], marker="*", s=_REFERENCE_STAR_SIZE if ref else _STAR_SIZE, color=c,
                       edgecolors="black" if ref else "none", linewidths=0.9 if ref else 0,
                       zorder=5 if ref else 4)
        for row in pub.itertuples(index=False):
            c = colors[row.model]
            ax.scatter([row.x], [row.score], s=60, facecolors="none", edgecolors=[c], linewidths=1.4, zorder=3)
            if row.model in ours:  # our run -> the paper's number for the same model
                mx, my = ours[row.model][:2]
                ax.plot([mx, row.x], [my, row.score], ls=":", lw=0.9, color=c, zorder=1)
        gaps = []
        if reference in ours:
            ref_y = ours[reference][1]
            for base in dict.fromkeys(annotate):
                if base != reference and base in ours:
                    bx, by = ours[base][:2]
                    ax.annotate("", xy=(bx, ref_y), xytext=(bx, by), zorder=3,
                                arrowprops={"arrowstyle": "<->", "color": "0.25", "lw": 1.0, "shrinkA": 0, "shrinkB": 0})
                    gaps.append((base, bx, by, ref_y))
        ax.margins(x=0.15, y=0.15)
        ax.autoscale_view()
        ax.set_xlim(ax.get_xlim())  # freeze the limits: the text placement below depends on them
        ax.set_ylim(ax.get_ylim())
        panels.append((ax, ours, order, pub, gaps))
    for ax in axes[n:]:
        ax.set_visible(False)  # unused cells of the last row

    # Pass 2: with the layout final, place gap texts and labels by their measured size.
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    if caption_artist is not None:
        below = legend.get_window_extent(renderer).y0 if legend is not None else bottom.bbox.y1
        caption_artist.set_y(fig.transFigure.inverted().transform((0, below - 6 * fig.dpi / 72))[1])
    for ax, ours, order, pub, gaps in panels:
        obstacles = [_points_box(ax, ours[m][0], ours[m][1], _star_radius(m, reference)) for m in order]
        obstacles += [_points_box(ax, r.x, r.score, 4.5) for r in pub.itertuples(index=False)]
        for _, bx, by, ref_y in gaps:
            (x0, y0), (_, y1) = ax.transData.transform([(bx, by), (bx, ref_y)])
            obstacles.append(Bbox([[x0 - 2, min(y0, y1)], [x0 + 2, max(y0, y1)]]))
        for base, bx, by, ref_y in gaps:
            obstacles.append(_place_text(
                ax, renderer, (bx, (ref_y + by) / 2), gap_text(ref_y, by),
                [(-5, 0, "right", "center"), (5, 0, "left", "center"), (-5, 9, "right", "center"),
                 (5, 9, "left", "center"), (-5, -9, "right", "center"), (5, -9, "left", "center")],
                obstacles, fontsize=8, fontweight="bold", color="0.15", gid=f"gap:{base}", zorder=6))
        for m in order:
            r = _star_radius(m, reference) + 1.5
            d = r * 0.75
            obstacles.append(_place_text(
                ax, renderer, ours[m][:2], name(m),
                [(r, 0, "left", "center"), (-r, 0, "right", "center"), (0, r, "center", "bottom"),
                 (0, -r, "center", "top"), (d, d, "left", "bottom"), (d, -d, "left", "top"),
                 (-d, d, "right", "bottom"), (-d, -d, "right", "top"),
                 (d, 2.2 * r, "left", "bottom"), (d, -2.2 * r, "left", "top")],
                obstacles, fontsize=_LABEL_FONTSIZE, color=_darker(colors[m]), gid=f"label:{m}", zorder=6))
    return fig


def efficiency_figure(points: pd.DataFrame, published: pd.DataFrame | None, out_png: str | os.PathLike,
                      out_pdf: str | os.PathLike, **options) -> tuple[Path, Path]:
    """Draw accuracy against cost per dataset and write it atomically as PNG and PDF.

    ``options`` are :func:`build_efficiency_figure`'s keywords.

    Raises:
        ValueError: ``points`` (or a non-empty ``published``) lacks a required column.
    """
    return _save(build_efficiency_figure(points, published, **options), out_png, out_pdf)


def _save(fig: Figure, out_png: str | os.PathLike, out_pdf: str | os.PathLike) -> tuple[Path, Path]:
    out_png, out_pdf = Path(out_png), Path(out_pdf)
    # The temporary names end in .tmp, so the format is given explicitly; no dates or
    # version strings in the metadata keep reruns byte-identical.
    with atomic_write(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight", pad_inches=0.1,
                    metadata={"Software": None, "Creator": "logvmamba"})
    with atomic_write(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf", bbox_inches="tight", pad_inches=0.1,
                    metadata={"Creator": "logvmamba", "Producer": None, "CreationDate": None})
    return out_png, out_pdf


RANK_COLUMNS = ("dataset", "model", "rank", "probability")


def build_rank_figure(ranks: pd.DataFrame, labels: Mapping[str, str] | None = None,
                      titles: Mapping[str, str] | None = None, caption: str = "") -> Figure:
    """One panel per dataset: a stacked bar per model of its bootstrap rank probabilities
    (rank 1 darkest), models ordered by mean rank, as challenge reports draw rank stability."""
    missing = [c for c in RANK_COLUMNS if c not in ranks.columns]
    if missing:
        raise ValueError(f"ranks lacks column(s) {missing}; it has {list(ranks.columns)}")
    labels, titles = dict(labels or {}), dict(titles or {})
    datasets = list(dict.fromkeys(ranks.dataset))
    n_ranks = int(ranks["rank"].max()) if len(ranks) else 1
    n_models = max([ranks[ranks.dataset == d].model.nunique() for d in datasets] or [1])
    cols = max(1, min(len(datasets), _MAX_COLS))
    rows = max(1, math.ceil(len(datasets) / cols))
    width, height = _PANEL_W * cols, rows * (0.9 + 0.32 * n_models)
    caption_text = textwrap.fill(caption, max(40, int(width * _CAPTION_CHARS_PER_INCH))) if caption else ""
    caption_h = 0.125 * (caption_text.count("\n") + 1) + 0.45 if caption_text else 0.45
    fig = Figure(figsize=(width, height + caption_h))
    FigureCanvasAgg(fig)
    cmap = colormaps["viridis"]
    shades = [cmap(0.15 + 0.7 * k / max(1, n_ranks - 1)) for k in range(n_ranks)]
    bottom = caption_h / (height + caption_h)
    top = 1 - 0.45 / (height + caption_h)  # room for the legend above the panels
    grid = fig.add_gridspec(rows, cols, left=0.12, right=0.98, top=top, bottom=bottom + 0.06 / rows, hspace=0.6,
                            wspace=0.5)
    for i, dataset in enumerate(datasets):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        sub = ranks[ranks.dataset == dataset]
        wide = sub.pivot(index="model", columns="rank", values="probability").fillna(0.0)
        expected = (wide * wide.columns.to_numpy()).sum(axis=1)
        order = list(expected.sort_values(kind="stable").index)[::-1]  # best at the top
        left = np.zeros(len(order))
        for k in range(1, n_ranks + 1):
            share = wide.reindex(order)[k].to_numpy() if k in wide.columns else np.zeros(len(order))
            ax.barh(range(len(order)), share, left=left, color=shades[k - 1], edgecolor="white", linewidth=0.5,
                    label=f"rank {k}" if i == 0 else None, gid=f"bar:{dataset}:{k}")
            left += share
        first = wide.reindex(order)[1].to_numpy() if 1 in wide.columns else np.zeros(len(order))
        for y, p in enumerate(first):
            if p >= 0.15:  # the rank-1 probability, written where it fits
                ax.text(p - 0.01, y, f"{p:.2f}", ha="right", va="center", fontsize=7, color="white")
        ax.set_yticks(range(len(order)), [labels.get(m, m) for m in order], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("probability over bootstrap resamples", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(titles.get(dataset, dataset), fontsize=9)
    if datasets:
        fig.legend(loc="upper center", ncol=min(n_ranks, 8), fontsize=7, frameon=False, bbox_to_anchor=(0.5, 1.0))
    if caption_text:
        fig.text(0.5, 0.01, caption_text, ha="center", va="bottom", fontsize=7, color="0.25")
    return fig


def rank_figure(ranks: pd.DataFrame, out_png: str | os.PathLike, out_pdf: str | os.PathLike, **options) -> tuple[Path, Path]:
    """Draw the rank-stability figure (:func:`build_rank_figure`'s ``options``) and write PNG and PDF atomically."""
    return _save(build_rank_figure(ranks, **options), out_png, out_pdf)
