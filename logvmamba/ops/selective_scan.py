"""Selective scan (S6) of Mamba: the entry point and the choice of backend.

Same contract as ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
(Gu and Dao, "Mamba", arXiv 2312.00752); see section 1 of
``shared/spec/logvmamba.md``.

Backends, one module each over :mod:`logvmamba.ops.backend`:

- ``"ref"`` (``ref_scan.py``): sequential loop over the sequence; the ground
  truth for tests.
- ``"torch"`` (``torch_scan.py``): pure PyTorch, chunked over the sequence
  with a log-depth doubling scan inside each chunk; any device, hand-written
  backward with per-chunk recomputation.
- ``"cuda"`` (``cuda_scan.py``): mamba-ssm's fused kernel, imported only when
  asked for.
- ``"triton"`` (``triton_scan.py``): Triton kernels for CUDA GPUs without
  mamba-ssm, forward and backward.
- ``"fused"`` (``fused.py``): a C++ loop for CPUs, forward and backward,
  compiled at first use.

``backend="auto"`` uses the default of the current context, set with
``with scan_backend(name):``; outside any such block it is the
``LOGVMAMBA_SCAN`` environment variable as it was when this module was first
imported, else "auto" itself, which tries the backends in the order of
:data:`~logvmamba.ops.backend.AUTO_ORDER`: cuda, triton (CUDA tensors),
fused (CPU tensors), torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Optional

import torch
from torch import Tensor

# Imported for their registration of the built-in backends.
import logvmamba.ops.cuda_scan  # noqa: F401
import logvmamba.ops.fused  # noqa: F401
import logvmamba.ops.ref_scan  # noqa: F401
import logvmamba.ops.torch_scan  # noqa: F401
import logvmamba.ops.triton_scan  # noqa: F401
from logvmamba.ops.backend import AUTO_ORDER, BackendUnavailableError, ScanBackend, get_backend, registered_backends

__all__ = ["SCAN_ENV", "get_default_backend", "resolve_backend", "scan_backend", "selective_scan", "validate_backend"]

SCAN_ENV = "LOGVMAMBA_SCAN"

# Read once: a process sets its default at start through the environment, and
# code inside the process changes it only through scan_backend().
_DEFAULT = contextvars.ContextVar("logvmamba_scan_backend", default=os.environ.get(SCAN_ENV, "").strip().lower() or "auto")


def validate_backend(name: str) -> str:
    """``name`` when it is "auto" or a registered backend.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name != "auto":
        get_backend(name)
    return name


def get_default_backend() -> str:
    """The backend ``"auto"`` stands for in this context (``"auto"``: pick by :data:`AUTO_ORDER`)."""
    return _DEFAULT.get()


@contextlib.contextmanager
def scan_backend(name: str) -> Iterator[str]:
    """Within the block, ``backend="auto"`` means ``name`` in this thread / context.

    Blocks nest; leaving one restores the outer default. ``"auto"`` restores
    automatic choice.

    Raises:
        ValueError: for an unknown backend name.

    Examples::

        >>> with scan_backend("torch"):
        ...     y = net(x)  # doctest: +SKIP
    """
    name = validate_backend(name.strip().lower())
    token = _DEFAULT.set(name)
    try:
        yield name
    finally:
        _DEFAULT.reset(token)


def _check_args(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, d, L), got shape {tuple(u.shape)}")
    b, d, L = u.shape
    if L < 1:
        raise ValueError(f"sequence length must be >= 1, got {L}")
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d={d}, n), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = t.shape == (b, n, L)
        elif t.dim() == 4:
            ok = t.shape[0] == b and t.shape[2:] == (n, L) and t.shape[1] >= 1 and d % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (batch={b}, n={n}, L={L}) or (batch, groups, n, L) "
                f"with groups dividing d={d}, got {tuple(t.shape)}"
            )
    groups_B, groups_C = (1 if t.dim() == 3 else t.shape[1] for t in (B, C))
    if groups_B != groups_C:
        raise ValueError(f"B and C must have one number of groups (as mamba-ssm), got {groups_B} and {groups_C}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"{name} must be (d={d},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def resolve_backend(backend: str = "auto", u: Optional[Tensor] = None,
                    requires_grad: bool = False) -> ScanBackend:
    """The backend a call with these arguments would use.

    ``"auto"`` stands for the context's default (:func:`scan_backend`); when
    that is "auto" too, the first backend of :data:`AUTO_ORDER` that can run
    on ``u`` (and has a backward, when ``requires_grad``) is taken.

    Raises:
        ValueError: unknown backend name.
        BackendUnavailableError: the named backend cannot run here, or is
            inference-only and a gradient is required.
    """
    if backend == "auto":
        backend = _DEFAULT.get()
    if backend == "auto":
        known = set(registered_backends())
        for name in AUTO_ORDER:
            if name not in known:
                continue
            be = get_backend(name)
            if requires_grad and not be.supports_grad:
                continue
            if be.unavailable_reason(u) is None:
                return be
        raise BackendUnavailableError(f"no selective-scan backend can run; tried {AUTO_ORDER}")
    be = get_backend(backend)
    reason = be.unavailable_reason(u)
    if reason is not None:
        raise BackendUnavailableError(f"selective-scan backend {backend!r} is unavailable: {reason}")
    if requires_grad and not be.supports_grad:
        raise BackendUnavailableError(
            f"selective-scan backend {backend!r} is inference-only (no backward) but a gradient is "
            "required; call it under torch.no_grad() or use a backend with a backward")
    return be


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
):
    """Selective scan: h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t h_t + D u_t.

    Computed in float32 (float64 if an input is float64); ``y`` comes back in
    ``u``'s dtype, ``last_state`` in the compute dtype.

    Args:
        u: (batch, d, L) input.
        delta: (batch, d, L) step size; ``delta + delta_bias`` is always
            formed, and passed through softplus when ``delta_softplus``.
        A: (d, n) real state matrix (diagonal per channel).
        B: (batch, n, L) or (batch, groups, n, L); channel i uses group
            i // (d // groups).
        C: like ``B``.
        D: optional (d,) skip weight.
        z: optional (batch, d, L) gate; the output is multiplied by silu(z).
        delta_bias: optional (d,).
        delta_softplus: apply softplus to delta.
        return_last_state: also return the final state (batch, d, n).
        backend: "auto" (the context's default, see :func:`scan_backend`),
            "ref", "torch", "cuda", "triton", "fused" or any registered backend.

    Returns:
        y (batch, d, L), or (y, last_state) when ``return_last_state``.

    Raises:
        ValueError: on inconsistent shapes or an unknown backend.
        BackendUnavailableError: when a named backend cannot run here.

    Examples::

        >>> u = torch.randn(2, 8, 10); dt = torch.rand(2, 8, 10)
        >>> A = -torch.rand(8, 4); B = torch.randn(2, 4, 10); C = torch.randn(2, 4, 10)
        >>> selective_scan(u, dt, A, B, C, backend="torch").shape
        torch.Size([2, 8, 10])
    """
    _check_args(u, delta, A, B, C, D, z, delta_bias)
    requires_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    impl = resolve_backend(backend, u, requires_grad)
    return impl.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(return_last_state))

