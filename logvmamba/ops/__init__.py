"""Operators: the selective scan (S6) and its FLOP accounting.

Nothing here imports mamba_ssm or causal_conv1d; the "cuda" scan backend
imports mamba_ssm only when it is used.
"""

from logvmamba.ops.flops import count_flops, flop_handles, selective_scan_flops
from logvmamba.ops.selective_scan import (
    SCAN_ENV,
    BackendUnavailableError,
    ScanBackend,
    SelectiveScanFn,
    available_backends,
    get_backend,
    register_backend,
    resolve_backend,
    selective_scan,
)

__all__ = [
    "SCAN_ENV",
    "BackendUnavailableError",
    "ScanBackend",
    "SelectiveScanFn",
    "available_backends",
    "count_flops",
    "flop_handles",
    "get_backend",
    "register_backend",
    "resolve_backend",
    "selective_scan",
    "selective_scan_flops",
]
