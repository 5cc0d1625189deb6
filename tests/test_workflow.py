"""The Snakemake workflow: lint, dry runs of its targets, config validation."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _snakemake(*args, cwd=ROOT, timeout=300):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *args]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout + out.stderr


def _jobs(text: str) -> dict[str, int]:
    """Job counts of a dry run's 'Job stats' table."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}


# default config: 2 models on 4 datasets, 7 ablation variants on Endoscopy (No-Mamba control included), 1 seed
@pytest.mark.parametrize("target, datasets, runs", [
    ("all_tables", 4, 2 * 4 + 7), ("all_metrics", 4, 2 * 4 + 7), ("all", 4, 2 * 4 + 7),
    ("metrics_brats", 1, 2), ("figure5", 4, 2 * 4),
])
def test_default_dry_run(target, datasets, runs, tmp_path):
    code, out = _snakemake("-n", target, "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"))
    assert code == 0, out[-3000:]
    jobs = _jobs(out)
    assert jobs["train"] == jobs["predict"] == jobs["evaluate"] == runs
    assert jobs["prepare_data"] == jobs["split"] == datasets
    if target in ("all_tables", "all"):
        assert jobs["tables"] == jobs["plot_efficiency"] == jobs["plot_ranks"] == 1 and jobs["stats"] == 4
        assert jobs["profile"] == runs
    if target == "figure5":  # the main models only: no ablation runs, tables or statistics
        assert jobs["plot_efficiency"] == 1 and jobs["profile"] == runs and "tables" not in jobs and "stats" not in jobs


def test_a_local_run_uses_at_most_the_usable_cpus(tmp_path):
    cpus = len(os.sched_getaffinity(0))
    code, out = _snakemake("--cores", str(cpus + 6), "resources/prepared/acdc.json", "--directory", str(tmp_path),
                           "--snakefile", str(ROOT / "Snakefile"))
    assert code == 0, out[-3000:]
    assert f"--cores {cpus + 6} asked for, {cpus} CPUs usable" in out and f"Provided cores: {cpus}\n" in out
    # --jobs (a cluster executor's setting) is left as asked
    code, out = _snakemake("-n", "--cores", str(cpus + 6), "--jobs", "3", "all_tables", "--directory", str(tmp_path),
                           "--snakefile", str(ROOT / "Snakefile"))
    assert code == 0 and "CPUs usable" not in out, out[-3000:]


def test_paper_dry_run_lists_the_full_grid(tmp_path):
    code, out = _snakemake("-n", "all_tables", "--configfile", str(ROOT / "config/paper.yaml"),
                           "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"))
    assert code == 0, out[-3000:]
    # 2D datasets x 14 models + 3D datasets x 12 (the Swin-UMamba models are 2D only; the ResEnc and
    # No-Mamba controls included) + 7 ablation variants x 4 datasets, 5 folds x 3 seeds each; one
    # profile per model x dataset on cuda
    jobs = _jobs(out)
    assert jobs["train"] == (2 * 14 + 2 * 12 + 7 * 4) * 5 * 3
    assert jobs["profile"] == 2 * 14 + 2 * 12 + 7 * 4
    assert jobs["stats"] == 4 and jobs["tables"] == jobs["plot_efficiency"] == 1
    assert "results/brats/logvmamba/fold0/seed2/summary.json" in out and "results/brats/swin_umamba/" not in out
    assert "results/acdc/logvmamba_split/fold4/seed1/summary.json" in out and "profile_cuda.json" in out
    assert "results/brats/nnunet_resenc_l/fold2/seed0/summary.json" in out
    assert "results/endoscopy/logvmamba_nomamba/fold0/seed0/summary.json" in out


def test_paper_real_run_fails_fast_with_the_missing_dataset_message(tmp_path):
    code, out = _snakemake("resources/prepared/endoscopy.json",
                           "--configfile", str(ROOT / "config/paper.yaml"),
                           "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"))
    assert code != 0
    log = (tmp_path / "logs/prepare_data/endoscopy.log").read_text()
    assert "Dataset704_Endovis17" in log and "http" in log


