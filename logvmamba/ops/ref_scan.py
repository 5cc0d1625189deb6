"""The "ref" selective-scan backend: the plain recurrence, one step at a time.

Slow but obviously right; the ground truth the other backends are tested against.
"""

from __future__ import annotations

import torch

from logvmamba.ops.backend import RecomputeBackend, apply_skip_and_gate, prepare_delta, register_backend

__all__ = ["RefBackend"]


class RefBackend(RecomputeBackend):
    """Sequential loop over time; autograd through the loop gives the backward."""

    name = "ref"

    def run(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        b, d, L = u.shape
        g, n = B.shape[1], A.shape[1]
        delta = prepare_delta(delta, delta_bias, delta_softplus)
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
        return apply_skip_and_gate(y, u, D, z), h.reshape(b, d, n)


register_backend(RefBackend())
