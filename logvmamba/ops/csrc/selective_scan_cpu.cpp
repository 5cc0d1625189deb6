// Fused selective scan (S6) for CPUs: forward and backward.
//
// Built at first use by logvmamba/ops/fused.py (plain C++17 and OpenMP, no
// torch headers) and called through ctypes with raw pointers; Python checks
// shapes, dtypes and contiguity and allocates every output.
//
// Layout (all contiguous, T = float or double):
//   u, delta, z, y, gy, gu, gdelta, gz : (batch, dim, L)
//   A : (dim, n);  D, delta_bias : (dim)
//   Bt, Ct : (batch, groups, L, n)      -- B and C with time before state
//   ckpt : (batch, dim, nchunks, n)     -- state before each chunk of `chunk` steps
//   last, glast : (batch, dim, n)
//   gBt, gCt : (batch, groups, parts, L, n) -- partial sums, one per part
//   gA_part : (batch, dim, n); gD_part, gbias_part : (batch, dim)
//
// Work is split into tasks (b, g, part): the channels of group g of batch b
// are cut into `parts` slices. A task walks the chunks of the sequence in
// order (backward: in reverse) and, inside a chunk, its channels one by one,
// so the chunk of B and C (and of their gradients) stays in L1 while every
// channel of the slice uses it. The sequence loop is sequential per channel;
// the loops over the state dimension n are written for auto-vectorisation
// (n is a compile-time constant for the common sizes).
//
// The backward never holds more than one chunk of states per task: it
// recomputes the chunk from its checkpoint, then runs the adjoint recurrence
// gh_t = C_t gyc_t + a_{t+1} gh_{t+1} backwards through it.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

// ---------------------------------------------------------------------------
// elementwise math. float: branch-free versions the compiler vectorises;
// double (used for checking) keeps the C library's functions.
// ---------------------------------------------------------------------------

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

template <typename T>
struct Math;

template <>
struct Math<float> {
  // exp(x) for x in [-87, 88] (clamped outside), about 1 ulp: x = k ln2 + r
  // with |r| <= ln2 / 2, a degree-7 polynomial for exp(r) and 2^k built in
  // the exponent bits. Rounding x / ln2 to an integer by adding 1.5 * 2^23
  // leaves k in the low mantissa bits of the sum.
  static inline float exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float shifter = 12582912.0f;  // 1.5 * 2^23
    const float s = x * 1.44269504088896341f + shifter;
    const float k = s - shifter;
    float r = x - k * 0.693359375f;    // ln2, high part (exact in float)
    r = r - k * -2.12194440e-4f;       // ln2, low part
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    // low bits of the sum hold k (two's complement); k + 127 is the biased exponent
    const uint32_t e = (float_to_bits(s) + 127u) << 23;
    return p * bits_to_float(e);
  }

  // log(1 + e) for e in [0, 1]: 2 atanh(s) with s = e / (2 + e) <= 1/3.
  static inline float log1p01(float e) {
    const float s = e / (2.0f + e);
    const float s2 = s * s;
    float p = 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
  }

  // torch.nn.functional.softplus with its threshold of 20.
  static inline float softplus(float x) {
    const float e = exp(-std::fabs(x));
    const float sp = (x > 0.0f ? x : 0.0f) + log1p01(e);
    return x > 20.0f ? x : sp;
  }

  static inline float sigmoid(float x) {
    const float e = exp(-std::fabs(x));
    const float inv = 1.0f / (1.0f + e);
    return x >= 0.0f ? inv : e * inv;
  }
};

template <>
struct Math<double> {
  static inline double exp(double x) { return std::exp(x); }
  static inline double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
  static inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
};

// ---------------------------------------------------------------------------
// problem description shared by forward and backward
// ---------------------------------------------------------------------------

template <typename T>
struct Problem {
  const T* u;
  const T* delta;
  const T* A;
  const T* Bt;
  const T* Ct;
  const T* D;      // may be null
  const T* z;      // may be null
  const T* bias;   // may be null
  bool softplus;
  int64_t batch, dim, groups, L, n, chunk, parts;

  int64_t nchunks() const { return (L + chunk - 1) / chunk; }
  int64_t per_group() const { return dim / groups; }
  int64_t ntasks() const { return batch * groups * parts; }

  // Channel range [d0, d1) and batch / group of task `task`.
  void task_range(int64_t task, int64_t& b, int64_t& g, int64_t& d0, int64_t& d1) const {
    const int64_t part = task % parts;
    const int64_t bg = task / parts;
    b = bg / groups;
    g = bg % groups;
    const int64_t dg = per_group();
    d0 = g * dg + (dg * part) / parts;
    d1 = g * dg + (dg * (part + 1)) / parts;
  }
};

