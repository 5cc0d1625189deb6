"""Experiment configs and per-model training recipes.

A config is YAML validated by the packaged schema (:data:`SCHEMA`,
``logvmamba/resources/config.schema.yaml``). The model recipes (facts from the
papers' releases) are packaged too (:data:`RECIPES`,
``logvmamba/resources/recipes.yaml``), so an installed wheel loads configs; an
experiment config (``config/config.yaml``, ``config/paper.yaml``) says which
datasets, models and seeds run and the training length. A recipe is resolved in
this order, later entries winning: ``recipe_defaults`` -> the experiment's
``training`` -> its ``dataset_training[dataset]`` -> ``recipes[model]`` -> ``recipes[model].by_dims["2d"|"3d"]`` ->
``recipes[model].datasets[dataset]`` ->
the experiment's ``overrides[model][dataset]``. A recipe with ``base: <model>``
starts from that model's recipe and overrides (the ablation variants of
LoG-VMamba are one line each). A model name that has no recipe runs the
registered architecture of that name with the defaults, so a new baseline needs
one file in ``baselines/`` and one line in ``models:``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = [
    "load_config", "resolve_recipe", "validate_config", "model_arch", "model_spec", "model_label", "supports",
    "check_models", "check_overrides", "check_patch_sizes",
    "config_models", "ablation_models", "run_grid", "config_folds", "evaluate_on", "ConfigError", "ROOT", "SCHEMA", "RECIPES",
    "dataset_recipe", "weight_recipe", "INFERENCE_KEYS", "register_datasets", "planned_patch", "planned_spacing", "fitting_patch", "PACKAGED",
]

#: Recipe keys that change how a trained model is used or how fast it trains, not its
#: weights: changing them must never throw a finished training away.
INFERENCE_KEYS = frozenset({"tta", "overlap", "num_workers", "val_every", "val_cases", "label", "cache",
                            "sw_batch_size"})

#: The checkout (tests and the workflow's example configs); not part of an installed wheel.
ROOT = Path(__file__).resolve().parents[1]
# The one copy of each, read by this module and by the Snakefile alike.
SCHEMA = files("logvmamba") / "resources" / "config.schema.yaml"
RECIPES = files("logvmamba") / "resources" / "recipes.yaml"


class ConfigError(ValueError):
    """A config file that does not fit the schema."""


def _merge(base: dict, update: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate_config(config: Mapping, source: str = "config") -> None:
    """Raise :class:`ConfigError` naming the offending key when ``config`` breaks the schema."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(dict(config)), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = "/".join(map(str, err.path)) or "top level"
        raise ConfigError(f"{source}: {where}: {err.message}")


def load_config(*paths: str | os.PathLike) -> dict:
    """Merge :data:`RECIPES` and ``paths`` (later wins) and validate the result."""
    config: dict = {}
    for path in (RECIPES, *map(Path, paths)):
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(content, dict):
            raise ConfigError(f"{path}: a config must be a mapping")
        config = _merge(config, content)
    validate_config(config, ", ".join(str(p) for p in paths) or str(RECIPES))
    return config


def _lineage(config: Mapping, model: str) -> list[str]:
    """``model`` and its ``base`` chain, the root first."""
    chain = [model]
    while (base := config["recipes"].get(chain[-1], {}).get("base")) is not None:
        if base in chain:
            raise ConfigError(f"recipes: {model!r} has a cycle of bases: {' -> '.join(chain + [base])}")
        if base not in config["recipes"]:
            raise ConfigError(f"recipes: {chain[-1]!r} has base {base!r}, which has no recipe")
        chain.append(base)
    return chain[::-1]


def _entry(config: Mapping, model: str) -> dict:
    """The recipe entry of ``model`` with its bases merged in (``{}`` for a model without one)."""
    entry: dict = {}
    for name in _lineage(config, model):
        entry = _merge(entry, {k: v for k, v in config["recipes"].get(name, {}).items() if k != "base"})
    return entry


def _arch_entry(config: Mapping, model: str):
    """The recipe's ``arch`` (a name or ``{2d, 3d}``); without one, the root of its ``base`` chain's name."""
    return _entry(config, model).get("arch", _lineage(config, model)[0])


def model_label(config: Mapping, model: str) -> str:
    """Display name of a config model (its recipe's ``label``, else the key)."""
    return config["recipes"].get(model, {}).get("label", model)


def model_arch(config: Mapping, model: str, spatial_dims: int) -> str | None:
    """Registered architecture of a config model for 2D or 3D data (None: not supported)."""
    arch: Any = _arch_entry(config, model)
    if isinstance(arch, Mapping):
        arch = arch.get(f"{spatial_dims}d")
    if arch is None:
        return None
    if config["model_variant"] == "test":
        return _test_variant(model, arch)
    return arch


