"""The SLURM profile on a real one-node cluster that the tests start (``pytest -m slurm``).

One run of Endoscopy (synthetic) x nnunet (test variant) under ``--profile
workflow/profiles/slurm``: every job goes through sbatch, one training job is
scancel'ed half-way and its retry resumes from checkpoint_last.pt, and the scores
equal those of a plain local run of the same config.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import PARTITION, ClusterUnavailable, install, start

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
RUN = Path("results/endoscopy/nnunet/fold0/seed0")
TARGET = str(RUN / "summary.json")
EPOCHS = 10  # a fraction of a second each: the training job lasts long enough to be cancelled half-way
# The test node has this machine's CPUs and memory and no GPU. --set-resources on the command
# line replaces the profile's whole set-resources mapping, so every rule it sizes is restated.
NODE_RESOURCES = ["train:gpu=0", "train:cpus_per_task=1", "train:mem_mb=2000",
                  "predict:gpu=0", "predict:cpus_per_task=1", "predict:mem_mb=2000",
                  "evaluate:mem_mb=2000", "profile:mem_mb=2000"]
# An account-less cluster: an empty account leaves sbatch without -A. The status checks use
# squeue (no accounting database here): the cluster keeps finished jobs for MinJobAge = 300 s,
# more than 3x the first wait, which the plugin needs to trust squeue.
SLURM_FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
               "--slurm-keep-successful-logs", "--latency-wait", "10", "--set-threads", "train=1",
               "--set-resources", *NODE_RESOURCES]
SQUEUE = ["squeue", "--states=all", "--noheader", "--format=%i|%j|%k|%T"]


def _apt_works() -> bool:
    return shutil.which("apt-get") is not None and os.geteuid() == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """munged, slurmctld and slurmd in a temp folder; stopped by their pid files afterwards."""
    try:
        install()
    except ClusterUnavailable as err:
        pytest.skip(str(err))
    try:
        running = start(tmp_path_factory.mktemp("slurm_state"))
    except ClusterUnavailable as err:
        if os.environ.get("CI") == "true" and _apt_works():
            pytest.fail(f"SLURM is installed but its daemons did not start: {err}")
        pytest.skip(str(err))
    yield running
    running.stop()


def _write_config(workdir: Path) -> None:
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config.update(datasets=["endoscopy"], models=["nnunet"], synthetic_cases=8, data_root=str(workdir / "data"),
                  ablations={"datasets": ["endoscopy"], "mixers": [], "placements": []}, overrides={},
                  dataset_training={})
    config["training"].update(epochs=EPOCHS, iterations=4, val_every=3, val_cases=1)
    config["report"].update(reference="nnunet", annotate=[])
    config["profile"]["runtime_models"] = ["nnunet"]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def _command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", TARGET, "--snakefile", str(ROOT / "Snakefile"),
            "--directory", str(workdir), f"--configfile={workdir / 'config.yaml'}", *args]


def _wait_for(path: Path, proc: subprocess.Popen, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)


def _jobs(cluster) -> list[dict]:
    """Every job squeue still knows: id, name (the run's uuid), comment (rule and wildcards), state."""
    rows = [line.split("|") for line in cluster.run(*SQUEUE).splitlines() if line.strip()]
    return [dict(id=int(i), name=n, comment=c, state=s) for i, n, c, s in rows]


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The profile run on the cluster, with one training job cancelled, and a local run beside it."""
    slurm_dir, local_dir = tmp_path_factory.mktemp("on_slurm"), tmp_path_factory.mktemp("local")
    _write_config(slurm_dir)
    _write_config(local_dir)
    env = dict(os.environ, **cluster.env, LOGVMAMBA_SLURM_ACCOUNT="", LOGVMAMBA_SLURM_PARTITION=PARTITION,
               LOGVMAMBA_SLURM_GPU_PARTITION=PARTITION)
    slurm_log, local_log = slurm_dir / "snakemake.out", local_dir / "snakemake.out"
    with open(slurm_log, "w") as s_out, open(local_log, "w") as l_out:
        on_slurm = subprocess.Popen(_command(slurm_dir, "--profile", str(ROOT / "workflow/profiles/slurm"), *SLURM_FLAGS),
                                    env=env, stdout=s_out, stderr=subprocess.STDOUT)
        local = subprocess.Popen(_command(local_dir, "--cores", "2"), stdout=l_out, stderr=subprocess.STDOUT)
        try:
            _wait_for(slurm_dir / RUN / "checkpoint_last.pt", on_slurm, limit=400)
            train = [j for j in _jobs(cluster) if j["comment"].startswith("rule_train") and j["state"] == "RUNNING"]
            epochs_before = len((slurm_dir / RUN / "log.csv").read_text().splitlines()) - 1 if train else None
            for job in train:
                cluster.run("scancel", str(job["id"]))
            slurm_code, local_code = on_slurm.wait(timeout=480), local.wait(timeout=480)
        finally:
            for proc in (on_slurm, local):
                if proc.poll() is None:
                    proc.kill()
    return dict(slurm_dir=slurm_dir, local_dir=local_dir, slurm_code=slurm_code, local_code=local_code,
                slurm_out=slurm_log.read_text(), local_out=local_log.read_text(), cancelled=[j["id"] for j in train],
                epochs_before=epochs_before, jobs=_jobs(cluster), jobcomp=cluster.jobcomp.read_text())


def test_every_job_went_through_sbatch(runs):
    assert runs["slurm_code"] == 0, runs["slurm_out"][-4000:]
    jobs = runs["jobs"]
    rules = sorted(j["comment"].split("_wildcards")[0].removeprefix("rule_") for j in jobs)
    # one job per rule, two of train: the cancelled one and its retry
    assert rules == ["evaluate", "predict", "prepare_data", "split", "train", "train"], jobs
    assert len({j["name"] for j in jobs}) == 1  # the plugin names each job after the run
    for job in jobs:
        assert f"JobId={job['id']} " in runs["jobcomp"]
        if job["id"] not in runs["cancelled"]:
            assert job["state"] == "COMPLETED", job
            rule = job["comment"].split("_wildcards")[0]
            assert list((runs["slurm_dir"] / "logs/slurm" / rule).rglob(f"{job['id']}.log")), job
    assert "has been submitted with SLURM jobid" in runs["slurm_out"]


def test_the_cancelled_training_job_resumes(runs):
    assert runs["slurm_code"] == 0, runs["slurm_out"][-4000:]
    assert len(runs["cancelled"]) == 1 and 1 <= runs["epochs_before"] < EPOCHS, runs
    cancelled = next(j for j in runs["jobs"] if j["id"] == runs["cancelled"][0])
    assert cancelled["state"] == "CANCELLED"
    log = (runs["slurm_dir"] / "logs/train/endoscopy/nnunet/fold0/seed0.log").read_text()
    assert "resuming after epoch" in log, log[-2000:]
    with open(runs["slurm_dir"] / RUN / "log.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(EPOCHS))  # the retry went on where the cancelled job stopped


def test_scores_equal_a_local_run(runs):
    assert runs["slurm_code"] == 0, runs["slurm_out"][-4000:]
    assert runs["local_code"] == 0, runs["local_out"][-4000:]
    on_slurm = json.loads((runs["slurm_dir"] / TARGET).read_text())
    local = json.loads((runs["local_dir"] / TARGET).read_text())
    for key in ("DSC", "NSD", "main", "n_cases", "missing"):
        assert on_slurm[key] == local[key], key
    per_case = RUN / "per_case.csv"
    assert (runs["slurm_dir"] / per_case).read_text() == (runs["local_dir"] / per_case).read_text()
