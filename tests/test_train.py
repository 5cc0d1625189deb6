"""Training: recipes, determinism, resume after kill -9, NaN stop; inference and the pipeline."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from logvmamba.config import ConfigError, load_config, resolve_recipe
from logvmamba.data import DATASETS, RawDataset
from logvmamba.checkpoint import load_checkpoint, load_trained_model
from logvmamba.train import SegmentationLoss, TrainingDiverged, build_optimizer, lr_at, train

ROOT = Path(__file__).resolve().parents[1]


def _recipe(ds, **changes):
    config = load_config(ROOT / "config/config.yaml")
    recipe = resolve_recipe(config, "logvmamba", ds)
    recipe.update(epochs=2, iterations=2, batch_size=1, val_every=1, val_cases=1)
    recipe.update(changes)
    return recipe


@pytest.fixture(scope="module")
def endoscopy(synth_root):
    return RawDataset(synth_root / DATASETS["endoscopy"].synthetic_name)


def test_recipe_resolution_order():
    config = load_config(ROOT / "config/config.yaml")
    config["overrides"] = {"logvmamba": {"brats": {"lr": 0.5}}}

    class FakeDs:
        def __init__(self, key, dims):
            self.info, self.spatial_dims, self.name = DATASETS[key], dims, key
            self.is_synthetic = True

    brats = resolve_recipe(config, "logvmamba", FakeDs("brats", 3))
    endo = resolve_recipe(config, "logvmamba", FakeDs("endoscopy", 2))
    assert brats["arch"] == endo["arch"] == "logvmamba_test"  # one name; spatial_dims picks the network
    assert brats["optimizer"] == "adam" and brats["lr"] == 0.5 and brats["grad_clip"] == 25  # release BraTS recipe
    assert endo["optimizer"] == "adamw" and endo["weight_decay"] == 5e-2 and endo["model_kwargs"] == {"deep_supervision": True}
    assert brats["model_kwargs"] == {} and brats["patch_size"] == list(DATASETS["brats"].synthetic_patch_size)
    config["model_variant"] = "paper"
    assert resolve_recipe(config, "logvmamba", FakeDs("brats", 3))["arch"] == "logvmamba"


def test_config_typo_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/config.yaml").read_text().replace("iterations: 20", "iteration: 20"))
    with pytest.raises(ConfigError, match="training.*'iteration' was unexpected"):
        load_config(bad)
    bad.write_text("datasets: [endoscopy\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "schedule,epoch,expected",
    [("poly", 5, 1e-2 * 0.5**0.9), ("cosine", 5, 0.5e-2), ("step", 7, 1e-3), ("step", 6, 1e-2), ("constant", 9, 1e-2)],
)
def test_lr_schedules(schedule, epoch, expected):
    recipe = dict(lr=1e-2, epochs=10, schedule=schedule, poly_power=0.9, min_lr=0.0, step_at=[0.7], step_gamma=0.1)
    assert lr_at(epoch, recipe) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_the_fused_optimizer_steps_as_the_for_loop_one(name):
    # reference: torch's for-loop implementation of the same optimizer, same gradients
    recipe = dict(optimizer=name, lr=1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True, eps=1e-8)
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.InstanceNorm2d(4, affine=True)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = build_optimizer(nets[0], recipe)
    assert all(group["fused"] for group in fused.param_groups)
    cls = type(fused)
    kwargs = {k: v for k, v in fused.defaults.items() if k not in ("fused", "foreach", "decoupled_weight_decay")}
    loop = cls(nets[1].parameters(), **kwargs, foreach=False)
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        for net, opt in zip(nets, (fused, loop)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_deep_supervision_loss_weights():
    loss = SegmentationLoss(regions=False)
    target = torch.randint(0, 3, (1, 1, 8, 8))
    full = torch.randn(1, 3, 8, 8)
    outs = [full, torch.randn(1, 3, 4, 4), torch.randn(1, 3, 2, 2)]
    expected = (1 * loss.loss(full, target) + 0.5 * loss.loss(outs[1], target[..., ::2, ::2])) / 1.5
    assert loss(outs, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_training_is_deterministic_and_improves_nothing_silently(endoscopy, tmp_path):
    recipe = _recipe(endoscopy)
    a = train(recipe, endoscopy.path, tmp_path / "a", seed=3, progress=False)
    b = train(recipe, endoscopy.path, tmp_path / "b", seed=3, progress=False)
    measured = {"train_seconds", "peak_memory_MiB"}  # the budget: clock and RSS, not results
    assert measured <= a.keys() and {k: a[k] for k in a.keys() - measured} == {k: b[k] for k in b.keys() - measured}
    log = pd.read_csv(tmp_path / "a" / "log.csv")
    assert list(log.columns) == ["epoch", "train_loss", "val_score", "lr", "seconds"] and len(log) == 2
    sa = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")["model"]
    sb = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    model, loaded = load_trained_model(tmp_path / "a" / "checkpoint_best.pt")
    assert loaded["recipe"] == recipe and not model.training


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(endoscopy, tmp_path):
    # A step schedule that multiplies the lr by 1e30 after the first epoch blows the loss up.
    recipe = _recipe(endoscopy, optimizer="sgd", lr=1e-3, schedule="step", step_at=[0.5], step_gamma=1e30,
                     grad_clip=None, val_every=10, iterations=3)
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at epoch 1 .*last good checkpoint is .*checkpoint_last.pt"):
        train(recipe, endoscopy.path, tmp_path, seed=0, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "train_done.json").exists()


KILLER = """
import os, signal
import logvmamba.train as t
calls = [0]
forward = t.SegmentationLoss.forward
def dying_forward(self, *args):
    calls[0] += 1
    if calls[0] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return forward(self, *args)
