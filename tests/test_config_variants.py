"""``model_variant: test`` needs every configured architecture's ``_test`` variant."""

import pytest

import logvmamba
from logvmamba.config import ROOT, ConfigError, check_models, dataset_recipe, load_config, model_arch, model_spec, run_grid

REGISTERED = ["logvmamba_swin_umamba", "logvmamba_swin_umamba_test", "logvmamba_umamba_enc",
              "logvmamba_umamba_enc_test", "logvmamba", "logvmamba_test", "nnunet", "nnunet_test", "my_unet"]


@pytest.fixture
def registry_without_my_unet_test(monkeypatch):
    """A registry where ``my_unet`` has no tiny variant (no module is imported or registered)."""
    monkeypatch.setattr(logvmamba, "list_models", lambda pattern=None: list(REGISTERED))


def _config(variant):
    config = load_config(ROOT / "config" / "config.yaml")
    config.update(models=["logvmamba", "nnunet", "my_unet"], model_variant=variant)
    return config


@pytest.mark.parametrize("dims", [2, 3])
def test_a_missing_test_variant_is_an_error_naming_model_and_fix(registry_without_my_unet_test, dims):
    with pytest.raises(ConfigError) as err:
        model_arch(_config("test"), "my_unet", dims)
    message = str(err.value)
    assert "'my_unet'" in message and "'my_unet_test'" in message and "model_variant: paper" in message


def test_check_models_fails_at_dag_time_without_the_test_variant(registry_without_my_unet_test):
    with pytest.raises(ConfigError, match="my_unet_test"):
        check_models(_config("test"))


def test_the_paper_variant_needs_no_test_variant(registry_without_my_unet_test):
    config = _config("paper")
    check_models(config)
    assert model_arch(config, "my_unet", 2) == "my_unet"
    assert model_spec(_config("test"), "my_unet", "acdc", variant="paper") == ("my_unet", {})


def test_the_default_and_paper_configs_pass():
    for name in ("config.yaml", "paper.yaml"):
        config = load_config(ROOT / "config" / name)
        check_models(config)
        for dataset, model, *_ in run_grid(config):
            arch, _ = model_spec(config, model, dataset)
            assert arch.endswith("_test") == (config["model_variant"] == "test"), (name, model, arch)


def test_the_default_config_gives_every_model_of_a_dataset_the_same_run():
    """The demo compares models at one budget: run length, batch, validation and inference per dataset."""
    config = load_config(ROOT / "config" / "config.yaml")
    keys = ("epochs", "iterations", "batch_size", "val_every", "val_cases", "tta", "overlap", "patch_size")
    runs = {}
    for dataset, model, *_ in run_grid(config):
        recipe = dataset_recipe(config, model, dataset)
        runs.setdefault(dataset, {})[model] = tuple(str(recipe[k]) for k in keys)
    assert set(runs) == {"endoscopy", "cell", "brats", "acdc"} and len(runs["endoscopy"]) == 9
    for dataset, by_model in runs.items():
        assert len(set(by_model.values())) == 1, (dataset, by_model)