def _registered(name: str) -> bool:
    """Whether a module registers ``name``; imports only the module that does (a training job
    resolving its recipe would otherwise import every model file, and with some MONAI)."""
    from logvmamba.registry import UnknownModelError, model_dims

    try:
        model_dims(name)
    except UnknownModelError:
        return False
    return True


def _test_variant(model: str, arch: str, known=None) -> str:
    """``<arch>_test``; a :class:`ConfigError` saying how to fix it where none is registered
    (``known``: the registered names; default: ask the registry about this one)."""
    name = f"{arch}_test"
    if not (_registered(name) if known is None else name in known):
        # Running the paper-size network silently would make a "quick" run take hours.
        raise ConfigError(
            f"models: {model!r} runs the architecture {arch!r}, which has no {name!r} variant for "
            f"model_variant: test; register a small {name!r} next to {arch!r} (as every baseline does) "
            f"or set model_variant: paper"
        )
    return name


def model_spec(config: Mapping, model: str, dataset: str, variant: str | None = None) -> tuple[str, dict]:
    """(architecture, model keywords) of a config model on a dataset key, as training builds it.

    ``variant`` (``paper`` or ``test``) replaces the config's ``model_variant``.
    """
    from logvmamba.data import get_info

    if variant is not None:
        config = dict(config, model_variant=variant)
    dims = get_info(dataset).spatial_dims
    arch = model_arch(config, model, dims)
    if arch is None or not supports(config, model, dims):
        raise ConfigError(f"model {model!r} has no {dims}D architecture in config recipes")
    kwargs = dict(_merged_recipe(config, model, dataset).get("model_kwargs") or {})
    return arch, kwargs


def ablation_models(config: Mapping) -> list[str]:
    """The models of the configured ablation tables, in table order, without repeats."""
    ablations = config.get("ablations") or {}
    return list(dict.fromkeys(ablations.get("mixers", []) + ablations.get("placements", [])))


def config_models(config: Mapping) -> list[str]:
    """Every model the config trains: ``models`` then the ablation variants."""
    return list(dict.fromkeys(list(config["models"]) + ablation_models(config)))


def config_folds(config: Mapping) -> list[int]:
    """The folds every model trains on: ``folds``, else ``[fold]``, else ``[0]``."""
    folds = config.get("folds")
    if folds is None:
        folds = [config.get("fold", 0)]
    return [int(f) for f in folds]


def evaluate_on(config: Mapping, dataset: str) -> str:
    """``protocol`` or ``validation``: which cases the runs on ``dataset`` score (schema ``evaluate_on``)."""
    setting = config.get("evaluate_on", "protocol")
    if isinstance(setting, Mapping):
        setting = setting.get(dataset, setting.get("default", "protocol"))
    return setting


def run_grid(config: Mapping, dataset: str | None = None, ablations: bool = True) -> list[tuple[str, str, int, int]]:
    """(dataset, model, fold, seed) of every configured run: the models on the datasets, the
    ablation variants on the ablation datasets; only models that fit the dataset's dims."""
    from logvmamba.data import get_info

    pairs = [(d, m) for d in config["datasets"] for m in config["models"]]
    if ablations:
        datasets = (config.get("ablations") or {}).get("datasets", config["datasets"])
        pairs += [(d, m) for d in datasets for m in ablation_models(config)]
    return [
        (key, model, fold, seed)
        for key, model in dict.fromkeys(pairs)
        if dataset in (None, key) and supports(config, model, get_info(key).spatial_dims)
        for fold in config_folds(config)
        for seed in config["seeds"]
    ]


def check_models(config: Mapping) -> None:
    """Raise :class:`ConfigError` for a configured model with no registered architecture (or no
    ``_test`` variant of it under ``model_variant: test``), or a report reference model that the
    config does not train."""
    from logvmamba import list_models

    known = set(list_models())
    reference = (config.get("report") or {}).get("reference", "logvmamba")
    if reference not in config["models"]:
        raise ConfigError(f"report: reference {reference!r} is not one of models: {', '.join(config['models'])}")
    for model in config_models(config):
        arch = _arch_entry(config, model)
        archs = arch.values() if isinstance(arch, Mapping) else [arch]
        missing = [a for a in archs if a not in known]
        if missing:
            raise ConfigError(
                f"models: {model!r} needs the architecture {missing[0]!r}, which no module registers; "
                f"add a file with a @register_model function to baselines/ (known: {', '.join(sorted(known))})"
            )
        if config["model_variant"] == "test":
            for a in archs:
                _test_variant(model, a, known)


