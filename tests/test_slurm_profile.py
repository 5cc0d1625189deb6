"""The SLURM profile and the GPU conda environment: they parse, name what exists, and dry-run."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow/profiles/slurm"
TARGET = "all_tables"
PARTITIONS = {  # what the tests put in the profile's placeholders
    "LOGVMAMBA_SLURM_ACCOUNT": "test_account",
    "LOGVMAMBA_SLURM_PARTITION": "test_cpu",
    "LOGVMAMBA_SLURM_GPU_PARTITION": "test_gpu",
}
# Explicit profile targets, so that the dry run shows both devices of the profile rule.
PROFILE_TARGETS = ["results/brats/logvmamba/profile_cpu.json", "results/brats/logvmamba/profile_cuda.json"]


def _dry_run(*args, cwd, placeholders=True):
    """A dry run under the SLURM profile; --cores 8 lifts the dry run's one-core cap on threads."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    env = {k: v for k, v in os.environ.items() if k not in PARTITIONS}
    env.update(PARTITIONS if placeholders else {})
    if (ROOT / "results/reference").is_dir():  # checked-in inputs of the table rules
        shutil.copytree(ROOT / "results/reference", Path(cwd) / "results/reference", dirs_exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "8", "--profile", str(PROFILE),
           "--directory", str(cwd), "--snakefile", str(ROOT / "Snakefile"), *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    return out.returncode, out.stdout + out.stderr


def _jobs(text: str) -> list[dict]:
    """Rule, wildcards, threads and resources of every job a dry run lists."""
    jobs = []
    for block in re.split(r"^\s*\n(?=\[)", text, flags=re.MULTILINE):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        if not rule:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.MULTILINE))
        resources = dict(item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item)
        jobs.append({"rule": rule.group(1), "wildcards": fields.get("wildcards", ""),
                     "threads": int(fields.get("threads", 1)),
                     "resources": {k: int(v) if v.isdigit() else v for k, v in resources.items()}})
    return jobs


@pytest.fixture(scope="module")
def default_jobs(tmp_path_factory):
    code, out = _dry_run(TARGET, *PROFILE_TARGETS, cwd=tmp_path_factory.mktemp("slurm"))
    assert code == 0, out[-3000:]
    return _jobs(out)


def _one(jobs, rule, wildcards=""):
    return next(j for j in jobs if j["rule"] == rule and wildcards in j["wildcards"])


def test_train_jobs_get_a_gpu_node(default_jobs):
    train = [j for j in default_jobs if j["rule"] == "train"]
    assert train
    for job in train:
        assert job["threads"] == 8
        assert job["resources"]["gpu"] == 1 and job["resources"]["cpus_per_task"] == 8
        assert job["resources"]["slurm_partition"] == "test_gpu"
        assert job["resources"]["slurm_account"] == "test_account"
        assert job["resources"]["runtime"] == 48 * 60 and job["resources"]["mem_mb"] == 64000
    assert _one(default_jobs, "predict")["resources"]["gpu"] == 1


def test_cpu_rules_and_cpu_profiles_stay_off_the_gpu_partition(default_jobs):
    for rule in ("prepare_data", "split", "evaluate"):
        res = _one(default_jobs, rule)["resources"]
        assert res["slurm_partition"] == "test_cpu" and not res.get("gpu"), (rule, res)
    cpu, cuda = _one(default_jobs, "profile", "device=cpu"), _one(default_jobs, "profile", "device=cuda")
    assert (cpu["resources"]["slurm_partition"], cpu["resources"]["gpu"]) == ("test_cpu", 0)
    assert (cuda["resources"]["slurm_partition"], cuda["resources"]["gpu"]) == ("test_gpu", 1)