// Step sizes of one chunk of one channel: dt = softplus(delta + bias) (or
// delta + bias) and, for the backward, d dt / d delta.
template <typename T>
inline void chunk_dt(const Problem<T>& p, const T* __restrict__ delta_row, T bias, int64_t t0,
                     int64_t len, T* __restrict__ dt, T* __restrict__ ddt) {
  using MT = Math<T>;
  if (p.softplus) {
    for (int64_t i = 0; i < len; ++i) dt[i] = MT::softplus(delta_row[t0 + i] + bias);
    if (ddt != nullptr) {
      for (int64_t i = 0; i < len; ++i) {
        const T x = delta_row[t0 + i] + bias;
        ddt[i] = x > T(20) ? T(1) : MT::sigmoid(x);
      }
    }
  } else {
    for (int64_t i = 0; i < len; ++i) dt[i] = delta_row[t0 + i] + bias;
    if (ddt != nullptr) {
      for (int64_t i = 0; i < len; ++i) ddt[i] = T(1);
    }
  }
}

// Sum of v[0..N) as a balanced tree (vectorises; a plain loop would be an
// in-order chain of N dependent additions). Overwrites v.
template <typename T, int N>
inline T tree_sum(T* v) {
  static_assert(N > 0, "fixed size only");
  if constexpr (N == 1) {
    return v[0];
  } else if constexpr ((N & (N - 1)) == 0) {
    for (int j = 0; j < N / 2; ++j) v[j] += v[j + N / 2];
    return tree_sum<T, N / 2>(v);
  } else {
    T s = T(0);
    for (int j = 0; j < N; ++j) s += v[j];
    return s;
  }
}

// Horizontal sums of one vector register, where the target has them.
#if defined(__AVX__)
inline float hsum256(__m256 x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
template <>
inline float tree_sum<float, 8>(float* v) {
  return hsum256(_mm256_loadu_ps(v));
}
#if defined(__AVX512F__)
template <>
inline float tree_sum<float, 16>(float* v) {
  return _mm512_reduce_add_ps(_mm512_loadu_ps(v));
}
template <>
inline double tree_sum<double, 8>(double* v) {
  return _mm512_reduce_add_pd(_mm512_loadu_pd(v));
}
#else
template <>
inline float tree_sum<float, 16>(float* v) {
  return hsum256(_mm256_add_ps(_mm256_loadu_ps(v), _mm256_loadu_ps(v + 8)));
}
#endif
#endif

// Runs fn(0 .. ntasks-1) on nthreads OpenMP threads. Returns 1 if a task
// threw (an allocation failed): exceptions must not cross the OpenMP region
// or the C interface.
template <typename Fn>
int run_tasks(int64_t ntasks, int nthreads, Fn fn) {
  std::atomic<int> failed{0};
  auto guarded = [&](int64_t task) {
    try {
      fn(task);
    } catch (...) {
      failed.store(1);
    }
  };
#ifdef _OPENMP
  if (nthreads > 1 && ntasks > 1) {
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) guarded(task);
    return failed.load();
  }
#endif
  (void)nthreads;
  for (int64_t task = 0; task < ntasks; ++task) guarded(task);
  return failed.load();
}

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------

