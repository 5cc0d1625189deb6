"""Where and with what a result was made: git state, host, CPU, load, library versions.

One public module for every writer of provenance (training summaries, profiles,
benchmarks, tables), so that they all say the same thing the same way.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Optional

__all__ = ["git", "git_commit", "cpu_model", "load_average", "mem_available", "environment"]

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> Optional[str]:
    """Output of ``git ARGS`` in the checkout this package runs from (None outside one)."""
    try:
        res = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_commit(short: bool = False) -> tuple[Optional[str], Optional[bool]]:
    """(commit, dirty) of the checkout; (None, None) outside a git checkout."""
    commit = git("rev-parse", *(["--short"] if short else []), "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> Optional[str]:
    """The 1, 5 and 15 minute load averages as text (a timing is only as good as the load)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return None


def mem_available() -> Optional[int]:
    """Bytes of memory available to new processes (``/proc/meminfo``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def environment(device: str, threads: int) -> dict:
    """Date, host, CPU, load, Python / torch / CUDA and optional kernel packages."""
    import torch

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "threads": threads,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    for module in ("mamba_ssm", "triton", "mambapy"):
        try:
            mod = __import__(module)
            info[module] = getattr(mod, "__version__", "installed")
        except Exception:  # noqa: BLE001 - absent or broken: not installed as far as we care
            info[module] = None
    return info
