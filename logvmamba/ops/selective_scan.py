"""Selective scan (S6) of Mamba with interchangeable backends.

Same contract as ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
(Gu and Dao, "Mamba", arXiv 2312.00752); see section 1 of
``shared/spec/logvmamba.md``.

Backends:

- ``"ref"``: sequential loop over the sequence; the ground truth for tests.
- ``"torch"``: pure PyTorch, chunked over the sequence with a log-depth
  doubling scan inside each chunk; any device, autograd with per-chunk
  recomputation.
- ``"cuda"``: mamba-ssm's fused kernel, imported only when asked for.
- ``"triton"`` (``triton_scan.py``): a Triton forward kernel for CUDA GPUs
  without mamba-ssm; inference only.
- ``"fused"`` (``fused.py``): a C++ loop for CPUs, forward and backward,
  compiled at first use.

"auto" tries them in the order of :data:`AUTO_ORDER`: cuda, triton (no
gradient needed), fused (CPU tensors), torch.

Every backend except ``"cuda"`` runs inside :class:`SelectiveScanFn`, so
``torch.jit.trace`` (and hence fvcore) sees one ``prim::PythonOp`` node per
scan; mamba-ssm's own Function has the same name and argument layout.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "SCAN_ENV",
    "BackendUnavailableError",
    "ScanBackend",
    "SelectiveScanFn",
    "available_backends",
    "get_backend",
    "register_backend",
    "resolve_backend",
    "selective_scan",
]

SCAN_ENV = "LOGVMAMBA_SCAN"

# Order in which "auto" tries backends; the first that can run the call wins.
AUTO_ORDER: list[str] = ["cuda", "torch"]

_BACKENDS: dict[str, "ScanBackend"] = {}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested scan backend cannot run the call."""


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------