// NT > 0: n == NT known at compile time; NT == 0: any n.
template <typename T, int NT>
int forward(const Problem<T>& p, T* __restrict__ y, T* __restrict__ last, T* __restrict__ ckpt,
            int nthreads) {
  using MT = Math<T>;
  const int64_t n = NT > 0 ? NT : p.n;
  const int64_t L = p.L, K = p.chunk, nck = p.nchunks();

  return run_tasks(p.ntasks(), nthreads, [&](int64_t task) {
    int64_t b, g, d0, d1;
    p.task_range(task, b, g, d0, d1);
    const int64_t rows = d1 - d0;
    if (rows <= 0) return;
    std::vector<T> state(rows * n, T(0));
    std::vector<T> dtbuf(K);
    const T* Bg = p.Bt + (b * p.groups + g) * L * n;
    const T* Cg = p.Ct + (b * p.groups + g) * L * n;
    T hl[NT > 0 ? NT : 1];

    for (int64_t c = 0; c < nck; ++c) {
      const int64_t t0 = c * K;
      const int64_t len = std::min(K, L - t0);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t d = d0 + i;
        const int64_t row = b * p.dim + d;
        const T* __restrict__ u = p.u + row * L;
        const T* __restrict__ Ad = p.A + d * n;
        T* hs = state.data() + i * n;
        std::memcpy(ckpt + (row * nck + c) * n, hs, n * sizeof(T));
        chunk_dt(p, p.delta + row * L, p.bias ? p.bias[d] : T(0), t0, len, dtbuf.data(), (T*)nullptr);

        T* __restrict__ h = NT > 0 ? hl : hs;
        if (NT > 0) for (int64_t j = 0; j < n; ++j) hl[j] = hs[j];
        const T Dd = p.D ? p.D[d] : T(0);
        T* __restrict__ yr = y + row * L;
        for (int64_t k = 0; k < len; ++k) {
          const int64_t t = t0 + k;
          const T dt = dtbuf[k];
          const T du = dt * u[t];
          const T* __restrict__ Bp = Bg + t * n;
          const T* __restrict__ Cp = Cg + t * n;
          T prod[NT > 0 ? NT : 1];
          T acc = T(0);
          if constexpr (NT > 0) {
            for (int64_t j = 0; j < n; ++j) {
              const T hn = MT::exp(dt * Ad[j]) * h[j] + du * Bp[j];
              h[j] = hn;
              prod[j] = hn * Cp[j];
            }
            acc = tree_sum<T, NT>(prod);
          } else {
#pragma omp simd reduction(+ : acc)
            for (int64_t j = 0; j < n; ++j) {
              const T hn = MT::exp(dt * Ad[j]) * h[j] + du * Bp[j];
              h[j] = hn;
              acc += hn * Cp[j];
            }
          }
          yr[t] = acc + Dd * u[t];
        }
        if (NT > 0) for (int64_t j = 0; j < n; ++j) hs[j] = hl[j];
      }
    }
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t row = b * p.dim + d0 + i;
      std::memcpy(last + row * n, state.data() + i * n, n * sizeof(T));
      if (p.z != nullptr) {
        T* __restrict__ yr = y + row * L;
        const T* __restrict__ zr = p.z + row * L;
        for (int64_t t = 0; t < L; ++t) yr[t] *= zr[t] * MT::sigmoid(zr[t]);
      }
    }
  });
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------

template <typename T>
struct Grads {
  const T* gy;      // may be null (no gradient reaches y)
  const T* glast;   // may be null
  const T* ckpt;
  T* gu;
  T* gdelta;
  T* gz;            // null when z is
  T* gBt;           // (batch, groups, parts, L, n)
  T* gCt;
  T* gA_part;       // (batch, dim, n)
  T* gD_part;       // (batch, dim)
  T* gbias_part;    // (batch, dim)
};

