"""Operators: the selective scan (S6) and its FLOP accounting.

Nothing here imports mamba_ssm, causal_conv1d or triton; the "cuda" and
"triton" scan backends import them only when they are used, and the "fused"
CPU backend compiles its kernel on first use.
"""

from logvmamba.ops.backend import (
    AUTO_ORDER,
    BackendUnavailableError,
    ScanBackend,
    SelectiveScanFn,
    available_backends,
    get_backend,
    register_backend,
)
from logvmamba.ops.cuda_scan import CudaBackend
from logvmamba.ops.flops import count_flops, flop_handles, selective_scan_flops
from logvmamba.ops.fused import FusedBackend
from logvmamba.ops.ref_scan import RefBackend
from logvmamba.ops.selective_scan import (
    SCAN_ENV,
    get_default_backend,
    resolve_backend,
    scan_backend,
    selective_scan,
    validate_backend,
)
from logvmamba.ops.torch_scan import TorchBackend
from logvmamba.ops.triton_scan import TritonBackend

__all__ = [
    "AUTO_ORDER",
    "SCAN_ENV",
    "BackendUnavailableError",
    "CudaBackend",
    "FusedBackend",
    "RefBackend",
    "ScanBackend",
    "SelectiveScanFn",
    "TorchBackend",
    "TritonBackend",
    "available_backends",
    "count_flops",
    "flop_handles",
    "get_backend",
    "get_default_backend",
    "register_backend",
    "resolve_backend",
    "scan_backend",
    "selective_scan",
    "selective_scan_flops",
    "validate_backend",
]
