"""One run per output folder: the training lock, and the run identity in train_done.json.

The lock is a JSON file ``.train.lock`` in the run folder naming its owner (pid, host,
start time) and the run (model, dataset, seed, fold, recipe hash); the tests write
such files by hand, as a run of another process would have left them.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from logvmamba.checkpoint import load_checkpoint
from logvmamba.config import load_config, resolve_recipe
from logvmamba.data import DATASETS, RawDataset
from logvmamba.train import RunFolderBusy, recipe_hash, train

ROOT = Path(__file__).resolve().parents[1]
LOCK = ".train.lock"
DATASET = DATASETS["endoscopy"].synthetic_name  # the folder name a run records
TORCHRUN = shutil.which("torchrun")


def _recipe(ds, **changes):
    recipe = resolve_recipe(load_config(ROOT / "config/config.yaml"), "logvmamba", ds)
    recipe.update(epochs=1, iterations=1, batch_size=1, val_every=1, val_cases=1)
    recipe.update(changes)
    return recipe


@pytest.fixture(scope="module")
def endoscopy(synth_root):
    return RawDataset(synth_root / DATASET)


@pytest.fixture
def sleeper():
    """A live process of this host (the owner of a lock)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _write_lock(folder: Path, pid: int, host: str, seed: int) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    owner = dict(pid=pid, host=host, started="2025-03-01T09:00:00+0000", model="logvmamba_test", dataset=DATASET,
                 seed=seed, fold=0, recipe_hash="0123456789abcdef")
    (folder / LOCK).write_text(json.dumps(owner))
    return (folder / LOCK).read_bytes()


@pytest.mark.parametrize("other_host, owner_seed", [(False, 1), (True, 0)])  # another seed; the same run on another host
def test_a_folder_locked_by_a_live_run_is_refused(endoscopy, tmp_path, sleeper, data_helpers, other_host, owner_seed):
    host, pid = ("gpu-node-17", 4242) if other_host else (socket.gethostname(), sleeper)
    lock = _write_lock(tmp_path, pid, host, owner_seed)
    with pytest.raises(RunFolderBusy) as err:
        train(_recipe(endoscopy), endoscopy.path, tmp_path, seed=0, progress=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}: another training runs in this folder")
    assert f"pid {pid} on {host}" in message
    assert f"seed {owner_seed}, fold 0, recipe_hash 0123456789abcdef" in message  # the owner's run ...
    assert f"this run is model logvmamba_test, dataset {DATASET}, seed 0, fold 0" in message  # ... and this one
    assert data_helpers.tree_files(tmp_path) == {LOCK: lock}  # nothing written, the lock kept


def test_a_lock_of_a_dead_process_is_taken_over_with_a_warning(endoscopy, tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    _write_lock(tmp_path, pid, socket.gethostname(), seed=0)
    with caplog.at_level(logging.WARNING, logger="logvmamba.train"):
        summary = train(_recipe(endoscopy), endoscopy.path, tmp_path, seed=0, progress=False)
    assert summary["epochs"] == 1 and (tmp_path / "train_done.json").is_file()
    assert any(f"taking over the lock of pid {pid} on {socket.gethostname()}" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / LOCK).exists()  # released at the end


def test_the_lock_names_the_run_while_it_trains_and_goes_on_interrupt(endoscopy, tmp_path, monkeypatch):
    import logvmamba.train as module

    seen = []

    def interrupted(*args, **kwargs):  # the first thing after the folder is claimed that can take long
        seen.append(json.loads((tmp_path / LOCK).read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "TrainLoader", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_recipe(endoscopy), endoscopy.path, tmp_path, seed=2, fold=1, progress=False)
    [owner] = seen
    assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname()) and owner["started"]
    assert (owner["model"], owner["dataset"], owner["seed"], owner["fold"]) == ("logvmamba_test", DATASET, 2, 1)
    assert not (tmp_path / LOCK).exists()


# With its resume checkpoint the checkpoint is refused (it names the run less the dataset folder);
# without it (cleaned up), its train_done.json.
@pytest.mark.parametrize("keep_last, refusal", [(True, "/checkpoint_last.pt: checkpoint of another recipe, seed or fold ("),
                                                (False, ": finished by another run (")], ids=["with_last", "without_last"])
def test_a_folder_finished_by_another_seed_is_refused_untouched(endoscopy, tmp_path, data_helpers, keep_last, refusal):
    recipe = _recipe(endoscopy)
    train(recipe, endoscopy.path, tmp_path, seed=0, progress=False)
    if not keep_last:
        (tmp_path / "checkpoint_last.pt").unlink()
    before = data_helpers.tree_files(tmp_path)
    with pytest.raises(ValueError) as err:
        train(recipe, endoscopy.path, tmp_path, seed=1, progress=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}{refusal}model logvmamba_test, ")
    assert "seed 0, fold 0, recipe_hash" in message  # the finished run ...
    assert f"this run{' is' if not keep_last else ':'} model logvmamba_test, dataset {DATASET}, seed 1, fold 0" in message
    assert data_helpers.tree_files(tmp_path) == before


def test_the_workflow_trains_over_a_folder_of_another_seed_and_drops_its_summary(endoscopy, tmp_path, monkeypatch):
    import logvmamba.train as module

    train(_recipe(endoscopy), endoscopy.path, tmp_path, seed=0, progress=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "TrainLoader", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_recipe(endoscopy), endoscopy.path, tmp_path, seed=1, progress=False, restart_stale=True)
    # the stale run is gone, not left to pass for this one
    assert not (tmp_path / "train_done.json").exists() and not (tmp_path / "checkpoint_last.pt").exists()


def test_train_done_records_the_run(endoscopy, tmp_path):
    recipe = _recipe(endoscopy)
    train(recipe, endoscopy.path, tmp_path, seed=3, fold=1, progress=False)
    done = json.loads((tmp_path / "train_done.json").read_text())
    assert (done["model"], done["dataset"], done["seed"], done["fold"]) == ("logvmamba_test", DATASET, 3, 1)
    assert done["recipe_hash"] == recipe_hash(recipe)
    # the hash follows the weight-deciding keys only
    assert recipe_hash(dict(recipe, tta=not recipe["tta"], overlap=0.125, val_cases=4)) == done["recipe_hash"]
    assert recipe_hash(dict(recipe, lr=recipe["lr"] / 2)) != done["recipe_hash"]


@pytest.mark.parametrize("restart_stale", [False, True])
def test_a_checkpoint_of_another_fold_is_not_resumed(endoscopy, tmp_path, data_helpers, restart_stale):
    recipe = _recipe(endoscopy)
    train(recipe, endoscopy.path, tmp_path, seed=0, fold=0, progress=False)
    (tmp_path / "train_done.json").unlink()  # as a killed run leaves it (and Snakemake before a rerun)
    before = data_helpers.tree_files(tmp_path)
    if not restart_stale:
        with pytest.raises(ValueError, match=r"checkpoint_last.pt: checkpoint of another recipe, seed or fold "
                                             r"\(model logvmamba_test, seed 0, fold 0, .*; this run: .*seed 0, fold 1, "):
            train(recipe, endoscopy.path, tmp_path, seed=0, fold=1, progress=False)
        assert data_helpers.tree_files(tmp_path) == before
    else:
        train(recipe, endoscopy.path, tmp_path, seed=0, fold=1, progress=False, restart_stale=True)
        assert load_checkpoint(tmp_path / "checkpoint_last.pt")["fold"] == 1
        assert json.loads((tmp_path / "train_done.json").read_text())["fold"] == 1


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None or not sys.platform.startswith("linux"), reason="needs torchrun on Linux (gloo)")
def test_every_process_of_a_torchrun_job_stops_at_a_locked_folder(endoscopy, tmp_path, sleeper):
    config = tmp_path / "run.yaml"
    short = {"epochs": 1, "iterations": 1, "val_every": 1}
    config.write_text(yaml.safe_dump({"training": dict(short, batch_size=2, val_cases=1),
                                      "dataset_training": {"endoscopy": short}}))
    run = tmp_path / "run"
    lock = _write_lock(run, sleeper, socket.gethostname(), seed=1)
    command = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "logvmamba.train", "--model", "logvmamba",
               "--dataset", str(endoscopy.path), "--out", str(run), "--config", str(ROOT / "config/config.yaml"),
               str(config)]
    # a rank that missed rank 0's refusal would wait in a collective until the timeout
    done = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0 and f"pid {sleeper} on {socket.gethostname()}" in done.stderr, done.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [LOCK] and (run / LOCK).read_bytes() == lock


