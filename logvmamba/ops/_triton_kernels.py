"""Triton kernels of the "triton" selective-scan backend (see triton_scan.py).

Imports triton at module level, as Triton resolves the names a kernel calls
among its module's globals; only triton_scan.py imports this module, and
only when the kernel is first needed.
"""

import triton
import triton.language as tl

__all__ = ["scan_fwd"]


@triton.jit
def _compose(a1, x1, a2, x2):
    # (a1, x1) happens first: h -> a2 (a1 h + x1) + x2
    return a1 * a2, a2 * x1 + x2


@triton.jit
def scan_fwd(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
    dim, L, n, per_group,
    su_b, su_d, su_l,
    sd_b, sd_d, sd_l,
    sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l,
    sC_b, sC_g, sC_n, sC_l,
    sz_b, sz_d, sz_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    FP64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # 64-bit offsets: batch * dim * L may pass 2^31 elements
    d = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    g = d // per_group
    acc = tl.float64 if FP64 else tl.float32
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    A = tl.load(A_ptr + d * sA_d + offs_n * sA_n, mask=mask_n, other=0.0).to(acc)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(acc)
    Dd = 0.0
    if HAS_D:
        Dd = tl.load(D_ptr + d).to(acc)
    h = tl.zeros([BLOCK_N], dtype=acc)
    u_row = u_ptr + b * su_b + d * su_d
    dl_row = dl_ptr + b * sd_b + d * sd_d
    B_tile = B_ptr + b * sB_b + g * sB_g + offs_n[:, None] * sB_n
    C_tile = C_ptr + b * sC_b + g * sC_g + offs_n[:, None] * sC_n
    y_row = y_ptr + (b * dim + d) * L
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        mask2 = mask_n[:, None] & mask_l[None, :]
        u = tl.load(u_row + offs_l * su_l, mask=mask_l, other=0.0).to(acc)
        dt = tl.load(dl_row + offs_l * sd_l, mask=mask_l, other=0.0).to(acc) + bias
        if SOFTPLUS:
            # torch's softplus (threshold 20), written without overflow
            sp = tl.maximum(dt, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(dt)))
            dt = tl.where(dt > 20.0, dt, sp)
        # padded steps get dt = 0: a = 1, x = 0, the identity map
        dt = tl.where(mask_l, dt, 0.0)
        Bt = tl.load(B_tile + offs_l[None, :] * sB_l, mask=mask2, other=0.0).to(acc)
        Ct = tl.load(C_tile + offs_l[None, :] * sC_l, mask=mask2, other=0.0).to(acc)
        a = tl.exp(dt[None, :] * A[:, None])
        x = (dt * u)[None, :] * Bt
        a_run, x_run = tl.associative_scan((a, x), 1, _compose)
        hs = x_run + a_run * h[:, None]
        y = tl.sum(hs * Ct, axis=0)
        if HAS_D:
            y += Dd * u
        if HAS_Z:
            z = tl.load(z_ptr + b * sz_b + d * sz_d + offs_l * sz_l, mask=mask_l, other=0.0).to(acc)
            y = y * z * tl.sigmoid(z)
        tl.store(y_row + offs_l, y, mask=mask_l)
        h = tl.sum(tl.where(tl.arange(0, BLOCK_L)[None, :] == BLOCK_L - 1, hs, 0.0), axis=1)
    tl.store(last_ptr + (b * dim + d) * n + offs_n, h, mask=mask_n)