def test_the_train_job_becomes_a_one_gpu_sbatch_call(default_jobs):
    """What the plugin would submit for a train job, built by its own submit-string code."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class _Resources(dict):
        __getattr__ = dict.__getitem__

    train = _one(default_jobs, "train")
    res = _Resources(train["resources"])
    job = SimpleNamespace(resources=res, threads=train["threads"])
    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "train", "workdir": None,
              "account": f" -A {res.slurm_account}", "partition": f" -p {res.slurm_partition}"}
    call = get_submit_command(job, params) + set_gres_string(job)
    for flag in ("-A test_account", "-p test_gpu", "-t 2880", "--mem 64000", "--cpus-per-task=8", "--gpus=1"):
        assert flag in call, (flag, call)


def test_unset_placeholders_stay_visible(tmp_path):
    code, out = _dry_run(TARGET, cwd=tmp_path, placeholders=False)
    assert code == 0, out[-3000:]
    res = _one(_jobs(out), "train")["resources"]
    assert res["slurm_account"] == "$LOGVMAMBA_SLURM_ACCOUNT"
    assert res["slurm_partition"] == "$LOGVMAMBA_SLURM_GPU_PARTITION"


def test_paper_dry_run_under_the_profile(tmp_path):
    code, out = _dry_run(TARGET, "--configfile", str(ROOT / "config/paper.yaml"), cwd=tmp_path)
    assert code == 0, out[-3000:]
    train = [j for j in _jobs(out) if j["rule"] == "train"]
    assert len(train) > 100 and all(j["resources"]["slurm_partition"] == "test_gpu" for j in train)


def _workflow_rules() -> set[str]:
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    return {name for f in files for name in re.findall(r"^\s*rule\s+(\w+)\s*:", f.read_text(), re.MULTILINE)}


def test_profile_names_only_existing_rules():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    named = set(profile["set-resources"]) | set(profile["set-threads"])
    assert {"train", "predict", "profile"} <= named
    assert named <= _workflow_rules(), named - _workflow_rules()
    for key in ("slurm_account", "slurm_partition", "runtime", "mem_mb"):
        assert key in profile["default-resources"]


# The GPU conda environment


def _environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return conda, pip


def _pip_requirements() -> dict[str, Requirement]:
    _, pip = _environment()
    reqs = [Requirement(line) for line in pip if not line.startswith("-")]
    return {canonicalize_name(r.name): r for r in reqs}


def _string_arrays(text: str) -> dict:
    """The ``key = [strings]`` entries of each table of a TOML file: what the tests read when
    neither tomllib (Python >= 3.11) nor tomli is importable."""
    tables: dict = {}
    table, key, value = None, None, ""
    for line in text.splitlines():
        line = re.sub(r'("(?:[^"\\]|\\.)*")|#.*', lambda m: m.group(1) or "", line).strip()
        if key is not None:
            value += " " + line
        elif re.fullmatch(r"\[([\w.-]+)\]", line):
            table = tables.setdefault(line[1:-1], {})
        elif table is not None and re.match(r"[\w.-]+\s*=\s*\[", line):
            key, value = (part.strip() for part in line.split("=", 1))
        if key is not None and value.count("[") == value.count("]"):
            table[key] = ast.literal_eval(value)
            key = None
    project = tables.get("project", {})
    project["optional-dependencies"] = tables.get("project.optional-dependencies", {})
    return {"project": project}


def _load_toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            return _string_arrays(text)
    return tomllib.loads(text)


def _pyproject():
    return _load_toml((ROOT / "pyproject.toml").read_text())["project"]


def test_fallback_toml_reader_agrees_with_tomllib():
    tomllib = pytest.importorskip("tomllib")
    text = (ROOT / "pyproject.toml").read_text()
    parsed, fallback = tomllib.loads(text)["project"], _string_arrays(text)["project"]
    assert fallback["dependencies"] == parsed["dependencies"]
    assert fallback["optional-dependencies"] == parsed["optional-dependencies"]


def test_environment_names_the_gpu_stack_and_the_workflow():
    conda, pip = _environment()
    assert "python=3.11" in conda and "pip" in conda
    assert {"torch", "torchvision", "triton", "mamba-ssm", "causal-conv1d",
            "snakemake", "snakemake-executor-plugin-slurm"} <= set(_pip_requirements())
    editable = [line for line in pip if line.startswith("-e")]
    assert len(editable) == 1, editable
    extras = re.search(r"\[(.*)\]", editable[0]).group(1).split(",")
    assert set(extras) <= set(_pyproject()["optional-dependencies"])


def test_environment_has_every_runtime_dependency_of_the_package():
    wanted = {canonicalize_name(Requirement(d).name) for d in _pyproject()["dependencies"]}
    assert wanted - set(_pip_requirements()) == set()


def test_kernel_wheels_match_the_torch_and_python_pins():
    conda, _ = _environment()
    reqs = _pip_requirements()
    torch = Version(next(iter(reqs["torch"].specifier)).version)
    python = next(d for d in conda if d.startswith("python=")).split("=")[1].replace(".", "")
    gpu_extra = {canonicalize_name(Requirement(r).name): Requirement(r)
                 for r in _pyproject()["optional-dependencies"]["gpu"]}
    for name in ("mamba-ssm", "causal-conv1d"):
        wheel = unquote(reqs[name].url.rsplit("/", 1)[1])
        version = Version(wheel.split("-")[1])
        assert f"torch{torch.major}.{torch.minor}" in wheel and f"-cp{python}-cp{python}-" in wheel, wheel
        assert version in gpu_extra[name].specifier, (wheel, gpu_extra[name])
