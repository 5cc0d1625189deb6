"""Triton kernels of the "triton" selective-scan backend (see triton_scan.py).

Imports triton at module level, as Triton resolves the names a kernel calls
among its module's globals; only triton_scan.py imports this module, and
only when the kernel is first needed.
"""

import triton
import triton.language as tl

__all__ = ["scan_bwd", "scan_fwd"]


@triton.jit
def _compose(a1, x1, a2, x2):
    # (a1, x1) is applied first: h -> a2 (a1 h + x1) + x2
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _delta(dl_row, offs_l, mask_l, sd_l, bias, SOFTPLUS: tl.constexpr, acc: tl.constexpr):
    """delta + bias through softplus (when SOFTPLUS), the raw value, and 0 outside the sequence."""
    raw = tl.load(dl_row + offs_l * sd_l, mask=mask_l, other=0.0).to(acc) + bias
    dt = raw
    if SOFTPLUS:
        # torch's softplus (threshold 20), written without overflow
        sp = tl.maximum(raw, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(raw)))
        dt = tl.where(raw > 20.0, raw, sp)
    # padded steps get dt = 0: a = 1, x = 0, the identity map
    return tl.where(mask_l, dt, 0.0), raw


@triton.jit
def _channel(A_ptr, bias_ptr, D_ptr, d, sA_d, sA_n, offs_n, mask_n,
             HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, acc: tl.constexpr):
    """Channel d's row of A, its delta bias and its skip weight D (0 when absent)."""
    A = tl.load(A_ptr + d * sA_d + offs_n * sA_n, mask=mask_n, other=0.0).to(acc)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(acc)
    Dd = 0.0
    if HAS_D:
        Dd = tl.load(D_ptr + d).to(acc)
    return A, bias, Dd


@triton.jit
def _chunk(u_row, dl_row, B_tile, C_tile, offs_l, mask_l, mask2, su_l, sd_l, sB_l, sC_l, A, bias,
           SOFTPLUS: tl.constexpr, acc: tl.constexpr):
    """One chunk's inputs and the affine maps h -> a h + x of its steps."""
    u = tl.load(u_row + offs_l * su_l, mask=mask_l, other=0.0).to(acc)
    dt, raw = _delta(dl_row, offs_l, mask_l, sd_l, bias, SOFTPLUS, acc)
    Bt = tl.load(B_tile + offs_l[None, :] * sB_l, mask=mask2, other=0.0).to(acc)
    Ct = tl.load(C_tile + offs_l[None, :] * sC_l, mask=mask2, other=0.0).to(acc)
    a = tl.exp(dt[None, :] * A[:, None])
    x = (dt * u)[None, :] * Bt
    return u, dt, raw, Bt, Ct, a, x