def check_overrides(config: Mapping) -> None:
    """Raise :class:`ConfigError` for ``overrides`` under a model the config does not train, or under
    a user dataset key it does not run: a misspelt key would otherwise change nothing, silently.

    Overrides of a model's ``base`` apply to it (the ablation variants inherit ``logvmamba``'s); the
    four datasets are always known, so a shared config may keep their overrides while running fewer.
    Call it after :func:`register_datasets` (which turns dataset entries into keys).
    """
    from logvmamba.data import DATASETS

    trained = config_models(config)
    models = {name for model in trained for name in _lineage(config, model)}
    datasets = [*config["datasets"], *(config.get("ablations") or {}).get("datasets", [])]
    for model, by_dataset in (config.get("overrides") or {}).items():
        if model not in models:
            raise ConfigError(f"overrides: {model!r} is not a model this config trains "
                              f"(models and ablations: {', '.join(trained)})")
        unknown = [key for key in by_dataset if key not in DATASETS and key not in datasets]
        if unknown:
            raise ConfigError(f"overrides: {model}: {unknown[0]!r} is not a configured dataset "
                              f"(datasets: {', '.join(dict.fromkeys(datasets))})")


def check_patch_sizes(config: Mapping) -> None:
    """Raise :class:`ConfigError` for a ``patch_size`` entry that a model trained on its dataset refuses.

    The models declare no divisor (nnU-Net's depends on the patch), so each (dataset, model) pair of
    the run grid with a configured patch is built once at the recipe's patch (rounded up to its
    ``patch_multiple``, as training does), on the meta device where the network allows it: the dry
    run refuses what the train job would, with the network's own message. Without ``patch_size``
    entries nothing is built. A user dataset's patch is fitted to every model (:func:`fitting_patch`).
    """
    from logvmamba.data import get_info

    configured = config.get("patch_size") or {}
    for key, model in dict.fromkeys((d, m) for d, m, *_ in run_grid(config)):
        if key not in configured or _user_info(key) is not None:
            continue
        info = get_info(key)
        recipe = dataset_recipe(config, model, key)
        build = (recipe["arch"], info.spatial_dims, info.in_channels, info.num_outputs)
        kwargs = json.dumps(recipe["model_kwargs"], sort_keys=True)
        patch = tuple(recipe["patch_size"])
        error = _refusal(*build, patch, kwargs)
        if error is None:
            continue
        try:
            nearest = f"; the nearest patch it takes is {list(_fitting_patch(*build, patch, kwargs))}"
        except ConfigError:
            nearest = ""
        raise ConfigError(f"patch_size: {key}: {list(configured[key])} cannot train model {model!r} "
                          f"({recipe['arch']}): {error}{nearest}")


def supports(config: Mapping, model: str, spatial_dims: int) -> bool:
    """Whether a config model runs on data of ``spatial_dims``."""
    entry = _entry(config, model)
    arch = _arch_entry(config, model)
    if isinstance(arch, Mapping):
        return f"{spatial_dims}d" in arch
    return spatial_dims in entry.get("spatial_dims", [2, 3])


def _merged_recipe(config: Mapping, model: str, key: str) -> dict:
    """The recipe fields of ``model`` on dataset ``key`` in the order of the module docstring."""
    entry = _entry(config, model)
    recipe = _merge(config["recipe_defaults"], config["training"])
    recipe = _merge(recipe, config.get("dataset_training", {}).get(key, {}))
    recipe = _merge(recipe, {k: v for k, v in entry.items()
                             if k not in ("arch", "datasets", "spatial_dims", "label", "by_dims")})
    recipe = _merge(recipe, entry.get("by_dims", {}).get(f"{_dims(key)}d", {}))
    recipe = _merge(recipe, entry.get("datasets", {}).get(key, {}))
    for name in _lineage(config, model):
        recipe = _merge(recipe, config.get("overrides", {}).get(name, {}).get(key, {}))
    return recipe


def resolve_recipe(config: Mapping, model: str, ds) -> dict:
    """The complete training recipe of ``model`` on dataset ``ds`` (a RawDataset)."""
    key = ds.info.key if ds.info is not None else ds.name
    patch = config.get("patch_size", {}).get(key)
    planner = _merged_recipe(config, model, key).get("planner") if ds.info is not None else None
    if patch is None and planner is not None and not ds.is_synthetic:
        # a recipe with its own planner (nnU-Net ResEnc M / L) trains at that planner's patch on real data
        patch = planned_patch(ds, planner)
    elif patch is None and ds.info is not None and ds.info.user:
        patch = planned_patch(ds)
    if patch is None:
        from logvmamba.data.loading import default_patch_size

        patch = default_patch_size(ds)
    recipe = _resolve(config, model, key, ds.spatial_dims, patch)
    if recipe.get("target_spacing") == "planned":
        recipe["target_spacing"] = planned_spacing(ds)
    return recipe


