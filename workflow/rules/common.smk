import math
import os
from pathlib import Path

from logvmamba.config import RECIPES, check_models, check_overrides, check_patch_sizes, dataset_recipe, evaluate_on, model_spec, register_datasets, weight_recipe
from logvmamba.config import run_grid as config_run_grid
from logvmamba.data import DATASETS
from logvmamba.reporting.tables import table_names

# User datasets (any nnU-Net raw dataset) become keys DatasetXXX; the scripts register them again.
register_datasets(config)
check_models(config)
# Refused here, a misspelt override or a patch a model cannot take stops the dry run, not a train job.
check_overrides(config)
check_patch_sizes(config)

# A local run (no --jobs for a cluster) uses at most the CPUs this process may run on:
# `--cores 8` on a 2-core laptop would start 8 one-thread jobs on 2 cores, each a quarter
# as fast, holding 4x the memory. Cluster runs (the SLURM profile sets jobs) are untouched.
USABLE_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
if workflow.resource_settings.nodes is None and (workflow.resource_settings.cores or 0) > USABLE_CPUS:
    logger.info(f"--cores {workflow.resource_settings.cores} asked for, {USABLE_CPUS} CPUs usable: "
                f"running at most {USABLE_CPUS} jobs at a time")
    workflow.global_resources["_cores"] = USABLE_CPUS


# The published numbers are part of the checkout, wherever --directory puts the results.
REFERENCE = f"{workflow.basedir}/results/reference/reference_results.csv"


# For every rule: a dataset is a known key (so results/tables/... is never a dataset).
wildcard_constraints:
    dataset="|".join([*DATASETS, *config["dataset_folders"]]),
    seed=r"\d+",
    fold=r"[0-4]",
    device="cpu|cuda",


def run_grid(dataset=None, ablations=True):
    return config_run_grid(config, dataset, ablations)


def run_datasets():
    return list(dict.fromkeys(d for d, *_ in run_grid()))


def run_paths(pattern, runs):
    """A rule's output ``pattern`` for each (dataset, model, fold, seed) of ``runs``."""
    return [pattern.format(dataset=d, model=m, fold=f, seed=s) for d, m, f, s in runs]


def all_metric_files(dataset=None, ablations=True):
    return run_paths(rules.evaluate.output.summary, run_grid(dataset, ablations))


def config_files():
    """The config files this run reads, so that editing them reruns what depends on them."""
    defaults = [f"{workflow.basedir}/config/config.yaml"]
    return [str(RECIPES)] + [str(p) for p in (workflow.overwrite_configfiles or defaults)]


def train_recipe(wildcards):
    """The weight-deciding recipe of a run: Snakemake's params trigger retrains when it changes."""
    return weight_recipe(dataset_recipe(config, wildcards.model, wildcards.dataset))


def train_priority(wildcards):
    """Between 50 and 51, higher for runs that draw more patch voxels: on a few cores the long
    trainings start first and the short jobs (prediction, scoring, profiling) fill the end."""
    recipe = dataset_recipe(config, wildcards.model, wildcards.dataset)
    work = recipe["epochs"] * recipe["iterations"] * recipe["batch_size"] * math.prod(recipe["patch_size"])
    return 50 + work / (work + 1e8)


def predict_settings(wildcards):
    """The config's inference settings of a run (changing them reruns prediction, not training)."""
    recipe = dataset_recipe(config, wildcards.model, wildcards.dataset)
    return {"tta": recipe["tta"], "overlap": recipe["overlap"]}


def all_profile_files(ablations=True):
    """One profile per configured model x dataset x device."""
    pairs = dict.fromkeys((d, m) for d, m, *_ in run_grid(ablations=ablations))
    devices = config["profile"]["devices"]
    return [rules.profile.output.json.format(dataset=d, model=m, device=x) for d, m in pairs for x in devices]


def paper_spec(wildcards):
    """{"arch", "model_kwargs"} of the paper-size network of a config model on a dataset."""
    arch, kwargs = model_spec(config, wildcards.model, wildcards.dataset, variant="paper")
    return {"arch": arch, "model_kwargs": kwargs}


def profile_params(wildcards):
    """The config's profile settings; no timing for a model outside ``runtime_models``."""
    settings = dict(config["profile"])
    size = settings.get("size")
    if wildcards.dataset in config["dataset_folders"] and isinstance(size, dict) and wildcards.dataset not in size:
        # a user dataset: its planned patch, rounded as the paper-size network needs it
        paper = dict(config, model_variant="paper")
        patch = dataset_recipe(paper, wildcards.model, wildcards.dataset)["patch_size"]
        settings["size"] = dict(size, **{wildcards.dataset: "x".join(map(str, patch))})
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
        "summaries": run_paths(rules.evaluate.output.summary, runs),
        "per_case": run_paths(rules.evaluate.output.per_case, runs),
    }


def table_files():
    """What the tables rule writes (its output, so paths rather than another rule's)."""
    names = table_names(config, run_datasets())
    return [f"results/tables/{n}.{ext}" for n in names for ext in ("csv", "md", "tex", "html")]


FIGURE5 = ["gflops", "params", "latency"]


def figure_files():
    return [f"results/figures/figure5_{x}.{ext}" for x in FIGURE5 for ext in ("png", "pdf")]


def stats_files():
    return [rules.stats.output.csv.format(dataset=d) for d in run_datasets()]
