"""A one-node SLURM cluster on this machine, for tests: munged, slurmctld and slurmd as root.

Debian's slurm-wlm (22.05) and munge, installed with apt-get where they are missing. Every
file of the cluster lives in one state folder: slurm.conf, the munge key and socket, the
daemons' spool, logs and pid files. Clients find it through SLURM_CONF (``Cluster.env``).

No accounting database: the Snakemake plugin queries job states with squeue, which keeps a
finished job for MinJobAge seconds, and jobcomp/filetxt writes one line per finished job.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ["slurmd", "slurmctld", "munged"]  # stop order: the reverse of the start order
PARTITION = "debug"
MIN_JOB_AGE = 300  # seconds a finished job stays in squeue; the plugin needs >= 3x its first wait


class ClusterUnavailable(RuntimeError):
    """apt-get, or the daemons, cannot be had here; the message says which."""


def install() -> None:
    """Install slurm-wlm and munge with apt-get unless they are there.

    Raises:
        ClusterUnavailable: no apt-get, or it cannot update its index (no root, no network).
        subprocess.CalledProcessError: apt-get works but the install failed.
    """
    if all(shutil.which(cmd) for cmd in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise ClusterUnavailable("slurm-wlm is not installed and apt-get cannot install it (no apt-get or not root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    update = subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=300)
    if update.returncode != 0:
        raise ClusterUnavailable(f"apt-get update failed: {update.stderr.strip()[-300:]}")
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                   env=env, check=True, capture_output=True, timeout=600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_line() -> str:
    """This machine as slurmd sees it (``slurmd -C``): NodeName, CPUs, sockets, cores, RealMemory."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=60).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


@dataclass
class Cluster:
    state: Path
    node: str
    cpus: int
    memory_mb: int

    @property
    def conf(self) -> Path:
        return self.state / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The variables that point sbatch, squeue, scancel and srun at this cluster.

        PATH starts with an ``srun`` that sets SLURM_CONF: the plugin's job step
        (snakemake-executor-plugin-slurm-jobstep 0.6) removes every SLURM_* variable
        before it calls srun, which then looks for /etc/slurm/slurm.conf only.
        """
        return {"SLURM_CONF": str(self.conf), "PATH": f"{self.state / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    @property
    def jobcomp(self) -> Path:
        """One line per finished job (jobcomp/filetxt): JobId, JobName, JobState, times."""
        return self.state / "jobcomp.txt"

    def run(self, *cmd: str, check: bool = True) -> str:
        """A SLURM client command against this cluster; its stdout."""
        out = subprocess.run(cmd, env=dict(os.environ, **self.env), capture_output=True, text=True,
                             timeout=60, check=False)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def stop(self) -> None:
        """SIGTERM each daemon by its pid file, then SIGKILL what is left after 10 s."""
        pids = []
        for name in DAEMONS:
            pid_file = self.state / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (OSError, ValueError, IndexError):
                continue
        deadline = time.monotonic() + 10
        for pid in pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # a zombie child of this process counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def write_config(state: Path) -> Cluster:
    """slurm.conf and the munge key for a one-node cluster of this machine in ``state``."""
    line = node_line()
    fields = dict(item.split("=", 1) for item in line.split())
    node, cpus, memory = fields["NodeName"], int(fields["CPUs"]), int(fields["RealMemory"])
    for sub in ("ctld", "spool", "munge"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "munge").chmod(0o700)
    key = state / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = f"""\
ClusterName=logvmamba
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={state}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
# no cgroup plugins: they need a cgroup.conf and a cgroup tree slurmd may write to
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={state}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MinJobAge={MIN_JOB_AGE}
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
PlugStackConfig={state}/plugstack.conf
{line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    (state / "plugstack.conf").write_text("")
    (state / "bin").mkdir(exist_ok=True)
    srun = state / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF="{state}/slurm.conf" exec {shutil.which("srun") or "/usr/bin/srun"} "$@"\n')
    srun.chmod(0o755)
    (state / "slurm.conf").write_text(conf)
    return Cluster(state=state, node=node, cpus=cpus, memory_mb=memory)


def _start(cmd: list[str], cluster: Cluster, name: str) -> None:
    out = subprocess.run(cmd, env=dict(os.environ, **cluster.env), capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        log = cluster.state / f"{name}.log"
        tail = log.read_text()[-1500:] if log.exists() else ""
        raise ClusterUnavailable(f"{name} did not start ({out.returncode}): {out.stderr.strip()[-500:]} {tail}")


def start(state: Path, timeout: float = 60) -> Cluster:
    """Write the config, start munged, slurmctld and slurmd, and wait for the node to be idle.

    Raises:
        ClusterUnavailable: a daemon did not start, or the node did not come up within ``timeout``.
    """
    cluster = write_config(state)
    munge = state / "munge"
    try:
        _start(["munged", "--force", f"--key-file={munge}/munge.key", f"--socket={munge}/munge.socket",
                f"--pid-file={state}/munged.pid", f"--log-file={state}/munged.log",
                f"--seed-file={munge}/munged.seed"], cluster, "munged")
        _start(["slurmctld", "-f", str(cluster.conf)], cluster, "slurmctld")
        _start(["slurmd", "-f", str(cluster.conf)], cluster, "slurmd")
        deadline = time.monotonic() + timeout
        state_now = ""
        while time.monotonic() < deadline:
            state_now = cluster.run("sinfo", "-h", "-n", cluster.node, "-o", "%T", check=False).strip()
            if state_now in ("idle", "mixed", "allocated"):
                return cluster
            time.sleep(0.5)
        logs = "".join((state / f"{n}.log").read_text()[-800:] for n in ("slurmctld", "slurmd")
                       if (state / f"{n}.log").exists())
        raise ClusterUnavailable(f"node {cluster.node} is {state_now or 'unknown'} after {timeout:.0f} s: {logs}")
    except BaseException:
        cluster.stop()
        raise