@triton.jit
def scan_fwd(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr, states_ptr,
    dim, L, n, per_group, n_chunks,
    su_b, su_d, su_l,
    sd_b, sd_d, sd_l,
    sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l,
    sC_b, sC_g, sC_n, sC_l,
    sz_b, sz_d, sz_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr, FP64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # 64-bit offsets: batch * dim * L may pass 2^31 elements
    d = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    g = d // per_group
    acc = tl.float64 if FP64 else tl.float32
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    A, bias, Dd = _channel(A_ptr, bias_ptr, D_ptr, d, sA_d, sA_n, offs_n, mask_n, HAS_BIAS, HAS_D, acc)
    h = tl.zeros([BLOCK_N], dtype=acc)
    u_row = u_ptr + b * su_b + d * su_d
    dl_row = dl_ptr + b * sd_b + d * sd_d
    B_tile = B_ptr + b * sB_b + g * sB_g + offs_n[:, None] * sB_n
    C_tile = C_ptr + b * sC_b + g * sC_g + offs_n[:, None] * sC_n
    y_row = y_ptr + (b * dim + d) * L
    states_row = states_ptr + (b * dim + d) * n_chunks * n
    for c in range(0, n_chunks):
        if SAVE_STATES:
            # the state entering each chunk: all the backward keeps of the forward
            tl.store(states_row + c * n + offs_n, h, mask=mask_n)
        offs_l = c * BLOCK_L + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        mask2 = mask_n[:, None] & mask_l[None, :]
        u, dt, _, Bt, Ct, a, x = _chunk(u_row, dl_row, B_tile, C_tile, offs_l, mask_l, mask2,
                                        su_l, sd_l, sB_l, sC_l, A, bias, SOFTPLUS, acc)
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


@triton.jit
def scan_bwd(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, gy_ptr, glast_ptr,
    du_ptr, ddl_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr,
    dim, L, n, per_group, n_chunks,
    su_b, su_d, su_l,
    sd_b, sd_d, sd_l,
    sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l,
    sC_b, sC_g, sC_n, sC_l,
    sz_b, sz_d, sz_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GY: tl.constexpr, HAS_GLAST: tl.constexpr,
    FP64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # Chunks from last to first. Each recomputes its states h_t from the saved
    # state entering it, then the adjoint lam_t = dLoss/dh_t by the reverse
    # recurrence lam_t = a_{t+1} lam_{t+1} + g_t C_t (g_t: gradient of the
    # scan's output at t), carried from chunk to chunk like h forwards.
    # Gradients of B and C (shared by the channels of a group) and of A, D and
    # delta_bias (shared by the batch) are summed: B and C with atomics into
    # (batch, groups, n, L), the others per (batch, channel), summed by the caller.
    # dB, dC, du, ddelta, dz are contiguous, (batch, dim, ...) / (batch, groups, n, L).
    d = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    g = d // per_group
    acc = tl.float64 if FP64 else tl.float32
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    A, bias, Dd = _channel(A_ptr, bias_ptr, D_ptr, d, sA_d, sA_n, offs_n, mask_n, HAS_BIAS, HAS_D, acc)
    row = b * dim + d
    lam = tl.zeros([BLOCK_N], dtype=acc)
    if HAS_GLAST:
        lam = tl.load(glast_ptr + row * n + offs_n, mask=mask_n, other=0.0).to(acc)
    dA = tl.zeros([BLOCK_N], dtype=acc)
    dD = tl.zeros([BLOCK_L], dtype=acc)
    dbias = tl.zeros([BLOCK_L], dtype=acc)
    u_row = u_ptr + b * su_b + d * su_d
    dl_row = dl_ptr + b * sd_b + d * sd_d
    B_tile = B_ptr + b * sB_b + g * sB_g + offs_n[:, None] * sB_n
    C_tile = C_ptr + b * sC_b + g * sC_g + offs_n[:, None] * sC_n
    gBC_tile = (b * (dim // per_group) + g) * n * L + offs_n[:, None] * L
    first = tl.arange(0, BLOCK_L)[None, :] == 0
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        offs_l = c * BLOCK_L + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        mask2 = mask_n[:, None] & mask_l[None, :]
        u, dt, raw, Bt, Ct, a, x = _chunk(u_row, dl_row, B_tile, C_tile, offs_l, mask_l, mask2,
                                          su_l, sd_l, sB_l, sC_l, A, bias, SOFTPLUS, acc)
        h0 = tl.load(states_ptr + (row * n_chunks + c) * n + offs_n, mask=mask_n, other=0.0).to(acc)
        a_run, x_run = tl.associative_scan((a, x), 1, _compose)
        hs = x_run + a_run * h0[:, None]

        gout = tl.zeros([BLOCK_L], dtype=acc)
        if HAS_GY:
            gout = tl.load(gy_ptr + row * L + offs_l, mask=mask_l, other=0.0).to(acc)
        if HAS_Z:
            z = tl.load(z_ptr + b * sz_b + d * sz_d + offs_l * sz_l, mask=mask_l, other=0.0).to(acc)
            sig = tl.sigmoid(z)
            out = tl.sum(hs * Ct, axis=0)
            if HAS_D:
                out += Dd * u
            tl.store(dz_ptr + row * L + offs_l, gout * out * sig * (1.0 + z * (1.0 - sig)), mask=mask_l)
            gout = gout * z * sig
        du = tl.zeros([BLOCK_L], dtype=acc)
        if HAS_D:
            dD += gout * u
            du = gout * Dd
        tl.atomic_add(dC_ptr + gBC_tile + offs_l[None, :], gout[None, :] * hs, mask=mask2, sem="relaxed")

        # a_{t+1} at position t: 1 past the end, where lam enters from the right
        offs_next = offs_l + 1
        mask_next = offs_next < L
        dt_next, _ = _delta(dl_row, offs_next, mask_next, sd_l, bias, SOFTPLUS, acc)
        a_next = tl.where(mask_next[None, :], tl.exp(dt_next[None, :] * A[:, None]), 1.0)
        # reverse scan: combine(later, current) applies the later step first
        r_run, s_run = tl.associative_scan((a_next, gout[None, :] * Ct), 1, _compose, reverse=True)
        lams = s_run + r_run * lam[:, None]
        lams = tl.where(mask2, lams, 0.0)
        lam = tl.sum(tl.where(first, lams, 0.0), axis=1)

        # h_t = a_t h_{t-1} + dt_t u_t B_t, and a_t h_{t-1} = h_t - x_t
        ah = hs - x
        du += dt * tl.sum(lams * Bt, axis=0)
        tl.store(du_ptr + row * L + offs_l, du, mask=mask_l)
        tl.atomic_add(dB_ptr + gBC_tile + offs_l[None, :], lams * (dt * u)[None, :], mask=mask2, sem="relaxed")
        dA += tl.sum(lams * ah * dt[None, :], axis=1)
        ddt = tl.sum(lams * (ah * A[:, None] + Bt * u[None, :]), axis=0)
        if SOFTPLUS:
            ddt = tl.where(raw > 20.0, ddt, ddt * tl.sigmoid(raw))
        ddt = tl.where(mask_l, ddt, 0.0)
        tl.store(ddl_ptr + row * L + offs_l, ddt, mask=mask_l)
        dbias += ddt
    tl.store(dA_ptr + row * n + offs_n, dA, mask=mask_n)
    if HAS_D:
        tl.store(dD_ptr + row, tl.sum(dD, axis=0))
    if HAS_BIAS:
        tl.store(dbias_ptr + row, tl.sum(dbias, axis=0))