template <typename T, int NT>
int backward(const Problem<T>& p, const Grads<T>& q, int nthreads) {
  using MT = Math<T>;
  const int64_t n = NT > 0 ? NT : p.n;
  const int64_t L = p.L, K = p.chunk, nck = p.nchunks();

  return run_tasks(p.ntasks(), nthreads, [&](int64_t task) {
    int64_t b, g, d0, d1;
    p.task_range(task, b, g, d0, d1);
    const int64_t rows = d1 - d0;
    const int64_t part = task % p.parts;
    const int64_t slab = ((b * p.groups + g) * p.parts + part) * L * n;
    T* __restrict__ gB = q.gBt + slab;
    T* __restrict__ gC = q.gCt + slab;
    std::fill(gB, gB + L * n, T(0));
    std::fill(gC, gC + L * n, T(0));
    if (rows <= 0) return;

    const T* Bg = p.Bt + (b * p.groups + g) * L * n;
    const T* Cg = p.Ct + (b * p.groups + g) * L * n;
    // adjoint state carried between chunks, one per channel: a_{t0} gh_{t0}
    std::vector<T> carry(rows * n, T(0));
    std::vector<double> gA_acc(rows * n, 0.0), gD_acc(rows, 0.0), gbias_acc(rows, 0.0);
    std::vector<T> hbuf(K * n), abuf(K * n), dtbuf(K), ddtbuf(K), gAc(n), hwork(n);
    T hl[NT > 0 ? NT : 1];
    T Gl[NT > 0 ? NT : 1];

    if (q.glast != nullptr) {
      for (int64_t i = 0; i < rows; ++i)
        std::memcpy(carry.data() + i * n, q.glast + (b * p.dim + d0 + i) * n, n * sizeof(T));
    }

    for (int64_t c = nck - 1; c >= 0; --c) {
      const int64_t t0 = c * K;
      const int64_t len = std::min(K, L - t0);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t d = d0 + i;
        const int64_t row = b * p.dim + d;
        const T* __restrict__ u = p.u + row * L;
        const T* __restrict__ Ad = p.A + d * n;
        const T* __restrict__ h0 = q.ckpt + (row * nck + c) * n;
        const T Dd = p.D ? p.D[d] : T(0);
        chunk_dt(p, p.delta + row * L, p.bias ? p.bias[d] : T(0), t0, len, dtbuf.data(), ddtbuf.data());

        // 1. recompute the chunk's decays and states from its checkpoint
        T* __restrict__ h = NT > 0 ? hl : hwork.data();
        for (int64_t j = 0; j < n; ++j) h[j] = h0[j];
        for (int64_t k = 0; k < len; ++k) {
          const int64_t t = t0 + k;
          const T dt = dtbuf[k];
          const T du = dt * u[t];
          const T* __restrict__ Bp = Bg + t * n;
          T* __restrict__ ak = abuf.data() + k * n;
          T* __restrict__ hk = hbuf.data() + k * n;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            const T a = MT::exp(dt * Ad[j]);
            const T hn = a * h[j] + du * Bp[j];
            ak[j] = a;
            hk[j] = hn;
            h[j] = hn;
          }
        }

        // 2. adjoint recurrence, backwards through the chunk
        T* __restrict__ G = NT > 0 ? Gl : carry.data() + i * n;
        if (NT > 0) for (int64_t j = 0; j < n; ++j) Gl[j] = carry[i * n + j];
        std::fill(gAc.begin(), gAc.end(), T(0));
        T* __restrict__ gAcp = gAc.data();
        T gDc = T(0), gbc = T(0);
        const T* gyr = q.gy ? q.gy + row * L : nullptr;
        const T* zr = p.z ? p.z + row * L : nullptr;
        for (int64_t k = len - 1; k >= 0; --k) {
          const int64_t t = t0 + k;
          const T dt = dtbuf[k];
          const T ut = u[t];
          const T du = dt * ut;
          const T* __restrict__ Bp = Bg + t * n;
          const T* __restrict__ Cp = Cg + t * n;
          const T* __restrict__ ak = abuf.data() + k * n;
          const T* __restrict__ hk = hbuf.data() + k * n;
          const T* __restrict__ hp = k > 0 ? hbuf.data() + (k - 1) * n : h0;
          T* __restrict__ gBp = gB + t * n;
          T* __restrict__ gCp = gC + t * n;

          T gyc = gyr ? gyr[t] : T(0);
          if (zr != nullptr) {
            T yc = T(0);
            if constexpr (NT > 0) {
              T prod[NT];
#pragma omp simd
              for (int64_t j = 0; j < n; ++j) prod[j] = hk[j] * Cp[j];
              yc = tree_sum<T, NT>(prod);
            } else {
#pragma omp simd reduction(+ : yc)
              for (int64_t j = 0; j < n; ++j) yc += hk[j] * Cp[j];
            }
            const T zt = zr[t];
            const T s = MT::sigmoid(zt);
            q.gz[row * L + t] = gyc * (yc + Dd * ut) * s * (T(1) + zt * (T(1) - s));
            gyc = gyc * zt * s;
          }
          gDc += gyc * ut;

          T sB = T(0), sA = T(0);
          if constexpr (NT > 0) {
            T pB[NT], pA[NT];
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) {
              const T Gj = G[j] + Cp[j] * gyc;   // gh_t
              gCp[j] += gyc * hk[j];
              gBp[j] += Gj * du;
              pB[j] = Gj * Bp[j];
              const T w = Gj * ak[j] * hp[j];   // d loss / d (dt A_j)
              gAcp[j] += w * dt;
              pA[j] = w * Ad[j];
              G[j] = ak[j] * Gj;                // a_t gh_t, carried to t - 1
            }
            sB = tree_sum<T, NT>(pB);
            sA = tree_sum<T, NT>(pA);
          } else {
#pragma omp simd reduction(+ : sB, sA)
            for (int64_t j = 0; j < n; ++j) {
              const T Gj = G[j] + Cp[j] * gyc;
              gCp[j] += gyc * hk[j];
              gBp[j] += Gj * du;
              sB += Gj * Bp[j];
              const T w = Gj * ak[j] * hp[j];
              gAcp[j] += w * dt;
              sA += w * Ad[j];
              G[j] = ak[j] * Gj;
            }
          }
          q.gu[row * L + t] = gyc * Dd + sB * dt;
          const T gd = (sA + sB * ut) * ddtbuf[k];
          q.gdelta[row * L + t] = gd;
          gbc += gd;
        }
        if (NT > 0) for (int64_t j = 0; j < n; ++j) carry[i * n + j] = Gl[j];
        for (int64_t j = 0; j < n; ++j) gA_acc[i * n + j] += gAc[j];
        gD_acc[i] += gDc;
        gbias_acc[i] += gbc;
      }
    }
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t row = b * p.dim + d0 + i;
      for (int64_t j = 0; j < n; ++j) q.gA_part[row * n + j] = T(gA_acc[i * n + j]);
      q.gD_part[row] = T(gD_acc[i]);
      q.gbias_part[row] = T(gbias_acc[i]);
    }
  });
}