t.SegmentationLoss.forward = dying_forward
"""


@pytest.mark.parametrize("kill_at", [5, 7])  # mid-epoch 1; first iteration of epoch 2
def test_resume_after_kill_matches_an_unbroken_run(endoscopy, tmp_path, kill_at):
    recipe = _recipe(endoscopy, epochs=3, iterations=3, val_every=10)
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    run = (
        "import json, sys; from logvmamba.train import train; "
        f"r = json.load(open({str(tmp_path / 'recipe.json')!r})); "
        f"train(r, {str(endoscopy.path)!r}, sys.argv[1], seed=1, progress=False)"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", run, str(tmp_path / "whole")], check=True, env=env, timeout=600)
    killed = tmp_path / "killed"
    dying = subprocess.run([sys.executable, "-c", KILLER.format(kill_at=kill_at) + run, str(killed)], env=env, timeout=600)
    assert dying.returncode == -signal.SIGKILL
    assert not (killed / "train_done.json").exists()
    subprocess.run([sys.executable, "-c", run, str(killed)], check=True, env=env, timeout=600)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint_last.pt")
    resumed = load_checkpoint(killed / "checkpoint_last.pt")
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    assert [r["train_loss"] for r in whole["log"]] == [r["train_loss"] for r in resumed["log"]]
    assert not list(killed.glob(".*.tmp"))  # no half-written file left behind


def test_checkpoint_of_another_recipe_is_refused(endoscopy, tmp_path):
    recipe = _recipe(endoscopy, epochs=1)
    train(recipe, endoscopy.path, tmp_path, seed=0, progress=False)
    with pytest.raises(ValueError, match="checkpoint_last.pt: checkpoint of another recipe"):
        train(dict(recipe, lr=0.5, epochs=2), endoscopy.path, tmp_path, seed=0, progress=False)


def test_a_retry_keeps_the_best_weights_after_snakemake_deleted_them(endoscopy, tmp_path):
    recipe = _recipe(endoscopy, epochs=2, lr=0.0)       # equal scores: the best stays at epoch 0
    train(recipe, endoscopy.path, tmp_path, seed=0, progress=False)
    before = load_checkpoint(tmp_path / "checkpoint_best.pt")
    assert before["epoch"] == 0
    (tmp_path / "checkpoint_best.pt").unlink()      # what Snakemake does before rerunning the job
    train(recipe, endoscopy.path, tmp_path, seed=0, progress=False)
    after = load_checkpoint(tmp_path / "checkpoint_best.pt")
    assert after["epoch"] == before["epoch"] and after["best"] == before["best"]
    assert all(torch.equal(after["model"][k], v) for k, v in before["model"].items())


def test_a_stale_checkpoint_restarts_when_the_workflow_asks(endoscopy, tmp_path):
    recipe = _recipe(endoscopy, epochs=1)
    train(recipe, endoscopy.path, tmp_path, seed=0, progress=False)
    changed = dict(recipe, lr=0.5, epochs=2)
    summary = train(changed, endoscopy.path, tmp_path, seed=0, progress=False, restart_stale=True)
    state = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert summary["epochs"] == 2 and state["recipe"] == changed and len(state["log"]) == 2


@pytest.mark.parametrize("key", ["endoscopy", "cell", "brats", "acdc"])
def test_pipeline_predicts_and_scores_every_dataset(key, synth_root, tmp_path):
    from logvmamba.pipeline import evaluate_run, evaluation_cases, predict_run, prepare_dataset, write_splits

    marker = tmp_path / "marker.json"
    prepare_dataset(key, synth_root, True, marker)
    write_splits(marker, tmp_path / "splits.json")
    ds = RawDataset(json.loads(marker.read_text())["folder"])
    recipe = _recipe(ds, epochs=1, iterations=1, val_cases=1)
    train(recipe, ds.path, tmp_path / "run", seed=0, progress=False)
    preds = predict_run(marker, tmp_path / "run" / "checkpoint_best.pt", tmp_path / "run" / "predictions", fold=0)
    assert [p.name for p in preds] == [f"{c}{ds.file_ending}" for c in evaluation_cases(ds, 0)]
    summary = evaluate_run(marker, tmp_path / "run" / "predictions", tmp_path / "run", fold=0)
    assert summary["n_cases"] == len(preds) and math.isfinite(summary["main"])
    assert (tmp_path / "run" / "per_case.csv").is_file()


def test_prepare_real_dataset_fails_fast_with_the_download_page(tmp_path):
    from logvmamba.data import DatasetError
    from logvmamba.pipeline import prepare_dataset

    with pytest.raises(DatasetError, match="endovis|EndoVis|grand-challenge"):
        prepare_dataset("endoscopy", tmp_path, False, tmp_path / "marker.json")
    assert not (tmp_path / "marker.json").exists()
