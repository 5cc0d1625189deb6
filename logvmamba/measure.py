"""Measurement helpers shared by the benchmarks and the profiles: timing and peak memory.

Peak memory is the increase over one call: on CUDA ``max_memory_allocated``
minus what was allocated before; on CPU the kernel's resident high-water mark
(VmHWM, reset through ``/proc/self/clear_refs``; ``ru_maxrss`` where that is not
writable) minus the resident size before the call.
"""

from __future__ import annotations

import resource
import time
from typing import Callable, Optional

__all__ = ["rss_kib", "reset_peak_rss", "peak_during", "timed"]


def rss_kib(field: str) -> Optional[int]:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_during(fn: Callable[[], object], device: str) -> tuple[int, str]:
    """Run ``fn`` once; (bytes of memory increase at its peak, method used)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        return torch.cuda.max_memory_allocated() - before, "cuda.max_memory_allocated"
    before = rss_kib("VmRSS") or 0
    if reset_peak_rss() and rss_kib("VmHWM") is not None:
        fn()
        return max(0, rss_kib("VmHWM") - before) * 1024, "VmHWM-RSS"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, "ru_maxrss"


def timed(fn: Callable[[], object], repeat: int, budget: float = float("inf")) -> list[float]:
    """Seconds of up to ``repeat`` calls of ``fn``, stopping once ``budget`` seconds are spent."""
    times: list[float] = []
    while len(times) < max(1, repeat) and (not times or sum(times) < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
