"""What a selective-scan backend is: the base class, the registry and shared helpers.

A backend computes the scan of :func:`logvmamba.ops.selective_scan` one way
(a Python loop, chunked PyTorch, a C++ or Triton kernel, mamba-ssm). Each
lives in its own module and registers itself with :func:`register_backend`;
this module imports none of them.

Every backend except mamba-ssm's runs inside :class:`SelectiveScanFn`, so
``torch.jit.trace`` (and hence fvcore) sees one ``prim::PythonOp`` node per
scan; mamba-ssm's own Function has the same name and argument layout.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "AUTO_ORDER",
    "BackendUnavailableError",
    "RecomputeBackend",
    "ScanBackend",
    "SelectiveScanFn",
    "apply_skip_and_gate",
    "as_groups",
    "available_backends",
    "cast",
    "compute_dtype",
    "get_backend",
    "prepare_delta",
    "register_backend",
    "registered_backends",
]

#: Order in which "auto" tries backends; the first that can run the call wins.
#: Names that are not registered are skipped.
AUTO_ORDER: list[str] = ["cuda", "triton", "fused", "torch"]

_BACKENDS: dict[str, "ScanBackend"] = {}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested scan backend cannot run the call."""


# --------------------------------------------------------------------------
# helpers every backend may use
# --------------------------------------------------------------------------


def compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """float64 if any input is float64, else float32 (as the CUDA kernel)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """``t`` in ``dtype``; None stays None."""
    return None if t is None else t.to(dtype)


def as_groups(x: Tensor) -> Tensor:
    """(batch, n, L) -> (batch, 1, n, L); grouped inputs pass through."""
    return x.unsqueeze(1) if x.dim() == 3 else x


def prepare_delta(delta: Tensor, delta_bias: Optional[Tensor], softplus: bool) -> Tensor:
    """``delta + delta_bias``, through softplus when ``softplus``."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    return F.softplus(delta) if softplus else delta


def apply_skip_and_gate(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    """The raw scan output plus ``D u``, times ``silu(z)``."""
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


# --------------------------------------------------------------------------
# backend interface and the autograd Function local backends run in
# --------------------------------------------------------------------------


class ScanBackend:
    """One way of computing the scan.

    A backend computes the forward without autograd and returns the tensors
    its backward needs; :class:`SelectiveScanFn` stores them. Backends with
    their own autograd Function (mamba-ssm) override :meth:`apply` instead.
    """

    name: str = ""
    #: False for inference-only backends: "auto" skips them when a gradient
    #: is needed, and naming one then raises BackendUnavailableError.
    supports_grad: bool = True

    def unavailable_reason(self, u: Optional[Tensor] = None) -> Optional[str]:
        """Why this backend cannot run (on u's device and dtype), or None."""
        return None

    def apply(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        return SelectiveScanFn.apply(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, self.name
        )

    def forward(self, inputs: tuple, delta_softplus: bool) -> tuple[Tensor, Tensor, tuple]:
        """Returns (y, last_state, extra tensors for backward), in compute dtype."""
        raise NotImplementedError

    def backward(self, inputs: tuple, extra: tuple, delta_softplus: bool,
                 gy: Optional[Tensor], glast: Optional[Tensor]) -> tuple:
        """Gradients of (u, delta, A, B, C, D, z, delta_bias), None where absent."""
        raise NotImplementedError


class SelectiveScanFn(torch.autograd.Function):
    """One traced node per scan; the backend named by the last argument computes it.

    The argument order matches mamba-ssm's ``SelectiveScanFn`` so one fvcore
    handle reads both.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend):
        impl = _BACKENDS[backend]
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        # Under autocast the scan still runs in float32: its exponentials and
        # long sums lose everything in bfloat16 / float16.
        with torch.no_grad(), torch.autocast(u.device.type, enabled=False):
            y, last, extra = impl.forward(inputs, delta_softplus)
        ctx.backend = backend
        ctx.delta_softplus = delta_softplus
        ctx.n_inputs = len(inputs)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs, *extra)
        y = y.to(u.dtype)
        return (y, last) if return_last_state else y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, glast=None):
        saved = ctx.saved_tensors
        inputs, extra = saved[: ctx.n_inputs], saved[ctx.n_inputs:]
        with torch.autocast(inputs[0].device.type, enabled=False):
            grads = _BACKENDS[ctx.backend].backward(inputs, extra, ctx.delta_softplus, gy, glast)
        out = []
        for g, x, need in zip(grads, inputs, ctx.needs_input_grad):
            out.append(g.to(x.dtype).reshape(x.shape) if (need and g is not None) else None)
        return (*out, None, None, None)


class RecomputeBackend(ScanBackend):
    """Backend given by a differentiable function :meth:`run`; backward recomputes it with autograd."""

    def run(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> tuple[Tensor, Tensor]:
        """(y, last_state) from inputs in the compute dtype, B and C grouped (batch, g, n, L)."""
        raise NotImplementedError

    def forward(self, inputs, delta_softplus):
        cdt = compute_dtype(*inputs)
        u, delta, A, B, C, D, z, delta_bias = (cast(t, cdt) for t in inputs)
        y, last = self.run(u, delta, A, as_groups(B), as_groups(C), D, z, delta_bias, delta_softplus)
        return y, last, ()

    def backward(self, inputs, extra, delta_softplus, gy, glast):
        cdt = compute_dtype(*inputs)
        leaves = [None if t is None else t.detach().to(cdt).requires_grad_() for t in inputs]
        u, delta, A, B, C, D, z, delta_bias = leaves
        with torch.enable_grad():
            y, last = self.run(u, delta, A, as_groups(B), as_groups(C), D, z, delta_bias, delta_softplus)
        outs = [o for o, g in ((y, gy), (last, glast)) if g is not None]
        gouts = [g.to(cdt) for g in (gy, glast) if g is not None]
        wrt = [t for t in leaves if t is not None]
        if not outs:
            return (None,) * len(inputs)
        found = iter(torch.autograd.grad(outs, wrt, gouts, allow_unused=True))
        return tuple(None if t is None else next(found) for t in leaves)


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------


def register_backend(backend: ScanBackend, *, auto_priority: Optional[int] = None) -> ScanBackend:
    """Adds a backend; with ``auto_priority`` it also joins "auto" at that index of :data:`AUTO_ORDER`.

    Raises:
        ValueError: if a backend of that name exists.
    """
    if not backend.name or backend.name in _BACKENDS or backend.name == "auto":
        raise ValueError(f"invalid or duplicate backend name {backend.name!r}")
    _BACKENDS[backend.name] = backend
    if auto_priority is not None and backend.name not in AUTO_ORDER:
        AUTO_ORDER.insert(auto_priority, backend.name)
    return backend


def registered_backends() -> list[str]:
    """Names of every registered backend, in registration order."""
    return list(_BACKENDS)


def get_backend(name: str) -> ScanBackend:
    """The registered backend called ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown selective-scan backend {name!r}; known: {sorted(_BACKENDS) + ['auto']}"
        ) from None


def available_backends(u: Optional[Tensor] = None) -> list[str]:
    """Names of the backends that can run here (and on ``u``'s device if given)."""
    return [name for name, be in _BACKENDS.items() if be.unavailable_reason(u) is None]
