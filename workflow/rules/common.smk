from logvmamba.config import check_models, model_arch, supports
from logvmamba.data import DATASETS

check_models(config)


def run_grid(dataset=None):
    """(dataset, model, seed) of every configured run whose model fits the dataset's dims."""
    keys = [dataset] if dataset else config["datasets"]
    return [
        (key, model, seed)
        for key in keys
        for model in config["models"]
        if supports(config, model, DATASETS[key].spatial_dims)
        for seed in config["seeds"]
    ]


def all_metric_files(dataset=None):
    return [f"results/{d}/{m}/seed{s}/summary.json" for d, m, s in run_grid(dataset)]


def config_files():
    """The config files this run reads, so that editing them reruns what depends on them."""
    defaults = [f"{workflow.basedir}/config/config.yaml"]
    return [f"{workflow.basedir}/config/recipes.yaml"] + [str(p) for p in (workflow.overwrite_configfiles or defaults)]


def all_profile_files():
    """One profile per configured model x dataset x device."""
    return [
        f"results/{d}/{m}/profile_{device}.json"
        for d, m, _ in run_grid()
        if _ == config["seeds"][0]
        for device in config["profile"]["devices"]
    ]


def paper_arch(wildcards):
    """The paper-size architecture of a config model for the dataset's dims."""
    return model_arch(dict(config, model_variant="paper"), wildcards.model, DATASETS[wildcards.dataset].spatial_dims)


def gpu_count(wildcards):
    return 1 if wildcards.device == "cuda" else 0
