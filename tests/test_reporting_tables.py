"""Tables, statistics and Figure 5 from a results folder; recipe inheritance of the ablation variants."""

import json

import numpy as np
import pandas as pd
import pytest

from logvmamba.config import (
    ROOT,
    ConfigError,
    load_config,
    model_label,
    model_spec,
    resolve_recipe,
    run_grid,
)
from logvmamba.data import DATASETS
from logvmamba.reporting.collect import ResultsError, load_runs
from logvmamba.reporting.report import (
    figure_points,
    statistics_from_results,
    tables_from_results,
)
from logvmamba.reporting.tables import table_names

REFERENCE = ROOT / "results" / "reference" / "reference_results.csv"
# LoG-VMamba's per-case scores sit OFFSET above nnU-Net's on every case
OFFSET = 0.1


def small_config(**changes):
    config = load_config(ROOT / "config" / "config.yaml")
    config.update(datasets=["endoscopy", "brats"], models=["logvmamba", "nnunet"], seeds=[0, 1],
                  ablations={"datasets": ["endoscopy"], "mixers": ["logvmamba_vanilla", "logvmamba"],
                             "placements": ["logvmamba_head", "logvmamba"]})
    config.update(changes)
    return config


def case_value(model, metric, case, seed):
    base = 0.5 + 0.02 * case + 0.01 * seed
    if metric.startswith("HD95"):
        return 10.0 - 5 * base + (0.0 if model == "logvmamba" else 1.0)
    return base + (OFFSET if model == "logvmamba" else 0.0)


def write_results(root, config, n_cases=12):
    """summary.json, per_case.csv, train_done.json and profile_cpu.json for every run of ``config``."""
    for dataset, model, fold, seed in run_grid(config):
        run = root / dataset / model / f"fold{fold}" / f"seed{seed}"
        run.mkdir(parents=True, exist_ok=True)
        metrics = DATASETS[dataset].metrics
        raw = [m for m in metrics if not m.endswith("_mean")]
        rows = [{"case_id": f"case_{i:03d}", **{m: case_value(model, m, i, seed) for m in raw}} for i in range(n_cases)]
        table = pd.DataFrame(rows)
        table.to_csv(run / "per_case.csv", index=False)
        summary = {m: float(table[m].mean()) for m in raw}
        for name, prefix in (("Dice_mean", "Dice_"), ("HD95_mean", "HD95_")):
            if name in metrics:
                summary[name] = float(table[[c for c in raw if c.startswith(prefix)]].mean(axis=1).mean())
        summary.update(dataset=dataset, synthetic=True, main=summary[metrics[0]])
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "train_done.json").write_text(json.dumps({"device": "cpu", "device_name": "Test CPU", "world_size": 1}))
        arch, _ = model_spec(config, model, dataset, "paper")
        profile = {
            "model": arch, "params": {"total": 30_000_000 if model.startswith("logvmamba") else 40_000_000},
            "flops": {"gflops": 45.0 if model.startswith("logvmamba") else 56.0},
            "input": {"img_size": [384, 640]}, "runtime_input": {"img_size": [64, 96]},
            "runtime": {mode: {"latency_s": {"median": 0.01 * (k + 1)}, "memory": {"peak_increase_bytes": 2**20 * (k + 5)}}
                        for k, mode in enumerate(("inference", "train"))},
            "provenance": {"cpu": "Test CPU", "threads": 1, "git_commit": "abc", "load_average": "1.50 1.00 1.00"},
        }
        (root / dataset / model / "profile_cpu.json").write_text(json.dumps(profile))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    config = small_config()
    root = tmp_path_factory.mktemp("tables") / "results"
    write_results(root, config)
    for dataset in ("endoscopy", "brats"):
        statistics_from_results(config, root, dataset, root / "tables" / f"stats_{dataset}.csv")
    tables_from_results(config, root, REFERENCE, [str(ROOT / "config" / "config.yaml")], root / "tables")
    return config, root


def test_every_table_is_written_in_four_formats(results):
    config, root = results
    names = table_names(config, ["endoscopy", "brats"])
    assert names == ["main_2d", "main_3d", "ablation_mixers", "ablation_placements", "efficiency", "statistics", "budget",
                     "rank_stability", "claims"]
    for name in names:
        for ext in ("csv", "md", "tex", "html"):
            assert (root / "tables" / f"{name}.{ext}").stat().st_size > 100, (name, ext)
    assert not list((root / "tables").glob("*.tmp")) and not list((root / "tables").glob(".*"))
    prov = json.loads((root / "tables" / "provenance.json").read_text())
    assert prov["data"] == "synthetic" and prov["train_devices"] == ["cpu (Test CPU)"] and prov["configs"] == ["config.yaml"]


