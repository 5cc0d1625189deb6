from logvmamba.data import DATASETS


def dataset_folder(key):
    """The synthetic stand-in's folder for a dataset key."""
    return f"resources/synthetic/{DATASETS[key].synthetic_name}"


def dataset_markers():
    """dataset.json of every configured dataset (synthetic stand-ins for now)."""
    if not config["synthetic"]:
        raise ValueError("real datasets are wired into the workflow with training (issue 4); set synthetic: true")
    return [f"{dataset_folder(key)}/dataset.json" for key in config["datasets"]]


def synthetic_key(wildcards):
    """Dataset key of a synthetic folder name."""
    keys = [k for k, info in DATASETS.items() if info.synthetic_name == wildcards.name]
    if not keys:
        raise ValueError(f"resources/synthetic/{wildcards.name}: not a synthetic dataset name")
    return keys[0]
