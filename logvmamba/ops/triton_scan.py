"""The "triton" selective-scan backend: Triton kernels for CUDA GPUs, forward and backward.

For training and inference on GPUs where mamba-ssm is not installed: no CUDA
toolkit and no compiled extension, only the ``triton`` package that comes
with PyTorch's CUDA wheels.

One program scans one channel of one batch element. The sequence is read in
chunks of ``BLOCK_L`` steps; inside a chunk the recurrence
``h_t = a_t h_{t-1} + x_t`` (``a_t = exp(dt_t A)``, ``x_t = dt_t u_t B_t``)
is one ``tl.associative_scan`` over (n, BLOCK_L) registers, composing the
affine maps ``h -> a h + x``; the state entering the chunk is folded in
afterwards and the chunk's last state is carried to the next. The forward
also stores that entering state, (batch, d, L / BLOCK_L, n) in all; the
backward walks the chunks from last to first, recomputes each chunk's states
from it and runs the adjoint recurrence as a reverse associative scan.
Nothing of size (batch, d, L, n) is ever written to memory. Both passes
compute in float32 (float64 for float64 inputs) whatever the input dtype.

Triton is imported when the kernel is first needed, never at module import.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch

from logvmamba.ops.backend import ScanBackend, as_groups, compute_dtype, register_backend

__all__ = ["TritonBackend", "triton_selective_scan_backward", "triton_selective_scan_forward"]


@functools.lru_cache(maxsize=None)
def _kernels():
    """(triton, forward kernel, backward kernel); imports triton on first call."""
    import triton

    from logvmamba.ops._triton_kernels import scan_bwd, scan_fwd

    return triton, scan_fwd, scan_bwd


def _dummy(t, like):
    # Absent inputs still need a valid pointer; the kernel never reads it.
    return like if t is None else t


def _strides(u, delta, A, B4, C4, z):
    zs = (0, 0, 0) if z is None else z.stride()
    return (*u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *zs)


def _on_device(t):
    # Triton launches on the current CUDA device, not the tensors' one (cuda:1 under DDP).
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _block_n(triton, n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def triton_selective_scan_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                  delta_softplus=False, block_l: int = 64, save_states: bool = False):
    """Runs the forward kernel; returns (y, last_state, chunk_states) in the compute dtype.

    Arguments as :func:`logvmamba.ops.selective_scan`, in any float dtype; no
    autograd. ``chunk_states`` (batch, d, ceil(L / block_l), n) holds the state
    entering each chunk when ``save_states``, else it is None. Works on any
    tensors Triton can address (CUDA, or CPU under ``TRITON_INTERPRET=1``).
    """
    triton, fwd, _ = _kernels()
    cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    B4, C4 = as_groups(B), as_groups(C)
    b, d, L = u.shape
    n = A.shape[1]
    n_chunks = triton.cdiv(L, block_l)
    y = torch.empty(b, d, L, device=u.device, dtype=cdt)
    last = torch.empty(b, d, n, device=u.device, dtype=cdt)
    states = torch.empty(b, d, n_chunks, n, device=u.device, dtype=cdt) if save_states else last
    with _on_device(u):
        fwd[(d, b)](
            u, delta, A, B4, C4, _dummy(D, u), _dummy(z, u), _dummy(delta_bias, u), y, last, states,
            d, L, n, d // B4.shape[1], n_chunks,
            *_strides(u, delta, A, B4, C4, z),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), SAVE_STATES=save_states, FP64=cdt == torch.float64,
            BLOCK_N=_block_n(triton, n), BLOCK_L=block_l,
        )
    return y, last, (states if save_states else None)


def triton_selective_scan_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, states,
                                   gy=None, glast=None, block_l: int = 64):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias) in the compute dtype, None where absent.

    ``states`` comes from :func:`triton_selective_scan_forward` with
    ``save_states=True`` and the same ``block_l``; ``gy`` and ``glast`` are the
    gradients of y and of the last state (None: zero). B and C's gradients have
    B's and C's shapes.
    """
    triton, _, bwd = _kernels()
    cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    B4, C4 = as_groups(B), as_groups(C)
    b, d, L = u.shape
    n, groups = A.shape[1], B4.shape[1]
    n_chunks = states.shape[2]
    if n_chunks != triton.cdiv(L, block_l):
        raise ValueError(f"states hold {n_chunks} chunks, L={L} in blocks of {block_l} needs {triton.cdiv(L, block_l)}")
    new = functools.partial(torch.empty, device=u.device, dtype=cdt)
    du, ddelta = new(b, d, L), new(b, d, L)
    dz = new(b, d, L) if z is not None else None
    dA = new(b, d, n)
    dD = new(b, d) if D is not None else None
    dbias = new(b, d) if delta_bias is not None else None
    dB = torch.zeros(b, groups, n, L, device=u.device, dtype=cdt)
    dC = torch.zeros(b, groups, n, L, device=u.device, dtype=cdt)
    gy_ = None if gy is None else gy.contiguous()
    glast_ = None if glast is None else glast.contiguous()
    with _on_device(u):
        bwd[(d, b)](
            u, delta, A, B4, C4, _dummy(D, u), _dummy(z, u), _dummy(delta_bias, u), states,
            _dummy(gy_, u), _dummy(glast_, u),
            du, ddelta, dA, dB, dC, _dummy(dD, du), _dummy(dz, du), _dummy(dbias, du),
            d, L, n, d // groups, n_chunks,
            *_strides(u, delta, A, B4, C4, z),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_GY=gy is not None, HAS_GLAST=glast is not None,
            FP64=cdt == torch.float64, BLOCK_N=_block_n(triton, n), BLOCK_L=block_l,
        )
    dB, dC = dB.reshape(B.shape), dC.reshape(C.shape)
    return (du, ddelta, dA.sum(0), dB, dC, None if dD is None else dD.sum(0), dz,
            None if dbias is None else dbias.sum(0))


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    try:
        _kernels()
    except Exception as e:  # noqa: BLE001 - a broken install raises more than ImportError
        return f"triton cannot be imported ({type(e).__name__}: {e})"
    return None


class TritonBackend(ScanBackend):
    """Triton kernels for CUDA tensors, forward and backward (see module docstring)."""

    name = "triton"

    def __init__(self, block_l: int = 64):
        self.block_l = block_l

    def unavailable_reason(self, u=None):
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if u is not None and not u.is_cuda:
            return f"the tensors are on {u.device}, the kernel needs CUDA tensors"
        return _triton_import_error()

    def forward(self, inputs, delta_softplus):
        # The chunk states are kept even when no backward follows: L / block_l
        # states per channel, less than u itself.
        y, last, states = triton_selective_scan_forward(*inputs, delta_softplus, block_l=self.block_l,
                                                        save_states=True)
        return y, last, (states,)

    def backward(self, inputs, extra, delta_softplus, gy, glast):
        (states,) = extra
        return triton_selective_scan_backward(*inputs, delta_softplus, states, gy, glast, block_l=self.block_l)


register_backend(TritonBackend())