def planned_patch(ds, planner: str | None = None) -> list[int]:
    """nnU-Net v2's planned patch of a dataset (``3d_fullres`` for 3D, ``2d`` for 2D), in our array axes;
    ``planner``: a key of :data:`logvmamba.planning.PLANNERS` (default nnU-Net's ``ExperimentPlanner``)."""
    return [int(p) for p in _planned(ds, planner)["patch_size"]]


def planned_spacing(ds) -> list[float]:
    """nnU-Net v2's target spacing of the same configuration, in our array axes."""
    return [float(s) for s in _planned(ds)["spacing"]]


def _planned(ds, planner: str | None = None) -> dict:
    from logvmamba.data.fingerprint import dataset_fingerprint
    from logvmamba.planning import DEFAULT_PLANNER, in_array_axes, plan

    configurations = plan(dataset_fingerprint(ds), planner=planner or DEFAULT_PLANNER)["configurations"]
    name = "3d_fullres" if ds.spatial_dims == 3 else "2d"
    if name not in configurations:
        raise ConfigError(f"{ds.path}: nnU-Net's planner gives no {name} configuration (the median image has one "
                          f"slice); set patch_size: {{{ds.key}: [...]}} in the config")
    return in_array_axes(configurations[name])


def dataset_recipe(config: Mapping, model: str, key: str) -> dict:
    """The recipe of ``model`` on a registered dataset key, before its data exists.

    Equal to :func:`resolve_recipe` on the dataset the config prepares (synthetic or
    real), so the workflow can compare recipes when it builds the DAG. A user dataset's
    patch is the one :func:`register_datasets` planned (``"planned"`` before that).
    """
    from logvmamba.data import get_info

    info = get_info(key)
    patch = config.get("patch_size", {}).get(key)
    if patch is None and info.user and info.patch_size is None:  # not registered by register_datasets
        recipe = _resolve(config, model, key, info.spatial_dims, [1] * info.spatial_dims)
        recipe["patch_size"] = "planned"
        return recipe
    if patch is None:
        patch = info.synthetic_patch_size if config.get("synthetic") else info.patch_size
    return _resolve(config, model, key, info.spatial_dims, patch)


#: Real images shipped in packages: the folder name -> the converter that builds it
#: (``python -m logvmamba.data.convert <source> fetch <data_root>``).
PACKAGED = {
    "Dataset951_StardistNuclei": "stardist",
    "Dataset952_Colin27AAL": "mricron",
    "Dataset953_ICBM152Tissue": "icbm152",
}


def register_datasets(config: dict) -> dict[str, str]:
    """Turn the config's dataset entries into keys and make its user datasets known.

    An entry is one of the four, a folder name or id under ``data_root``
    (``Dataset951_StardistNuclei``, ``Dataset951``) or a path to a dataset folder. A user
    dataset's entries become its key ``DatasetXXX`` (in ``datasets`` and
    ``ablations.datasets``), its folder goes to ``config["dataset_folders"]``, and its
    :class:`~logvmamba.data.DatasetInfo` is registered in this process. A packaged real
    dataset (:data:`PACKAGED`) missing under ``data_root`` is built first. Calling it again
    (a script of the workflow) registers the folders the first call found.

    Raises:
        ConfigError: a dataset that cannot be found or read, or two entries for one key.
    """
    from logvmamba.data import DATASETS, DatasetError, RawDataset, find_info, resolve_dataset_dir
    from logvmamba.data.registry import register_dataset

    folders = dict(config.get("dataset_folders") or {})
    root = config.get("data_root") or None

    def key_of(entry: str) -> str:
        entry = str(entry)
        if entry in folders:
            folder = folders[entry]
        else:
            info = find_info(entry)
            if info is not None and not info.user:
                return info.key
            try:
                folder = resolve_dataset_dir(entry, root)
            except DatasetError:
                name = Path(entry).name
                if name not in PACKAGED or root is None:
                    raise
                from logvmamba.data.convert import convert

                folder = convert(PACKAGED[name], "fetch", root)
        ds = RawDataset(folder)
        if ds.info is None:
            raise ConfigError(f"datasets: {entry!r} ({folder}) is not named DatasetXXX_Name, as nnU-Net v2 folders are")
        if not ds.info.user:
            return ds.info.key
        patch = tuple(config.get("patch_size", {}).get(ds.info.key) or planned_patch(ds))
        register_dataset(dataclasses.replace(ds.info, patch_size=patch, synthetic_patch_size=patch,
                                             target_spacing=tuple(planned_spacing(ds))))
        folders[ds.info.key] = str(Path(folder).resolve())
        return ds.info.key

    try:
        keys = [key_of(e) for e in config["datasets"]]
        ablations = config.get("ablations") or {}
        ablation_keys = [key_of(e) for e in ablations.get("datasets", [])]
    except DatasetError as err:
        raise ConfigError(f"datasets: {err}") from None
    for name, values in (("datasets", keys), ("ablations: datasets", ablation_keys)):
        repeated = sorted({k for k in values if values.count(k) > 1})
        if repeated:
            raise ConfigError(f"{name}: {', '.join(repeated)} listed twice (one dataset under two names)")
    config["datasets"] = keys
    if ablations.get("datasets"):
        config["ablations"] = dict(ablations, datasets=ablation_keys)
    config["dataset_folders"] = {k: v for k, v in folders.items() if k not in DATASETS}
    return config["dataset_folders"]


