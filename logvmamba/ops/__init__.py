"""Operators: the selective scan (S6) and its FLOP accounting.

Nothing here imports mamba_ssm, causal_conv1d or triton; the "cuda" and
"triton" scan backends import them only when they are used, and the "fused"
CPU backend compiles its kernel on first use.
"""

from logvmamba.ops.flops import count_flops, flop_handles, selective_scan_flops
from logvmamba.ops.fused import FusedBackend  # registers "fused" (builds on first use)
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
from logvmamba.ops.triton_scan import TritonBackend  # registers "triton" (imports no triton)

__all__ = [
    "SCAN_ENV",
    "BackendUnavailableError",
    "FusedBackend",
    "ScanBackend",
    "SelectiveScanFn",
    "TritonBackend",
    "available_backends",
    "count_flops",
    "flop_handles",
    "get_backend",
    "register_backend",
    "resolve_backend",
    "selective_scan",
    "selective_scan_flops",
]
