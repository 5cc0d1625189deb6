"""The "torch" selective-scan backend: chunked parallel scan in plain PyTorch.

Runs on any device. Chunks of the sequence are scanned in parallel with a
log-depth doubling scan and the state is carried from chunk to chunk; the
backward is written by hand and recomputes one chunk at a time.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from logvmamba.ops.backend import (
    ScanBackend,
    apply_skip_and_gate,
    as_groups,
    cast,
    compute_dtype,
    prepare_delta,
    register_backend,
)

__all__ = ["TorchBackend"]


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
        B, C = as_groups(B), as_groups(C)
        b, d, L = u.shape
        g, n = B.shape[1], A.shape[1]
        return (u.reshape(b, g, d // g, L), dt.reshape(b, g, d // g, L), A.reshape(g, d // g, n),
                B.transpose(-1, -2).contiguous(), C.transpose(-1, -2).contiguous())

    def forward(self, inputs, delta_softplus):
        cdt = compute_dtype(*inputs)
        u, delta, A, B, C, D, z, delta_bias = (cast(t, cdt) for t in inputs)
        dt = prepare_delta(delta, delta_bias, delta_softplus)
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
        y = apply_skip_and_gate(ycore, u, D, z)
        # Kept for backward: dt (softplus is slow on CPU), ycore (for dz only)
        # and the chunk states, from which any chunk can be recomputed.
        return y, h0.reshape(b, g * dg, n), (dt, ycore if z is not None else None, states)

    def backward(self, inputs, extra, delta_softplus, gy, glast):
        dt, ycore, states = extra
        cdt = states.dtype
        u, delta, A, B, C, D, z, delta_bias = (cast(t, cdt) for t in inputs)
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


register_backend(TorchBackend())