def test_main_2d_cells_are_mean_std_n_with_published_columns(results):
    _, root = results
    md = (root / "tables" / "main_2d.md").read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Model"))
    assert "Endoscopy DSC" in header and "Endoscopy NSD" in header and "pub. [a]" in header and "pub. [b]" in header
    nnunet = next(line for line in lines if line.startswith("| nnU-Net"))
    logv = next(line for line in lines if line.startswith("| LoG-VMamba"))
    # seed means of the endoscopy DSC written above; 2 seeds
    seeds = [np.mean([case_value("logvmamba", "DSC", i, s) for i in range(12)]) for s in (0, 1)]
    assert f"**{np.mean(seeds):.4f} ± {np.std(seeds, ddof=1):.4f} (2)**" in logv
    assert "0.6264" in nnunet and "0.486" in nnunet        # Swin-UMamba table [a] and Fig. 5 [b]
    assert "↓" in nnunet.split("|")[header.split("|").index(" Endoscopy DSC ")] and "↓" not in logv
    assert "Synthetic demo data" in md and "commit" in md and "config.yaml" in md and "Test CPU" in md


def test_main_3d_bolds_the_lowest_hd95(results):
    _, root = results
    lines = (root / "tables" / "main_3d.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Model")).split("|")
    col = header.index(" BraTS HD95 mean ")
    logv = next(line for line in lines if line.startswith("| LoG-VMamba")).split("|")
    nnunet = next(line for line in lines if line.startswith("| nnU-Net")).split("|")
    assert logv[col].strip().startswith("**") and not nnunet[col].strip().startswith("**")


def test_csv_holds_the_numbers(results):
    _, root = results
    table = pd.read_csv(root / "tables" / "main_2d.csv")
    row = table[table.model_key == "nnunet"].iloc[0]
    expected = np.mean([np.mean([case_value("nnunet", "DSC", i, s) for i in range(12)]) for s in (0, 1)])
    assert row["endoscopy_DSC_mean"] == pytest.approx(expected, rel=1e-5)
    assert row["endoscopy_DSC_n"] == 2 and row["endoscopy_DSC_vs_reference"] == "reference better"
    assert row["endoscopy_DSC_pub_a"] == pytest.approx(0.6264)
    assert row["endoscopy_gflops"] == pytest.approx(56.0)