def _compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """float64 if any input is float64, else float32 (as the CUDA kernel)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def _as_groups(x: Tensor) -> Tensor:
    """(batch, n, L) -> (batch, 1, n, L); grouped inputs pass through."""
    return x.unsqueeze(1) if x.dim() == 3 else x


def _prep_delta(delta: Tensor, delta_bias: Optional[Tensor], softplus: bool) -> Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    return F.softplus(delta) if softplus else delta


def _finish(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    """Skip connection and gate applied to the raw scan output."""
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


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
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"{name} must be (d={d},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


# --------------------------------------------------------------------------
# backend interface and the autograd Function all local backends run in
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
        with torch.no_grad():
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
        grads = _BACKENDS[ctx.backend].backward(inputs, extra, ctx.delta_softplus, gy, glast)
        out = []
        for g, x, need in zip(grads, inputs, ctx.needs_input_grad):
            out.append(g.to(x.dtype).reshape(x.shape) if (need and g is not None) else None)
        return (*out, None, None, None)


class _RecomputeBackend(ScanBackend):
    """Backend given by a differentiable function; backward recomputes it."""

    def _run(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        raise NotImplementedError

    def forward(self, inputs, delta_softplus):
        cdt = _compute_dtype(*inputs)
        u, delta, A, B, C, D, z, delta_bias = (_cast(t, cdt) for t in inputs)
        y, last = self._run(u, delta, A, _as_groups(B), _as_groups(C), D, z, delta_bias, delta_softplus)
        return y, last, ()

    def backward(self, inputs, extra, delta_softplus, gy, glast):
        cdt = _compute_dtype(*inputs)
        leaves = [None if t is None else t.detach().to(cdt).requires_grad_() for t in inputs]
        u, delta, A, B, C, D, z, delta_bias = leaves
        with torch.enable_grad():
            y, last = self._run(u, delta, A, _as_groups(B), _as_groups(C), D, z, delta_bias, delta_softplus)
        outs = [o for o, g in ((y, gy), (last, glast)) if g is not None]
        gouts = [g.to(cdt) for g in (gy, glast) if g is not None]
        wrt = [t for t in leaves if t is not None]
        if not outs:
            return (None,) * len(inputs)
        found = iter(torch.autograd.grad(outs, wrt, gouts, allow_unused=True))
        return tuple(None if t is None else next(found) for t in leaves)


# --------------------------------------------------------------------------
# "ref": the plain recurrence
# --------------------------------------------------------------------------


class RefBackend(_RecomputeBackend):
    """Sequential loop over time; slow but obviously right."""

    name = "ref"

    def _run(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        b, d, L = u.shape
        g, n = B.shape[1], A.shape[1]
        delta = _prep_delta(delta, delta_bias, delta_softplus)
        grouped = (b, g, d // g, L)
        A3 = A.reshape(g, d // g, n)
        h = u.new_zeros(b, g, d // g, n)
        ys = []
        # unbind() (one backward node for all steps) instead of x[..., t]:
        # each slice's backward would allocate a full-size zero gradient,
        # making the backward quadratic in L.
        steps = zip(delta.reshape(grouped).unbind(-1), u.reshape(grouped).unbind(-1),
                    B.unbind(-1), C.unbind(-1))
        for dt, ut, bt, ct in steps:
            h = torch.exp(dt[..., None] * A3) * h + (dt * ut)[..., None] * bt[:, :, None]
            ys.append((h * ct[:, :, None]).sum(-1))
        y = torch.stack(ys, -1).reshape(b, d, L)
        return _finish(y, u, D, z), h.reshape(b, d, n)


# --------------------------------------------------------------------------
# "torch": chunked parallel scan
# --------------------------------------------------------------------------


def _scan_(a: Tensor, x: Tensor, reverse: bool = False) -> Tensor:
    """In-place inclusive scan of h_t = a_t h_{t-1} + x_t along dim -2.

    With ``reverse`` it runs backwards: h_t = a_t h_{t+1} + x_t. Hillis-Steele
    doubling, log2(T) steps that multiply decays but never exponentiate summed
    log-decays, so nothing overflows. Overwrites ``x`` (the result) and ``a``.
    """
    T = x.shape[-2]
    k = 1
    while k < T:
        # The right-hand sides are materialised before the in-place write,
        # so the overlapping source and destination are read before written.
        if reverse:
            x[..., :-k, :] += a[..., :-k, :] * x[..., k:, :]
            if 2 * k < T:
                a[..., :-k, :] = a[..., :-k, :] * a[..., k:, :]
        else:
            x[..., k:, :] += a[..., k:, :] * x[..., :-k, :]
            if 2 * k < T:
                a[..., k:, :] = a[..., k:, :] * a[..., :-k, :]
        k *= 2
    return x


def _chunk_states(u, dt, A, Bt, h0):
    """States of one chunk and its decays (no autograd).

    Args:
        u, dt: (b, g, d/g, T) input and processed step size.
        A: (g, d/g, n).
        Bt: (b, g, T, n).
        h0: (b, g, d/g, n) state before the chunk.

    Returns:
        h (b, g, d/g, T, n) and a = exp(dt A) of the same shape.
    """
    a = torch.exp(dt.unsqueeze(-1) * A.unsqueeze(-2))
    x = (dt * u).unsqueeze(-1) * Bt.unsqueeze(2)
    x[..., 0, :] += a[..., 0, :] * h0
    return _scan_(a.clone(), x), a


class TorchBackend(ScanBackend):
    """Chunked scan in plain PyTorch with a hand-written backward.

    Chunks of ``chunk_size`` steps are scanned in parallel (log depth) and the
    state is carried from chunk to chunk, so only one chunk's
    (batch, d, T, n) tensors exist at a time. The forward keeps each chunk's
    initial state; the backward walks the chunks in reverse, recomputes the
    chunk's states and runs the adjoint recurrence (the same scan, reversed).
    """

    name = "torch"

    def __init__(self, chunk_size: Optional[int] = None):
        self.chunk_size = chunk_size

    def _chunk_len(self, b: int, d: int, n: int, L: int) -> int:
        if self.chunk_size is not None:
            return max(1, min(int(self.chunk_size), L))
        # Measured on 2 CPU cores: chunks of roughly 2**18 to 2**19 state
        # elements balance per-op overhead against the log2(T) extra passes of
        # the doubling scan and the cache footprint.
        width = b * d * n
        t = 128 if width <= 2048 else 64 if width <= 12288 else 32
        return min(t, L)

    @staticmethod
    def _layout(u, dt, A, B, C):
        """Grouped views: u, dt (b, g, d/g, L); A (g, d/g, n); B, C (b, g, L, n)."""
        B, C = _as_groups(B), _as_groups(C)
        b, d, L = u.shape
        g, n = B.shape[1], A.shape[1]
        return (u.reshape(b, g, d // g, L), dt.reshape(b, g, d // g, L), A.reshape(g, d // g, n),
                B.transpose(-1, -2).contiguous(), C.transpose(-1, -2).contiguous())

    def forward(self, inputs, delta_softplus):
        cdt = _compute_dtype(*inputs)
        u, delta, A, B, C, D, z, delta_bias = (_cast(t, cdt) for t in inputs)
        dt = _prep_delta(delta, delta_bias, delta_softplus)
        u4, dt4, A3, Bt, Ct = self._layout(u, dt, A, B, C)
        b, g, dg, L = u4.shape
        n = A3.shape[-1]
        T = self._chunk_len(b, g * dg, n, L)
        h0 = u4.new_zeros(b, g, dg, n)
        starts = range(0, L, T)
        states = u4.new_empty(len(starts), b, g, dg, n)
        ycore = torch.empty_like(u4)
        for i, t0 in enumerate(starts):
            sl = slice(t0, t0 + T)
            states[i] = h0
            h, _ = _chunk_states(u4[..., sl], dt4[..., sl], A3, Bt[:, :, sl], h0)
            ycore[..., sl] = (h * Ct[:, :, sl].unsqueeze(2)).sum(-1)
            h0 = h[..., -1, :]
        ycore = ycore.reshape(b, g * dg, L)
        y = _finish(ycore, u, D, z)
        # Kept for backward: dt (softplus is slow on CPU), ycore (for dz only)
        # and the chunk states, from which any chunk can be recomputed.
        return y, h0.reshape(b, g * dg, n), (dt, ycore if z is not None else None, states)

    def backward(self, inputs, extra, delta_softplus, gy, glast):
        dt, ycore, states = extra
        cdt = states.dtype
        u, delta, A, B, C, D, z, delta_bias = (_cast(t, cdt) for t in inputs)
        b, d, L = u.shape
        u4, dt4, A3, Bt, Ct = self._layout(u, dt, A, B, C)
        g, dg, n = A3.shape

        gy = u.new_zeros(b, d, L) if gy is None else gy.to(cdt)
        gD = gz = None
        if z is not None:
            pre = ycore if D is None else ycore + D[:, None] * u
            sig = torch.sigmoid(z)
            gz = gy * pre * sig * (1 + z * (1 - sig))
            gy = gy * z * sig  # gradient reaching ycore (and D u)
        gu = gy * D[:, None] if D is not None else None
        if D is not None:
            gD = (gy * u).sum((0, 2))

        T = self._chunk_len(b, d, n, L)
        gh = u.new_zeros(b, g, dg, n) if glast is None else glast.to(cdt).reshape(b, g, dg, n)
        gy4 = gy.reshape(b, g, dg, L)
        gu4, gdt4 = torch.empty_like(u4), torch.empty_like(dt4)
        gBt, gCt = torch.empty_like(Bt), torch.empty_like(Ct)
        gA = torch.zeros_like(A3)
        starts = list(range(0, L, T))
        for i in reversed(range(len(starts))):
            sl = slice(starts[i], starts[i] + T)
            uc, dtc, Bc, Cc, gyc = u4[..., sl], dt4[..., sl], Bt[:, :, sl], Ct[:, :, sl], gy4[..., sl]
            h0 = states[i]
            h, a = _chunk_states(uc, dtc, A3, Bc, h0)
            gCt[:, :, sl] = (h * gyc.unsqueeze(-1)).sum(2)
            # Adjoint: gh_t = C_t gy_t + a_{t+1} gh_{t+1}, gh_end entering at the last step.
            r = gyc.unsqueeze(-1) * Cc.unsqueeze(2)
            r[..., -1, :] += gh
            decay = torch.empty_like(a)
            decay[..., :-1, :] = a[..., 1:, :]
            decay[..., -1, :] = 1
            gh_t = _scan_(decay, r, reverse=True)
            gh = a[..., 0, :] * gh_t[..., 0, :]
            # d(loss)/d(dt A) = gh_t * a_t * h_{t-1}
            w = gh_t * a
            w[..., 1:, :] *= h[..., :-1, :]
            w[..., 0, :] *= h0
            gA += (w * dtc.unsqueeze(-1)).sum((0, 3))
            s = (gh_t * Bc.unsqueeze(2)).sum(-1)
            gdt4[..., sl] = (w * A3.unsqueeze(-2)).sum(-1) + s * uc
            gu4[..., sl] = s * dtc
            gBt[:, :, sl] = (gh_t * (dtc * uc).unsqueeze(-1)).sum(2)

        gu = gu4.reshape(b, d, L) if gu is None else gu + gu4.reshape(b, d, L)
        gdelta = gdt4.reshape(b, d, L)
        if delta_softplus:
            x = delta if delta_bias is None else delta + delta_bias[:, None]
            # aten's own derivative, so the threshold matches autograd's exactly
            gdelta = torch.ops.aten.softplus_backward(gdelta, x, 1, 20)
        gbias = None if delta_bias is None else gdelta.sum((0, 2))
        return (gu, gdelta, gA.reshape(d, n), gBt.transpose(-1, -2), gCt.transpose(-1, -2), gD, gz, gbias)


# --------------------------------------------------------------------------
# "cuda": mamba-ssm's kernel
# --------------------------------------------------------------------------


def _import_mamba_scan():
    # Imported here, never at module import: mamba_ssm pulls in CUDA
    # extensions and triton, which CPU-only installs do not have.
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


# --------------------------------------------------------------------------
# registry and dispatch
# --------------------------------------------------------------------------


def register_backend(backend: ScanBackend, *, auto_priority: Optional[int] = None) -> ScanBackend:
    """Adds a backend; with ``auto_priority`` it also joins "auto" at that index.

    Raises:
        ValueError: if a backend of that name exists.
    """
    if not backend.name or backend.name in _BACKENDS or backend.name == "auto":
        raise ValueError(f"invalid or duplicate backend name {backend.name!r}")
    _BACKENDS[backend.name] = backend
    if auto_priority is not None:
        AUTO_ORDER.insert(auto_priority, backend.name)
    return backend


register_backend(RefBackend())
register_backend(TorchBackend())
register_backend(CudaBackend())


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


def resolve_backend(backend: str = "auto", u: Optional[Tensor] = None,
                    requires_grad: bool = False) -> ScanBackend:
    """The backend a call with these arguments would use.

    ``"auto"`` defers to the ``LOGVMAMBA_SCAN`` environment variable when it
    is set (to anything but "auto"), else takes the first backend of
    :data:`AUTO_ORDER` that can run on ``u`` (and has a backward, when
    ``requires_grad``).

    Raises:
        ValueError: unknown backend name.
        BackendUnavailableError: the named backend cannot run here, or is
            inference-only and a gradient is required.
    """
    if backend == "auto":
        backend = os.environ.get(SCAN_ENV, "").strip().lower() or "auto"
    if backend == "auto":
        for name in AUTO_ORDER:
            be = _BACKENDS.get(name)
            if be is None or (requires_grad and not be.supports_grad):
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
        backend: "auto", "ref", "torch", "cuda", "triton", "fused" or any
            registered backend.

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

