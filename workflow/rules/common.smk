from pathlib import Path

from logvmamba.config import check_models, dataset_recipe, model_spec, weight_recipe
from logvmamba.config import run_grid as config_run_grid
from logvmamba.reporting.tables import table_names

check_models(config)

# The published numbers are part of the checkout, wherever --directory puts the results.
REFERENCE = f"{workflow.basedir}/results/reference/reference_results.csv"


def run_grid(dataset=None, ablations=True):
    return config_run_grid(config, dataset, ablations)


def run_datasets():
    return list(dict.fromkeys(d for d, _, _ in run_grid()))


def all_metric_files(dataset=None, ablations=True):
    return [f"results/{d}/{m}/seed{s}/summary.json" for d, m, s in run_grid(dataset, ablations)]


def config_files():
    """The config files this run reads, so that editing them reruns what depends on them."""
    defaults = [f"{workflow.basedir}/config/config.yaml"]
    return [f"{workflow.basedir}/config/recipes.yaml"] + [str(p) for p in (workflow.overwrite_configfiles or defaults)]


def train_recipe(wildcards):
    """The weight-deciding recipe of a run: Snakemake's params trigger retrains when it changes."""
    return weight_recipe(dataset_recipe(config, wildcards.model, wildcards.dataset))


def predict_settings(wildcards):
    """The config's inference settings of a run (changing them reruns prediction, not training)."""
    recipe = dataset_recipe(config, wildcards.model, wildcards.dataset)
    return {"tta": recipe["tta"], "overlap": recipe["overlap"]}


def all_profile_files(ablations=True):
    """One profile per configured model x dataset x device."""
    pairs = dict.fromkeys((d, m) for d, m, _ in run_grid(ablations=ablations))
    return [f"results/{d}/{m}/profile_{device}.json" for d, m in pairs for device in config["profile"]["devices"]]


def paper_spec(wildcards):
    """{"arch", "model_kwargs"} of the paper-size network of a config model on a dataset."""
    arch, kwargs = model_spec(config, wildcards.model, wildcards.dataset, variant="paper")
    return {"arch": arch, "model_kwargs": kwargs}


def profile_params(wildcards):
    """The config's profile settings; no timing for a model outside ``runtime_models``."""
    settings = dict(config["profile"])
    timed = settings.pop("runtime_models", None)
    if timed is not None and wildcards.model not in timed:
        settings["runtime"] = False
    return settings


def gpu_count(wildcards):
    return 1 if wildcards.device == "cuda" else 0


def run_files(wildcards):
    """Summaries and per-case scores of every run on one dataset."""
    runs = run_grid(wildcards.dataset)
    return {
        "summaries": [f"results/{d}/{m}/seed{s}/summary.json" for d, m, s in runs],
        "per_case": [f"results/{d}/{m}/seed{s}/per_case.csv" for d, m, s in runs],
    }


def table_files():
    names = table_names(config, run_datasets())
    return [f"results/tables/{n}.{ext}" for n in names for ext in ("csv", "md", "tex", "html")]


FIGURE5 = ["gflops", "params", "latency"]


def figure_files():
    return [f"results/figures/figure5_{x}.{ext}" for x in FIGURE5 for ext in ("png", "pdf")]


def stats_files():
    return [f"results/tables/stats_{d}.csv" for d in run_datasets()]
