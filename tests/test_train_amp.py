"""Mixed precision in the trainer: bfloat16 and float16 autocast on the CPU, the GradScaler, NaN under AMP."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import logvmamba.train as train_module
from logvmamba.checkpoint import load_checkpoint
from logvmamba.config import load_config, resolve_recipe, weight_recipe
from logvmamba.data import DATASETS, RawDataset
from logvmamba.train import TrainingDiverged, amp_mode, train

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20


@pytest.fixture(scope="module")
def endoscopy(synth_root):
    return RawDataset(synth_root / DATASETS["endoscopy"].synthetic_name)


def _recipe(ds, **changes):
    recipe = resolve_recipe(load_config(ROOT / "config/config.yaml"), "logvmamba", ds)  # logvmamba_test, 2D
    recipe.update(epochs=1, iterations=STEPS, batch_size=2, val_every=10, val_cases=1)
    return dict(recipe, **changes)


class _InfGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward (what a float16 overflow gives)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def _run(ds, out, amp, monkeypatch, change_loss=None):
    """Train ``STEPS`` steps; (loss per step, dtypes of every conv and linear output)."""
    losses, dtypes = [], set()
    forward = train_module.SegmentationLoss.forward

    def recorded(self, output, target):
        loss = forward(self, output, target)
        if change_loss is not None:
            loss = change_loss(len(losses), loss)
        losses.append(loss.item())
        return loss

    def hook(module, args, output):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            dtypes.add(output.dtype)

    monkeypatch.setattr(train_module.SegmentationLoss, "forward", recorded)
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        train(_recipe(ds, amp=amp), ds.path, out, seed=0, progress=False)
    finally:
        handle.remove()
    return torch.tensor(losses), dtypes


@pytest.mark.parametrize(
    "amp,device,expected",
    [(False, "cuda", (None, False)), (True, "cpu", (None, False)), (True, "cuda", (torch.float16, True)),
     ("float16", "cpu", (torch.float16, True)), ("bfloat16", "cpu", (torch.bfloat16, False)),
     ("bfloat16", "cuda", (torch.bfloat16, False))],
)
def test_amp_modes(amp, device, expected):
    assert amp_mode(amp, torch.device(device)) == expected


def test_recipes_keep_a_boolean_amp():
    # a recipe written before amp took strings compares equal to today's (no stale checkpoints)
    class FakeDs:
        info, spatial_dims, name, is_synthetic = DATASETS["endoscopy"], 2, "endoscopy", True

    config = load_config(ROOT / "config/config.yaml")
    assert resolve_recipe(config, "logvmamba", FakeDs())["amp"] is False
    assert resolve_recipe(config, "nnunet", FakeDs())["amp"] is True
    old = resolve_recipe(config, "nnunet", FakeDs())
    assert weight_recipe(old) == weight_recipe(dict(old, amp=True))


def test_bfloat16_training_follows_float32(endoscopy, tmp_path, monkeypatch):
    full, full_dtypes = _run(endoscopy, tmp_path / "fp32", False, monkeypatch)
    half, half_dtypes = _run(endoscopy, tmp_path / "bf16", "bfloat16", monkeypatch)
    assert len(half) == len(full) == STEPS and torch.isfinite(half).all() and torch.isfinite(full).all()
    assert full_dtypes == {torch.float32} and torch.bfloat16 in half_dtypes  # autocast was on, and only there
    rel = (half - full).abs() / full.abs()
    # Measured on 2 CPU cores over seeds 0-5 (batch 2, lr 2e-3 AdamW): first step <= 7e-5 (same
    # weights, only bfloat16 rounding), any step <= 0.06, mean over the 20 steps <= 0.013. The
    # bounds leave 2-10x of that for other CPUs' bfloat16 kernels.
    assert 0 < rel[0] < 1e-3, rel
    assert rel.max() < 0.15 and rel.mean() < 0.03, rel
    assert full[-5:].mean() < full[:5].mean() and half[-5:].mean() < half[:5].mean()  # both learn


def test_float16_with_a_grad_scaler_skips_infinite_gradients(endoscopy, tmp_path, monkeypatch):
    def overflow_at_step_3(step, loss):
        return _InfGradient.apply(loss) if step == 3 else loss

    losses, dtypes = _run(endoscopy, tmp_path, "float16", monkeypatch, overflow_at_step_3)
    assert torch.isfinite(losses).all() and torch.float16 in dtypes
    state = load_checkpoint(tmp_path / "checkpoint_last.pt")
    # an infinite step taken would leave NaN weights; skipped, it halves the scale (from 2^16)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["scaler"]["scale"] <= 2.0**15


@pytest.mark.parametrize("amp", ["bfloat16", "float16"])
def test_a_nan_loss_under_amp_is_the_diverged_error(endoscopy, tmp_path, monkeypatch, amp):
    def nan_at_step_1(step, loss):
        return loss * math.nan if step == 1 else loss

    with pytest.raises(TrainingDiverged, match=rf"loss is nan at epoch 0 iteration 1; .*{amp} autocast is on"):
        _run(endoscopy, tmp_path, amp, monkeypatch, nan_at_step_1)
    assert not (tmp_path / "checkpoint_last.pt").exists() and not (tmp_path / "train_done.json").exists()
