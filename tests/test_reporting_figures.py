"""Figure 5 (accuracy against cost): files, colours, gap labels, empty panels, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from logvmamba.reporting.figures import (
    REFERENCE_COLOR,
    build_efficiency_figure,
    efficiency_figure,
    gap_text,
    model_colors,
)

MEANS = {  # dataset -> model -> mean score over the three seeds
    "endoscopy": {"logvmamba": 0.72, "nnunet": 0.65, "umamba_enc": 0.69},
    "cell": {"logvmamba": 0.66, "nnunet": 0.60, "umamba_enc": 0.63},
}
COST = {"logvmamba": 48.0, "nnunet": 125.0, "umamba_enc": 165.0}
OPTIONS = {
    "x_label": "GFLOPs",
    "y_labels": {"endoscopy": "DSC", "cell": "F1"},
    "titles": {"endoscopy": "Endoscopy", "cell": "Cells"},
    "labels": {"logvmamba": "LoG-VMamba", "nnunet": "nnU-Net"},
    "annotate": ["nnunet", "umamba_enc"],
    "caption": "Synthetic numbers, CPU, commit 0000000.",
}


@pytest.fixture
def points() -> pd.DataFrame:
    rows = []
    for dataset, means in MEANS.items():
        for model, mean in means.items():
            for seed, delta in enumerate((-0.01, 0.0, 0.01)):  # the seeds average to ``mean``
                # U-Mamba's cost is unknown on the cell set: it must be left out of that panel.
                x = np.nan if (dataset, model) == ("cell", "umamba_enc") else COST[model]
                rows.append({"dataset": dataset, "model": model, "seed": seed, "score": mean + delta, "x": x})
    return pd.DataFrame(rows)


@pytest.fixture
def published() -> pd.DataFrame:
    return pd.DataFrame([
        {"dataset": "endoscopy", "model": "nnunet", "score": 0.63, "x": 125.0},
        {"dataset": "endoscopy", "model": "logvmamba", "score": 0.73, "x": 48.0},
        {"dataset": "cell", "model": "umamba_enc", "score": 0.64, "x": np.nan},  # not drawable
    ])


def _texts(ax, prefix: str) -> dict[str, str]:
    return {t.get_gid(): t.get_text() for t in ax.texts if (t.get_gid() or "").startswith(prefix)}


def test_writes_png_and_pdf_atomically(tmp_path, points, published):
    png, pdf = efficiency_figure(points, published, tmp_path / "fig5.png", tmp_path / "fig5.pdf", **OPTIONS)
    assert (png, pdf) == (tmp_path / "fig5.png", tmp_path / "fig5.pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig5.pdf", "fig5.png"]  # no .tmp left


def test_output_is_reproducible(tmp_path, points, published):
    first = efficiency_figure(points, published, tmp_path / "a.png", tmp_path / "a.pdf", **OPTIONS)
    second = efficiency_figure(points, published, tmp_path / "b.png", tmp_path / "b.pdf", **OPTIONS)
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()  # no creation date or random layout


def test_colours_are_stable_and_reference_is_red():
    one = model_colors(["umamba_enc", "logvmamba", "nnunet"])
    two = model_colors(["nnunet", "logvmamba", "umamba_enc", "nnunet"])
    assert one == two
    assert one["logvmamba"] == REFERENCE_COLOR
    assert len(set(one.values())) == 3
    assert model_colors(["a", "b", "c"], reference="b")["b"] == REFERENCE_COLOR
    assert REFERENCE_COLOR not in model_colors([f"m{i}" for i in range(15)]).values()  # no red baseline


def test_same_colour_for_a_model_in_every_panel(points, published):
    fig = build_efficiency_figure(points, published, **OPTIONS)
    expected = model_colors(points["model"])
    for ax, count in zip(fig.axes[:2], (3, 2)):  # umamba_enc has no cost on the cell set
        stars = [c for c in ax.collections if len(c.get_offsets()) == 1 and c.get_sizes()[0] >= 200]
        assert len(stars) == count
        for star in stars:
            x = star.get_offsets()[0][0]
            model = next(m for m, cost in COST.items() if cost == x)
            assert tuple(star.get_facecolor()[0]) == pytest.approx(expected[model])


@pytest.mark.parametrize(
    ("reference", "baseline", "text"),
    [(0.72, 0.65, "+7.0"), (0.7012, 0.6701, "+3.1"), (0.60, 0.6349, "-3.5"), (0.5, 0.5004, "+0.0")],
)
def test_gap_text(reference, baseline, text):
    assert gap_text(reference, baseline) == text


def test_gap_text_rejects_missing_means():
    with pytest.raises(ValueError, match="non-finite"):
        gap_text(float("nan"), 0.5)


def test_figure_annotates_gaps_and_skips_unknown_cost(points, published):
    fig = build_efficiency_figure(points, published, **OPTIONS)
    endoscopy, cell = fig.axes[:2]
    assert _texts(endoscopy, "gap:") == {"gap:nnunet": "+7.0", "gap:umamba_enc": "+3.0"}
    assert _texts(cell, "gap:") == {"gap:nnunet": "+6.0"}  # umamba_enc has no cost there
    assert _texts(cell, "label:") == {"label:logvmamba": "LoG-VMamba", "label:nnunet": "nnU-Net"}
    assert "umamba_enc" in _texts(endoscopy, "label:").values()  # no display name: the key
    assert [ax.get_title() for ax in fig.axes[:2]] == ["Endoscopy", "Cells"]
    assert fig.texts[0].get_gid() == "caption" and "commit" in fig.texts[0].get_text()


def test_legend_once_for_the_figure(points, published):
    fig = build_efficiency_figure(points, published, **OPTIONS)
    assert all(ax.get_legend() is None for ax in fig.axes)
    legends = [leg for sub in fig.subfigs for leg in sub.legends]
    assert len(legends) == 1
    entries = {t.get_text() for t in legends[0].get_texts()}
    assert {"LoG-VMamba", "nnU-Net", "umamba_enc", "published (hollow)"} <= entries


def test_empty_panel_says_no_data(tmp_path, points, published):
    datasets = ["endoscopy", "brats", "cell"]
    fig = build_efficiency_figure(points, published, datasets=datasets, **OPTIONS)
    no_data = [[t.get_text() for t in ax.texts if t.get_gid() == "no-data"] for ax in fig.axes[:3]]
    assert no_data == [[], ["no data"], []]
    png, _ = efficiency_figure(points, published, tmp_path / "f.png", tmp_path / "f.pdf",
                               datasets=datasets, log_x=True, **OPTIONS)
    assert png.stat().st_size > 0


def test_no_published_numbers(points):
    for published in (None, pd.DataFrame()):
        fig = build_efficiency_figure(points, published, **OPTIONS)
        assert _texts(fig.axes[0], "gap:") == {"gap:nnunet": "+7.0", "gap:umamba_enc": "+3.0"}


@pytest.mark.parametrize("column", ["dataset", "model", "seed", "score", "x"])
def test_missing_column_raises(tmp_path, points, published, column):
    with pytest.raises(ValueError, match=f"lacks column.*'{column}'"):
        efficiency_figure(points.drop(columns=column), published, tmp_path / "f.png", tmp_path / "f.pdf",
                          **OPTIONS)
    assert not list(tmp_path.iterdir())
