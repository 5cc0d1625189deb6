from logvmamba.config import supports
from logvmamba.data import DATASETS


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
