"""The "triton" selective-scan backend: a Triton forward kernel for CUDA GPUs.

For inference on GPUs where mamba-ssm is not installed: no CUDA toolkit and
no compiled extension, only the ``triton`` package that comes with PyTorch's
CUDA wheels. There is no backward; "auto" picks this backend only when no
gradient is needed, and asking for it by name with gradients raises
:class:`~logvmamba.ops.BackendUnavailableError`.

One program scans one channel of one batch element. The sequence is read in
tiles of ``BLOCK_L`` steps; inside a tile the recurrence
``h_t = a_t h_{t-1} + x_t`` (``a_t = exp(dt_t A)``, ``x_t = dt_t u_t B_t``)
is one ``tl.associative_scan`` over (n, BLOCK_L) registers, composing the
affine maps ``h -> a h + x``; the state entering the tile is folded in
afterwards and the tile's last state is carried to the next. Nothing of size
(batch, d, L, n) is ever written to memory.

Triton is imported when the kernel is first needed, never at module import.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from logvmamba.ops.backend import ScanBackend, as_groups, cast, compute_dtype, register_backend

__all__ = ["TritonBackend", "triton_selective_scan_forward"]


@functools.lru_cache(maxsize=None)
def _kernel():
    """(triton, the forward kernel); imports triton on first call."""
    import triton

    from logvmamba.ops._triton_kernels import scan_fwd

    return triton, scan_fwd


def triton_selective_scan_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                  delta_softplus=False, block_l: int = 128):
    """Runs the Triton kernel; returns (y, last_state) in the compute dtype.

    Arguments as :func:`logvmamba.ops.selective_scan`; no autograd. Works on
    any tensors Triton can address (CUDA, or CPU under ``TRITON_INTERPRET=1``).
    """
    triton, kernel = _kernel()
    cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    B4, C4 = as_groups(B), as_groups(C)
    b, d, L = u.shape
    n = A.shape[1]
    groups = B4.shape[1]
    y = torch.empty(b, d, L, device=u.device, dtype=cdt)
    last = torch.empty(b, d, n, device=u.device, dtype=cdt)
    # Unused pointers still need a valid tensor; u is never read through them.
    D_, z_, bias_ = (u if t is None else t for t in (D, z, delta_bias))
    zs = (0, 0, 0) if z is None else z.stride()
    kernel[(d, b)](
        u, delta, A, B4, C4, D_, z_, bias_, y, last,
        d, L, n, d // groups,
        *u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *zs,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), FP64=cdt == torch.float64,
        BLOCK_N=max(16, triton.next_power_of_2(n)), BLOCK_L=block_l,
    )
    return y, last


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    try:
        _kernel()
    except Exception as e:  # noqa: BLE001 - a broken install raises more than ImportError
        return f"triton cannot be imported ({type(e).__name__}: {e})"
    return None


class TritonBackend(ScanBackend):
    """Triton forward kernel for CUDA tensors; inference only (see module docstring)."""

    name = "triton"
    supports_grad = False

    def __init__(self, block_l: int = 128):
        self.block_l = block_l

    def unavailable_reason(self, u=None):
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if u is not None and not u.is_cuda:
            return f"the tensors are on {u.device}, the kernel needs CUDA tensors"
        return _triton_import_error()

    def forward(self, inputs, delta_softplus):
        cdt = compute_dtype(*inputs)
        u, delta, A, B, C, D, z, bias = (cast(t, cdt) for t in inputs)
        y, last = triton_selective_scan_forward(u, delta, A, B, C, D, z, bias, delta_softplus,
                                                block_l=self.block_l)
        return y, last, ()

    def backward(self, inputs, extra, delta_softplus, gy, glast):
        raise RuntimeError("the 'triton' selective-scan backend has no backward (inference only); "
                           "use backend 'cuda' (mamba-ssm) or 'torch' for training")


register_backend(TritonBackend())