def test_the_default_profile_is_loaded(tmp_path, monkeypatch):
    """Snakemake finds profiles/default beside the Snakefile, from any working directory."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(tmp_path)
    _, args = parse_args(["-n", "--snakefile", str(ROOT / "Snakefile"), "all_tables"])
    assert args.rerun_incomplete and args.printshellcmds
    _, args = parse_args(["-n", "--snakefile", str(ROOT / "Snakefile"), "--workflow-profile", "none", "all_tables"])
    assert not args.rerun_incomplete


def test_every_script_is_used_by_a_rule():
    rules = "".join(f.read_text() for f in [ROOT / "Snakefile", *(ROOT / "workflow/rules").glob("*.smk")])
    used = set(re.findall(r'"\.\./scripts/(\w+\.py)"', rules))
    assert used == {p.name for p in (ROOT / "workflow/scripts").glob("*.py")}


def test_lint_is_clean():
    code, out = _snakemake("--lint")
    assert code == 0 and "Congratulations" in out, out[-2000:]


def test_config_typo_is_an_error_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/config.yaml").read_text() + "epochz: 3\n")
    code, out = _snakemake("-n", "all_metrics", "--configfile", str(bad), "--directory", str(tmp_path),
                           "--snakefile", str(ROOT / "Snakefile"))
    assert code != 0 and "'epochz' was unexpected" in out


def _readme_baseline() -> str:
    """The README's "Add a baseline" example file, so that the walkthrough stays true."""
    text = (ROOT / "README.md").read_text()
    block = text.split("# baselines/my_unet.py\n", 1)[1]
    return block.split("```", 1)[0]


def test_a_new_baseline_is_one_file_and_one_config_line(tmp_path):
    (tmp_path / "my_unet.py").write_text(_readme_baseline())
    config = tmp_path / "my_config.yaml"
    text = (ROOT / "config/config.yaml").read_text()
    assert "models: [logvmamba, nnunet]\n" in text
    config.write_text(text.replace("models: [logvmamba, nnunet]\n", "models: [logvmamba, nnunet, my_unet]\n"))
    args = ("-n", "all_tables", "--configfile", str(config), "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"))
    code, out = _snakemake(*args)
    assert code != 0 and "'my_unet' needs the architecture 'my_unet', which no module registers" in out
    env = dict(os.environ, PYTHONPATH=str(tmp_path), LOGVMAMBA_MODEL_MODULES="my_unet")
    # Without its tiny variant the default config (model_variant: test) stops and says how to fix it.
    (tmp_path / "my_unet.py").write_text(_readme_baseline().split("@register_model\ndef my_unet_test", 1)[0])
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "no 'my_unet_test' variant" in text and "model_variant: paper" in text, text[-3000:]
    (tmp_path / "my_unet.py").write_text(_readme_baseline())
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    text = out.stdout + out.stderr
    jobs = _jobs(text)
    assert jobs["train"] == 2 * 4 + 7 + 4 and jobs["profile"] == jobs["train"] and jobs["tables"] == 1
    assert "results/acdc/my_unet/fold0/seed0/summary.json" in text and "results/acdc/my_unet/profile_cpu.json" in text


@pytest.mark.parametrize("dataset", ["endoscopy", "acdc"])
def test_the_readme_baseline_trains_through_the_registry(dataset, tmp_path, monkeypatch, synth_root):
    (tmp_path / "my_unet.py").write_text(_readme_baseline())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LOGVMAMBA_MODEL_MODULES", "my_unet")
    from logvmamba.config import load_config, resolve_recipe
    from logvmamba.data import DATASETS, RawDataset
    from logvmamba.train import train

    ds = RawDataset(synth_root / DATASETS[dataset].synthetic_name)
    recipe = resolve_recipe(load_config(ROOT / "config/config.yaml"), "my_unet", ds)
    recipe.update(epochs=1, iterations=2, batch_size=1, val_cases=1, deep_supervision=False, model_kwargs={})
    assert train(recipe, ds.path, tmp_path / "run", progress=False)["epochs"] == 1


def test_jobs_start_data_first_long_trainings_next_profiles_last(tmp_path):
    code, out = _snakemake("-n", "all_tables", "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"))
    assert code == 0, out[-3000:]
    priority = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        wildcards = re.search(r"wildcards: (.*)", block)
        value = re.search(r"priority: ([\d.]+)", block)
        if rule and value:
            priority[(rule.group(1), wildcards.group(1) if wildcards else "")] = float(value.group(1))
    by_rule = {}
    for (rule, _), value in priority.items():
        by_rule.setdefault(rule, set()).add(value)
    assert by_rule["prepare_data"] == by_rule["split"] == {100.0}
    assert by_rule["predict"] == by_rule["evaluate"] == {45.0} and by_rule["profile"] == {10.0}

    # train: 50 + w / (w + 1e8), w = epochs x iterations x batch x patch voxels of the default config
    def expected(w):
        return 50 + w / (w + 1e8)

    train = {wc.split(",")[0].split("=")[1]: v for (rule, wc), v in priority.items() if rule == "train"}
    assert train["acdc"] == pytest.approx(expected(10 * 12 * 2 * 64 * 64 * 16))
    assert train["endoscopy"] == pytest.approx(expected(25 * 20 * 4 * 64 * 96))
    assert train["cell"] == pytest.approx(expected(25 * 20 * 2 * 64 * 64))
    assert train["brats"] == pytest.approx(expected(5 * 12 * 2 * 32 * 32 * 32))
    assert train["acdc"] > train["endoscopy"] > train["cell"] > train["brats"]
