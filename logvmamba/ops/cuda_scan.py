"""The "cuda" selective-scan backend: mamba-ssm's fused kernel.

mamba-ssm is imported when the backend is first asked whether it can run,
never at module import: it pulls in CUDA extensions and triton, which
CPU-only installs do not have.
"""

from __future__ import annotations

import torch

from logvmamba.ops.backend import ScanBackend, register_backend

__all__ = ["CudaBackend"]


def _import_mamba_scan():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn


class CudaBackend(ScanBackend):
    """mamba-ssm's fused CUDA kernel, with its own autograd Function."""

    name = "cuda"

    def unavailable_reason(self, u=None):
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if u is not None and not u.is_cuda:
            return f"the tensors are on {u.device}, the kernel needs CUDA tensors"
        if u is not None and u.dtype == torch.float64:
            return "the kernel has no float64 version"
        try:
            _import_mamba_scan()
        except Exception as e:  # noqa: BLE001 - broken builds raise more than ImportError
            return f"mamba_ssm cannot be imported ({type(e).__name__}: {e})"
        return None

    def apply(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        fn = _import_mamba_scan()
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


register_backend(CudaBackend())