def test_latex_is_booktabs_and_escaped(results):
    _, root = results
    tex = (root / "tables" / "ablation_mixers.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"\textbf{" in tex
    assert r"$\pm$" in tex and "Vanilla VMamba" in tex
    body = tex.split(r"\begin{tabular}")[1]
    assert "_" not in body.replace(r"\_", "")


def test_ablation_and_statistics_tables(results):
    _, root = results
    mixers = (root / "tables" / "ablation_mixers.md").read_text()
    assert "Vanilla VMamba" in mixers and "LoG-VMamba" in mixers and "nnU-Net" not in mixers
    stats = pd.read_csv(root / "tables" / "statistics.csv")
    row = stats[(stats.model_key == "nnunet") & (stats.Dataset == "Endoscopy")].iloc[0]
    assert row["ci_low"] < row["mean"] < row["ci_high"] and row["p_holm"] < 0.05
    assert row["diff"] == pytest.approx(OFFSET, rel=1e-6)
    assert set(stats[stats.Dataset == "BraTS"].Metric) == {"Dice mean"}     # the main metric, not the first column
    md = (root / "tables" / "statistics.md").read_text()
    assert md.count("Statistics: bootstrap") == 1 and "| BraTS | Dice mean | nnU-Net | 12 | 2 |" in md


def test_efficiency_table_has_runtime_columns(results):
    _, root = results
    table = pd.read_csv(root / "tables" / "efficiency.csv")
    assert {"latency_inference_ms", "memory_train_MiB", "params_M", "gflops"} <= set(table.columns)
    assert table.latency_inference_ms.iloc[0] == pytest.approx(10.0)
    md = (root / "tables" / "efficiency.md").read_text()
    assert "runtime at 64x96" in md and "FLOPs at 384x640" in md and "load average 1.5-1.5" in md
    assert "| Endoscopy | nnU-Net | cpu | 40.00 | 33 |" in md          # published as printed in the source


def test_a_missing_result_names_the_file(tmp_path):
    config = small_config()
    write_results(tmp_path, config)
    missing = tmp_path / "brats" / "nnunet" / "fold0" / "seed1" / "summary.json"
    missing.unlink()
    with pytest.raises(ResultsError, match=str(missing)):
        load_runs(tmp_path, run_grid(config))
    (tmp_path / "brats" / "nnunet" / "fold0" / "seed0" / "summary.json").write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_runs(tmp_path, run_grid(config))


def test_figure_points_use_the_figure_metric_and_published_points(results):
    config, root = results
    from logvmamba.reporting.collect import load_profiles, load_reference

    grid = run_grid(config)
    runs = load_runs(root, grid)
    profiles = load_profiles(root, dict.fromkeys((d, m) for d, m, *_ in grid), ["cpu"])
    points, pub = figure_points(runs, profiles, load_reference(REFERENCE), ["logvmamba", "nnunet"], "gflops", "cpu")
    assert len(points) == 2 * 2 * 2 and set(points.x) == {45.0, 56.0}
    hit = pub[(pub.dataset == "endoscopy") & (pub.model == "nnunet")].iloc[0]
    assert (hit.score, hit.x, hit.source) == (0.486, 56.0, "logvmamba-paper-fig5")
    latency, pub_latency = figure_points(runs, profiles, load_reference(REFERENCE), ["nnunet"], "latency", "cpu")
    assert set(latency.x) == {10.0} and pub_latency.x.isna().all()


# ---------------------------------------------------------------------------
# the ablation variants' recipes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant, kwargs", [
    ("logvmamba_vanilla", {"mixer": "vanilla"}), ("logvmamba_local", {"mixer": "local"}),
    ("logvmamba_global", {"mixer": "global"}), ("logvmamba_head", {"placement": "head"}),
    ("logvmamba_center", {"placement": "center"}), ("logvmamba_split", {"placement": "split"}),
])
@pytest.mark.parametrize("dataset", ["endoscopy", "acdc"])
def test_a_variant_trains_with_the_logvmamba_recipe(variant, kwargs, dataset, synth_root):
    from logvmamba.data import DATASETS, RawDataset

    config = load_config(ROOT / "config" / "config.yaml")
    ds = RawDataset(synth_root / DATASETS[dataset].synthetic_name)
    base, ours = resolve_recipe(config, "logvmamba", ds), resolve_recipe(config, variant, ds)
    assert ours.pop("model_kwargs") == dict(base.pop("model_kwargs"), **kwargs)
    assert ours.pop("model") == variant and base.pop("model") == "logvmamba"
    assert ours == base and ours["lr"] == config["overrides"]["logvmamba"][dataset]["lr"]  # logvmamba's override applies
    assert model_spec(config, variant, dataset, "paper") == (base["arch"].removesuffix("_test"), kwargs)
    assert model_label(config, variant) != model_label(config, "logvmamba")


def test_recipe_bases_fail_clearly():
    config = load_config(ROOT / "config" / "config.yaml")
    config["recipes"]["loop_a"] = {"base": "loop_b"}
    config["recipes"]["loop_b"] = {"base": "loop_a"}
    with pytest.raises(ConfigError, match="cycle"):
        model_spec(config, "loop_a", "endoscopy")
    config["recipes"]["orphan"] = {"base": "nothing_here"}
    with pytest.raises(ConfigError, match="nothing_here"):
        model_spec(config, "orphan", "endoscopy")


def test_a_reference_model_that_is_not_trained_fails_at_dag_time():
    from logvmamba.config import check_models

    config = small_config(models=["nnunet"])
    with pytest.raises(ConfigError, match="reference 'logvmamba' is not one of models: nnunet"):
        check_models(config)
    check_models(dict(config, report={"reference": "nnunet"}, ablations={}))


def test_run_grid_adds_the_ablations_on_their_datasets():
    config = small_config()
    grid = run_grid(config)
    assert ("endoscopy", "logvmamba_head", 0, 1) in grid and ("brats", "logvmamba_head", 0, 0) not in grid
    assert len(grid) == len(set(grid)) == (2 * 2 + 2) * 2   # logvmamba once though listed in both ablations
    cv = run_grid(dict(config, folds=[0, 1, 2, 3, 4]))
    assert len(cv) == 5 * len(grid) and {f for _, _, f, _ in cv} == {0, 1, 2, 3, 4}
    assert run_grid(dict({k: v for k, v in config.items() if k != "folds"}, fold=3))[0][2] == 3
    assert table_names(dict(config, ablations={}), ["endoscopy"]) == ["main_2d", "efficiency", "statistics", "budget", "rank_stability", "claims"]