def weight_recipe(recipe: Mapping) -> dict:
    """The part of a recipe that decides the trained weights (all but :data:`INFERENCE_KEYS`)."""
    return {k: copy.deepcopy(v) for k, v in recipe.items() if k not in INFERENCE_KEYS}


def _resolve(config: Mapping, model: str, key: str, spatial_dims: int, patch) -> dict:
    recipe = _merged_recipe(config, model, key)
    arch = model_arch(config, model, spatial_dims)
    if arch is None:
        raise ConfigError(f"model {model!r} has no {spatial_dims}D architecture in config recipes")
    m = recipe["patch_multiple"]
    kwargs = dict(recipe.get("model_kwargs") or {})
    if recipe["deep_supervision"]:
        kwargs["deep_supervision"] = True
    patch = [-(-int(p) // m) * m for p in patch]
    info = _user_info(key)
    if info is not None and all(isinstance(p, int) and p > 1 for p in patch):
        patch = fitting_patch(arch, spatial_dims, info.in_channels, info.num_outputs, patch, kwargs)
    recipe.update(arch=arch, patch_size=patch, model=model, dataset=key)
    recipe["model_kwargs"] = kwargs
    if config.get("resample") and info is not None:  # the four keep their native spacing, as the papers
        recipe["target_spacing"] = list(info.target_spacing) if info.target_spacing is not None else "planned"
    return recipe


def _dims(key: str) -> int:
    from logvmamba.data import get_info

    return get_info(key).spatial_dims


def _user_info(key: str):
    from logvmamba.data.registry import registered

    info = registered().get(key)
    return info if info is not None and info.user else None


def fitting_patch(arch: str, spatial_dims: int, in_channels: int, out_channels: int, patch, kwargs=None) -> list[int]:
    """The smallest patch at least ``patch`` that ``arch`` builds for: each side rounded up to a
    multiple of 1, 2, 4, ... 64, the first the network accepts (built on the meta device).

    A user dataset's planned patch meets no model's divisibility by design; this is how every
    registered model trains at it without declaring its stride.
    """
    return list(_fitting_patch(arch, spatial_dims, in_channels, out_channels, tuple(int(p) for p in patch),
                               json.dumps(kwargs or {}, sort_keys=True)))


@functools.lru_cache(maxsize=None)
def _fitting_patch(arch, spatial_dims, in_channels, out_channels, patch, kwargs_json):
    errors: list[str] = []
    for multiple in (1, 2, 4, 8, 16, 32, 64):
        size = tuple(-(-p // multiple) * multiple for p in patch)
        error = _refusal(arch, spatial_dims, in_channels, out_channels, size, kwargs_json)
        if error is None:
            return size
        errors.append(error)
    raise ConfigError(f"{arch}: builds for no rounding of the patch {list(patch)} (last: {errors[-1]})")


@functools.lru_cache(maxsize=None)
def _refusal(arch, spatial_dims, in_channels, out_channels, size, kwargs_json) -> str | None:
    """Why ``arch`` refuses to build for ``img_size=size`` (its message), or None when it builds."""
    import torch

    from logvmamba import create_model

    def build(device) -> None:
        with torch.device(device):
            create_model(arch, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                         img_size=size, **json.loads(kwargs_json))

    try:
        try:
            build("meta")
        except (RuntimeError, NotImplementedError):  # a network whose constructor computes on its weights
            build("cpu")
    except (ValueError, AssertionError) as err:  # how the networks refuse an img_size
        return str(err)
    return None