template <typename T>
Problem<T> make_problem(const T* u, const T* delta, const T* A, const T* Bt, const T* Ct, const T* D,
                        const T* z, const T* bias, int softplus, int64_t batch, int64_t dim,
                        int64_t groups, int64_t L, int64_t n, int64_t chunk, int64_t parts) {
  Problem<T> p;
  p.u = u; p.delta = delta; p.A = A; p.Bt = Bt; p.Ct = Ct; p.D = D; p.z = z; p.bias = bias;
  p.softplus = softplus != 0;
  p.batch = batch; p.dim = dim; p.groups = groups; p.L = L; p.n = n; p.chunk = chunk; p.parts = parts;
  return p;
}

template <typename T>
int dispatch_forward(const Problem<T>& p, T* y, T* last, T* ckpt, int nthreads) {
  switch (p.n) {
    case 4: return forward<T, 4>(p, y, last, ckpt, nthreads);
    case 8: return forward<T, 8>(p, y, last, ckpt, nthreads);
    case 16: return forward<T, 16>(p, y, last, ckpt, nthreads);
    case 32: return forward<T, 32>(p, y, last, ckpt, nthreads);
    case 64: return forward<T, 64>(p, y, last, ckpt, nthreads);
    default: return forward<T, 0>(p, y, last, ckpt, nthreads);
  }
  return 0;
}

template <typename T>
int dispatch_backward(const Problem<T>& p, const Grads<T>& q, int nthreads) {
  switch (p.n) {
    case 4: return backward<T, 4>(p, q, nthreads);
    case 8: return backward<T, 8>(p, q, nthreads);
    case 16: return backward<T, 16>(p, q, nthreads);
    case 32: return backward<T, 32>(p, q, nthreads);
    case 64: return backward<T, 64>(p, q, nthreads);
    default: return backward<T, 0>(p, q, nthreads);
  }
  return 0;
}

}  // namespace

// ---------------------------------------------------------------------------
// C interface (ctypes). Returns 0 on success.
// ---------------------------------------------------------------------------

#define LVM_EXPORT extern "C" __attribute__((visibility("default")))

LVM_EXPORT int lvm_abi_version() { return 1; }

#define LVM_DEFINE(SUFFIX, T)                                                                     \
  LVM_EXPORT int lvm_scan_fwd_##SUFFIX(                                                            \
      const T* u, const T* delta, const T* A, const T* Bt, const T* Ct, const T* D, const T* z,    \
      const T* bias, int softplus, int64_t batch, int64_t dim, int64_t groups, int64_t L,          \
      int64_t n, int64_t chunk, int64_t parts, int nthreads, T* y, T* last, T* ckpt) {             \
    const Problem<T> p = make_problem<T>(u, delta, A, Bt, Ct, D, z, bias, softplus, batch, dim,    \
                                         groups, L, n, chunk, parts);                              \
    return dispatch_forward<T>(p, y, last, ckpt, nthreads);                                        \
  }                                                                                                \
  LVM_EXPORT int lvm_scan_bwd_##SUFFIX(                                                            \
      const T* u, const T* delta, const T* A, const T* Bt, const T* Ct, const T* D, const T* z,    \
      const T* bias, int softplus, int64_t batch, int64_t dim, int64_t groups, int64_t L,          \
      int64_t n, int64_t chunk, int64_t parts, int nthreads, const T* ckpt, const T* gy,           \
      const T* glast, T* gu, T* gdelta, T* gz, T* gBt, T* gCt, T* gA_part, T* gD_part,             \
      T* gbias_part) {                                                                             \
    const Problem<T> p = make_problem<T>(u, delta, A, Bt, Ct, D, z, bias, softplus, batch, dim,    \
                                         groups, L, n, chunk, parts);                              \
    Grads<T> q;                                                                                    \
    q.gy = gy; q.glast = glast; q.ckpt = ckpt; q.gu = gu; q.gdelta = gdelta; q.gz = gz;            \
    q.gBt = gBt; q.gCt = gCt; q.gA_part = gA_part; q.gD_part = gD_part; q.gbias_part = gbias_part; \
    return dispatch_backward<T>(p, q, nthreads);                                                   \
  }

LVM_DEFINE(f32, float)
LVM_DEFINE(f64, double)