def test_a_lock_left_on_another_host_expires_when_no_longer_touched(endoscopy, tmp_path, caplog):
    import logvmamba.train as module

    _write_lock(tmp_path, 4242, "gpu-node-17", seed=0)
    old = os.stat(tmp_path / LOCK).st_mtime - module.LOCK_STALE_S - 5  # the node died that long ago
    os.utime(tmp_path / LOCK, (old, old))
    with caplog.at_level(logging.WARNING, logger="logvmamba.train"):
        assert train(_recipe(endoscopy), endoscopy.path, tmp_path, seed=0, progress=False)["epochs"] == 1
    assert any("taking over the lock of pid 4242 on gpu-node-17" in r.getMessage() for r in caplog.records)


def test_a_held_lock_is_touched_while_the_run_lives(tmp_path, monkeypatch):
    import logvmamba.train as module

    monkeypatch.setattr(module, "LOCK_HEARTBEAT_S", 0.05)
    lock = tmp_path / LOCK
    lock.write_text("{}")
    os.utime(lock, (1_000_000, 1_000_000))
    beat = module._Heartbeat(lock)
    try:
        for _ in range(200):
            if os.stat(lock).st_mtime > 1_000_000:
                break
            threading.Event().wait(0.05)
    finally:
        beat.close()
    assert os.stat(lock).st_mtime > 1_000_000


def test_sigterm_releases_the_lock(endoscopy, tmp_path):
    """scancel and a job's time limit send SIGTERM: the lock must not outlive the run."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["training"].update(epochs=200, iterations=2, val_every=200, val_cases=1)
    config["dataset_training"] = {}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "logvmamba.train", "--model", "nnunet", "--dataset", str(endoscopy.path),
                             "--out", str(run), "--config", str(tmp_path / "c.yaml")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if (run / "log.csv").is_file():
                break
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            threading.Event().wait(0.1)
        assert (run / LOCK).is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert not (run / LOCK).exists() and (run / "checkpoint_last.pt").is_file()


def test_a_full_disk_stops_the_run_before_the_first_epoch(endoscopy, tmp_path, monkeypatch):
    import logvmamba.io as io_module

    monkeypatch.setattr(io_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(OSError, match=r"No space|MiB free, the run needs about") as err:
        train(_recipe(endoscopy), endoscopy.path, tmp_path / "run", seed=0, progress=False)
    assert str(tmp_path / "run") in str(err.value)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # no epoch, no log, lock released


def test_a_write_that_fails_names_the_file(tmp_path):
    from logvmamba.io import atomic_write

    target = tmp_path / "checkpoint_last.pt"
    with pytest.raises(OSError) as err:
        with atomic_write(target):
            raise OSError(28, "No space left on device")  # what write() raises: no file name
    assert err.value.filename == str(target) and str(target) in str(err.value)
    assert list(tmp_path.iterdir()) == []
