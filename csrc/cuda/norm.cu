// CUDA kernels of norm_forward and norm_backward (CondInstanceNorm++), NCHW and channels_last.
//
// forward:  stats (one block per NCHW plane, or per (n, 32 channels) for channels_last; the last block
//           of each sample to finish computes that sample's coefficients, block-wide, ../norm_math.h)
//           -> apply (16-byte packs over all of x)
// backward: coeffs (one block per sample) -> plane sums S1, S2 (same blocking as stats; the last block
//           of each sample computes its backward coefficients and parameter grads) -> dx (packs)
// The sums over C of a sample's per-channel values run over all threads of a block, reading along C
// (coalesced); "last block" is counted per sample with an atomic on a zeroed (N,) int32 buffer.
// gamma, alpha, beta are read in place through their row and column strides (any views).
// Statistics and all arithmetic in float32 (float64 for float64 x); everything on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>

#include "../checks.h"
#include "../norm_math.h"
#include "common.cuh"

namespace fastscore {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // channels_last reductions: 32 channels x 8 rows of threads

template <typename acc_t>
__device__ __forceinline__ acc_t act_forward(acc_t v, int64_t act) {
  if (act == kActRelu) return v < acc_t(0) ? acc_t(0) : v;  // NaN stays NaN, as torch.relu
  if (act == kActElu) return v > acc_t(0) ? v : expm1(v);
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t act_grad(acc_t pre, int64_t act) {
  if (act == kActRelu) return pre > acc_t(0) ? acc_t(1) : acc_t(0);
  if (act == kActElu) return pre > acc_t(0) ? acc_t(1) : exp(pre);
  return acc_t(1);
}

// Loads element i..i+V-1 as acc_t, by 16-byte pack when allowed.
template <typename scalar_t, bool kVec>
__device__ __forceinline__ void load_run(const scalar_t* p, int64_t i0, at::opmath_type<scalar_t> (&out)[Vec<scalar_t>::size]) {
  constexpr int V = Vec<scalar_t>::size;
  if constexpr (kVec) {
    const Pack<scalar_t> pk = load_pack(p + i0);
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = static_cast<at::opmath_type<scalar_t>>(pk.v[v]);
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = static_cast<at::opmath_type<scalar_t>>(p[i0 + v]);
  }
}

template <typename scalar_t, bool kVec>
__device__ __forceinline__ void store_run(scalar_t* p, int64_t i0, const at::opmath_type<scalar_t> (&in)[Vec<scalar_t>::size]) {
  constexpr int V = Vec<scalar_t>::size;
  Pack<scalar_t> pk;
#pragma unroll
  for (int v = 0; v < V; ++v) pk.v[v] = static_cast<scalar_t>(in[v]);
  if constexpr (kVec) {
    store_pack(p + i0, pk);
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) p[i0 + v] = pk.v[v];
  }
}

// ---- per-sample (cross-channel) coefficients, one block per sample ------------------------------

// gamma, alpha, beta (beta may be null) in the arithmetic dtype, by row and column strides. Sample n
// reads row n, or row rows[n] in the lookup form (the parameters are then tables of n_rows rows, and a
// label out of range is a device-side assert, as in an embedding lookup: the host never reads labels).
template <typename acc_t>
struct ParamView {
  const acc_t* gamma;
  const acc_t* alpha;
  const acc_t* beta;
  int64_t g_row, a_row, b_row, g_col, a_col, b_col;
  const int64_t* rows;
  int64_t n_rows;
  __device__ __forceinline__ SampleParams<acc_t> at(int64_t n) const {
    if (rows != nullptr) {
      n = rows[n];
      CUDA_KERNEL_ASSERT(n >= 0 && n < n_rows && "fastscore_ext norm lookup: a label is out of range of the table");
    }
    return {gamma + n * g_row, alpha + n * a_row, beta ? beta + n * b_row : nullptr, g_col, a_col, b_col};
  }
};

// Sum over all threads of a block of any shape (at most 1024 threads, a multiple of 32); every
// thread gets the total. All threads of the block must call it.
template <typename T>
__device__ __forceinline__ T sample_block_sum(T v) {
  __shared__ T partial[32];
  __shared__ T total;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, nt = blockDim.x * blockDim.y;
  v = warp_sum(v);
  __syncthreads();  // partial/total may still be read by a previous call
  if (tid % 32 == 0) partial[tid / 32] = v;
  __syncthreads();
  if (tid < 32) {
    T w = tid < nt / 32 ? partial[tid] : T(0);
    w = warp_sum(w);
    if (tid == 0) total = w;
  }
  __syncthreads();
  return total;
}

// m and s of sample n's C plane means, summed over the block along C. mu is read through L2 (__ldcg):
// other blocks of this launch may have written it.
template <typename acc_t>
__device__ __forceinline__ CrossChannel<acc_t> block_cross_channel(const acc_t* __restrict__ mu, int64_t C,
                                                                   double eps) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, nt = blockDim.x * blockDim.y;
  acc_t sum = 0;
  for (int64_t c = tid; c < C; c += nt) sum += __ldcg(mu + c);
  const acc_t m = sample_block_sum(sum) / static_cast<acc_t>(C);
  acc_t ss = 0;
  for (int64_t c = tid; c < C; c += nt) {
    const acc_t d = __ldcg(mu + c) - m;
    ss += d * d;
  }
  return {m, cross_channel_scale(sample_block_sum(ss), C, eps)};
}

// scale and shift of sample n, block-wide. mu, rstd, scale, shift point at the sample's row.
template <typename acc_t>
__device__ __forceinline__ void block_forward_coeffs(const acc_t* __restrict__ mu, const acc_t* __restrict__ rstd,
                                                     int64_t C, double eps, const SampleParams<acc_t>& sp,
                                                     acc_t* __restrict__ scale, acc_t* __restrict__ shift) {
  const CrossChannel<acc_t> cc = block_cross_channel(mu, C, eps);
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, nt = blockDim.x * blockDim.y;
  for (int64_t c = tid; c < C; c += nt) forward_coeff(c, __ldcg(mu + c), __ldcg(rstd + c), cc, sp, scale + c, shift + c);
}

// Backward coefficients and parameter grads of sample n, block-wide, from its plane sums S1, S2.
// mu, rstd, S1, S2, c1..c3 point at the sample's (C,) row; dgamma/dalpha/dbeta at its rows of dparams.
template <typename acc_t>
__device__ __forceinline__ void block_backward_coeffs(const acc_t* __restrict__ mu, const acc_t* __restrict__ rstd,
                                                      const acc_t* __restrict__ S1, const acc_t* __restrict__ S2,
                                                      int64_t C, int64_t hw, double eps, const SampleParams<acc_t>& sp,
                                                      acc_t* __restrict__ dgamma, acc_t* __restrict__ dalpha,
                                                      acc_t* __restrict__ dbeta, acc_t* __restrict__ c1,
                                                      acc_t* __restrict__ c2, acc_t* __restrict__ c3) {
  const CrossChannel<acc_t> cc = block_cross_channel(mu, C, eps);
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, nt = blockDim.x * blockDim.y;
  acc_t sum_dm = 0, dot = 0;
  for (int64_t c = tid; c < C; c += nt) {
    const acc_t dm = dmuhat_of(c, __ldcg(S1 + c), sp);
    sum_dm += dm;
    dot += dm * (__ldcg(mu + c) - cc.m);
  }
  sum_dm = sample_block_sum(sum_dm);
  dot = sample_block_sum(dot);
  const SampleBackward<acc_t> sb = sample_backward(cc, sum_dm, dot, C, hw);
  for (int64_t c = tid; c < C; c += nt)
    backward_coeff(c, C, __ldcg(mu + c), __ldcg(rstd + c), __ldcg(S1 + c), __ldcg(S2 + c), sb, sp, dgamma + c,
                   dalpha + c, dbeta ? dbeta + c : nullptr, c1 + c, c2 + c, c3 + c);
}

// True in every thread of the block that is the last of sample n's `blocks` blocks to get here; its
// writes and those of the other blocks are then visible to it. Every thread must call it, after its own
// stores (a __threadfence per thread publishes them before the block's one atomic).
__device__ __forceinline__ bool last_block_of_sample(unsigned int* __restrict__ counter, int64_t n, int64_t blocks) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0)
    last = atomicAdd(counter + n, 1u) == static_cast<unsigned int>(blocks - 1);
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// What the statistics/sums kernels' last block of a sample needs to compute its coefficients.
template <typename acc_t>
struct SampleEpilogue {
  ParamView<acc_t> params;
  int64_t C;
  double eps;
  unsigned int* counter;  // (N,) zeros
  int64_t blocks;         // blocks per sample
};

template <typename acc_t>
__global__ void forward_coeffs_kernel(int64_t C, double eps, const acc_t* __restrict__ mu,
                                      const acc_t* __restrict__ rstd, ParamView<acc_t> params,
                                      acc_t* __restrict__ scale, acc_t* __restrict__ shift) {
  const int64_t n = blockIdx.x;
  block_forward_coeffs(mu + n * C, rstd + n * C, C, eps, params.at(n), scale + n * C, shift + n * C);
}

// ---- statistics and plane sums -----------------------------------------------------------------

// One block per NCHW plane: mean, then the biased variance about it (the plane is re-read from cache).
template <typename scalar_t, bool kVec>
__global__ void plane_stats_kernel(const scalar_t* __restrict__ x, int64_t hw, double eps,
                                   at::opmath_type<scalar_t>* __restrict__ mu, at::opmath_type<scalar_t>* __restrict__ rstd,
                                   SampleEpilogue<at::opmath_type<scalar_t>> ep, at::opmath_type<scalar_t>* __restrict__ scale,
                                   at::opmath_type<scalar_t>* __restrict__ shift) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = kVec ? Vec<scalar_t>::size : 1;
  const scalar_t* p = x + static_cast<int64_t>(blockIdx.x) * hw;
  acc_t s = 0;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * V; i < hw; i += static_cast<int64_t>(blockDim.x) * V) {
    if constexpr (kVec) {
      acc_t r[Vec<scalar_t>::size];
      load_run<scalar_t, true>(p, i, r);
#pragma unroll
      for (int v = 0; v < V; ++v) s += r[v];
    } else {
      s += static_cast<acc_t>(p[i]);
    }
  }
  const acc_t mean = block_sum(s) / static_cast<acc_t>(hw);
  acc_t q = 0;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * V; i < hw; i += static_cast<int64_t>(blockDim.x) * V) {
    if constexpr (kVec) {
      acc_t r[Vec<scalar_t>::size];
      load_run<scalar_t, true>(p, i, r);
#pragma unroll
      for (int v = 0; v < V; ++v) q += (r[v] - mean) * (r[v] - mean);
    } else {
      const acc_t d = static_cast<acc_t>(p[i]) - mean;
      q += d * d;
    }
  }
  const acc_t var = block_sum(q) / static_cast<acc_t>(hw);
  if (threadIdx.x == 0) {
    mu[blockIdx.x] = mean;
    rstd[blockIdx.x] = acc_t(1) / sqrt(var + static_cast<acc_t>(eps));
  }
  const int64_t n = blockIdx.x / ep.C;
  if (last_block_of_sample(ep.counter, n, ep.blocks))
    block_forward_coeffs(mu + n * ep.C, rstd + n * ep.C, ep.C, ep.eps, ep.params.at(n), scale + n * ep.C,
                         shift + n * ep.C);
}

// Sum over the threadIdx.y rows of a (32, kRowsPerBlock) block, per channel lane; row 0 gets the totals.
template <typename acc_t>
__device__ __forceinline__ acc_t column_sum(acc_t v, acc_t (&buf)[kRowsPerBlock][32]) {
  __syncthreads();
  buf[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  acc_t t = 0;
  if (threadIdx.y == 0) {
#pragma unroll
    for (int r = 0; r < kRowsPerBlock; ++r) t += buf[r][threadIdx.x];
  }
  return t;
}

// channels_last: block (n, 32-channel tile); each thread walks rows threadIdx.y, +8, ... of its channel.
template <typename scalar_t>
__global__ void row_stats_kernel(const scalar_t* __restrict__ x, int64_t hw, int64_t C, double eps,
                                 at::opmath_type<scalar_t>* __restrict__ mu, at::opmath_type<scalar_t>* __restrict__ rstd,
                                 SampleEpilogue<at::opmath_type<scalar_t>> ep, at::opmath_type<scalar_t>* __restrict__ scale,
                                 at::opmath_type<scalar_t>* __restrict__ shift) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t buf[kRowsPerBlock][32];
  __shared__ acc_t mean_sh[32];
  const int64_t tiles = (C + 31) / 32;
  const int64_t n = blockIdx.x / tiles, c = (blockIdx.x % tiles) * 32 + threadIdx.x;
  const bool active = c < C;
  const scalar_t* base = x + n * hw * C + c;
  acc_t s = 0;
  if (active)
    for (int64_t r = threadIdx.y; r < hw; r += kRowsPerBlock) s += static_cast<acc_t>(base[r * C]);
  s = column_sum(s, buf);
  if (threadIdx.y == 0) mean_sh[threadIdx.x] = s / static_cast<acc_t>(hw);
  __syncthreads();
  const acc_t mean = mean_sh[threadIdx.x];
  acc_t q = 0;
  if (active)
    for (int64_t r = threadIdx.y; r < hw; r += kRowsPerBlock) {
      const acc_t d = static_cast<acc_t>(base[r * C]) - mean;
      q += d * d;
    }
  q = column_sum(q, buf);
  if (threadIdx.y == 0 && active) {
    mu[n * C + c] = mean;
    rstd[n * C + c] = acc_t(1) / sqrt(q / static_cast<acc_t>(hw) + static_cast<acc_t>(eps));
  }
  if (last_block_of_sample(ep.counter, n, ep.blocks))
    block_forward_coeffs(mu + n * C, rstd + n * C, C, ep.eps, ep.params.at(n), scale + n * C, shift + n * C);
}

// dpre and xhat of one element, given its channel's coefficients.
template <typename acc_t>
__device__ __forceinline__ void dpre_xhat(acc_t x, acc_t dy, acc_t scale, acc_t mu, acc_t shift, acc_t rstd, int64_t act,
                                          acc_t* dpre, acc_t* xhat) {
  const acc_t xc = x - mu;
  *xhat = xc * rstd;
  *dpre = act == kActNone ? dy : dy * act_grad(scale * xc + shift, act);
}

// What the sums kernels' last block of a sample needs: the forward's statistics, and where the backward
// coefficients (c1, c2, c3: (N, C)) and the parameter grads (rows of dparams, (N, K, C)) go.
template <typename acc_t>
struct BackwardEpilogue {
  SampleEpilogue<acc_t> s;
  int64_t hw;
  acc_t *c1, *c2, *c3, *dparams;
  int64_t K;  // 3 with beta (dbeta the third row), 2 without
  __device__ __forceinline__ void run(int64_t n, const acc_t* mu, const acc_t* rstd, const acc_t* S1,
                                      const acc_t* S2) const {
    const int64_t C = s.C, o = n * C;
    acc_t* dp = dparams + n * K * C;
    block_backward_coeffs(mu + o, rstd + o, S1 + o, S2 + o, C, hw, s.eps, s.params.at(n), dp, dp + C,
                          K == 3 ? dp + 2 * C : nullptr, c1 + o, c2 + o, c3 + o);
  }
};

template <typename scalar_t, bool kVec>
__global__ void plane_sums_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, int64_t hw,
                                  const at::opmath_type<scalar_t>* __restrict__ scale,
                                  const at::opmath_type<scalar_t>* __restrict__ mu,
                                  const at::opmath_type<scalar_t>* __restrict__ shift,
                                  const at::opmath_type<scalar_t>* __restrict__ rstd, int64_t act,
                                  at::opmath_type<scalar_t>* __restrict__ S1, at::opmath_type<scalar_t>* __restrict__ S2,
                                  BackwardEpilogue<at::opmath_type<scalar_t>> ep) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = Vec<scalar_t>::size;
  const int64_t p = blockIdx.x;
  const acc_t sc = scale[p], m = mu[p], sh = shift[p], rs = rstd[p];
  const scalar_t* xp = x + p * hw;
  const scalar_t* gp = dy + p * hw;
  acc_t a1 = 0, a2 = 0;
  if constexpr (kVec) {
    for (int64_t i = static_cast<int64_t>(threadIdx.x) * V; i < hw; i += static_cast<int64_t>(blockDim.x) * V) {
      acc_t xv[V], gv[V];
      load_run<scalar_t, true>(xp, i, xv);
      load_run<scalar_t, true>(gp, i, gv);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        acc_t d, xh;
        dpre_xhat(xv[v], gv[v], sc, m, sh, rs, act, &d, &xh);
        a1 += d;
        a2 += d * xh;
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
      acc_t d, xh;
      dpre_xhat(static_cast<acc_t>(xp[i]), static_cast<acc_t>(gp[i]), sc, m, sh, rs, act, &d, &xh);
      a1 += d;
      a2 += d * xh;
    }
  }
  a1 = block_sum(a1);
  a2 = block_sum(a2);
  if (threadIdx.x == 0) {
    S1[p] = a1;
    S2[p] = a2;
  }
  const int64_t n = p / ep.s.C;
  if (last_block_of_sample(ep.s.counter, n, ep.s.blocks)) ep.run(n, mu, rstd, S1, S2);
}

template <typename scalar_t>
__global__ void row_sums_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, int64_t hw, int64_t C,
                                const at::opmath_type<scalar_t>* __restrict__ scale,
                                const at::opmath_type<scalar_t>* __restrict__ mu,
                                const at::opmath_type<scalar_t>* __restrict__ shift,
                                const at::opmath_type<scalar_t>* __restrict__ rstd, int64_t act,
                                at::opmath_type<scalar_t>* __restrict__ S1, at::opmath_type<scalar_t>* __restrict__ S2,
                                BackwardEpilogue<at::opmath_type<scalar_t>> ep) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t buf[kRowsPerBlock][32];
  const int64_t tiles = (C + 31) / 32;
  const int64_t n = blockIdx.x / tiles, c = (blockIdx.x % tiles) * 32 + threadIdx.x;
  const bool active = c < C;
  const int64_t k = n * C + (active ? c : 0);
  const acc_t sc = scale[k], m = mu[k], sh = shift[k], rs = rstd[k];
  acc_t a1 = 0, a2 = 0;
  if (active)
    for (int64_t r = threadIdx.y; r < hw; r += kRowsPerBlock) {
      const int64_t i = (n * hw + r) * C + c;
      acc_t d, xh;
      dpre_xhat(static_cast<acc_t>(x[i]), static_cast<acc_t>(dy[i]), sc, m, sh, rs, act, &d, &xh);
      a1 += d;
      a2 += d * xh;
    }
  a1 = column_sum(a1, buf);
  a2 = column_sum(a2, buf);
  if (threadIdx.y == 0 && active) {
    S1[k] = a1;
    S2[k] = a2;
  }
  if (last_block_of_sample(ep.s.counter, n, ep.s.blocks)) ep.run(n, mu, rstd, S1, S2);
}

// ---- element passes ---------------------------------------------------------------------------------

// The (n, c) coefficient index of flat element i, kept up to date along a pack.
struct ChannelCursor {
  int64_t k, pos;  // coefficient index n * C + c; position within the plane (NCHW) or channel (NHWC)
  __device__ ChannelCursor(int64_t i, int64_t hw, int64_t C, bool cl) {
    if (!cl) {
      k = i / hw;
      pos = i % hw;
    } else {
      const int64_t row = i / C;
      pos = i % C;
      k = (row / hw) * C + pos;
    }
  }
  __device__ void step(int64_t i_next, int64_t hw, int64_t C, bool cl) {
    if (!cl) {
      if (++pos == hw) {
        pos = 0;
        ++k;
      }
    } else if (++pos == C) {
      *this = ChannelCursor(i_next, hw, C, cl);
    } else {
      ++k;
    }
  }
};

template <typename scalar_t, bool kVec>
__global__ void apply_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t total, int64_t hw,
                             int64_t C, bool cl, const at::opmath_type<scalar_t>* __restrict__ scale,
                             const at::opmath_type<scalar_t>* __restrict__ mu,
                             const at::opmath_type<scalar_t>* __restrict__ shift, int64_t act) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = Vec<scalar_t>::size;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * V;
  for (int64_t i0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; i0 < total; i0 += stride) {
    const int64_t cnt = min(static_cast<int64_t>(V), total - i0);
    acc_t r[V];
    if (cnt == V) {
      load_run<scalar_t, kVec>(x, i0, r);
    } else {
      for (int v = 0; v < cnt; ++v) r[v] = static_cast<acc_t>(x[i0 + v]);
    }
    ChannelCursor cur(i0, hw, C, cl);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (v < cnt) r[v] = act_forward(scale[cur.k] * (r[v] - mu[cur.k]) + shift[cur.k], act);
      cur.step(i0 + v + 1, hw, C, cl);
    }
    if (cnt == V) {
      store_run<scalar_t, kVec>(y, i0, r);
    } else {
      for (int v = 0; v < cnt; ++v) y[i0 + v] = static_cast<scalar_t>(r[v]);
    }
  }
}

template <typename scalar_t, bool kVec>
__global__ void dx_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, scalar_t* __restrict__ dx,
                          int64_t total, int64_t hw, int64_t C, bool cl,
                          const at::opmath_type<scalar_t>* __restrict__ scale,
                          const at::opmath_type<scalar_t>* __restrict__ mu,
                          const at::opmath_type<scalar_t>* __restrict__ shift,
                          const at::opmath_type<scalar_t>* __restrict__ rstd,
                          const at::opmath_type<scalar_t>* __restrict__ c1,
                          const at::opmath_type<scalar_t>* __restrict__ c2,
                          const at::opmath_type<scalar_t>* __restrict__ c3, int64_t act) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = Vec<scalar_t>::size;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * V;
  for (int64_t i0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; i0 < total; i0 += stride) {
    const int64_t cnt = min(static_cast<int64_t>(V), total - i0);
    acc_t xv[V], gv[V];
    if (cnt == V) {
      load_run<scalar_t, kVec>(x, i0, xv);
      load_run<scalar_t, kVec>(dy, i0, gv);
    } else {
      for (int v = 0; v < cnt; ++v) {
        xv[v] = static_cast<acc_t>(x[i0 + v]);
        gv[v] = static_cast<acc_t>(dy[i0 + v]);
      }
    }
    ChannelCursor cur(i0, hw, C, cl);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (v < cnt) {
        const int64_t k = cur.k;
        acc_t d, xh;
        dpre_xhat(xv[v], gv[v], scale[k], mu[k], shift[k], rstd[k], act, &d, &xh);
        xv[v] = c1[k] * d + c2[k] * xh + c3[k];
      }
      cur.step(i0 + v + 1, hw, C, cl);
    }
    if (cnt == V) {
      store_run<scalar_t, kVec>(dx, i0, xv);
    } else {
      for (int v = 0; v < cnt; ++v) dx[i0 + v] = static_cast<scalar_t>(xv[v]);
    }
  }
}

// ---- host side ----------------------------------------------------------------------------------

struct Problem {
  at::Tensor x, gamma, alpha;
  c10::optional<at::Tensor> beta;
  at::Tensor table, labels;  // the lookup form when table is defined: K blocks of C columns per row
  int64_t K = 0;
  int64_t N, C, HW;
  bool cl;
  bool has_beta() const { return table.defined() ? K == 3 : beta.has_value(); }
};

Problem problem_of(const at::Tensor& x_in) {
  Problem p;
  p.x = dense_input(x_in);
  p.N = p.x.size(0);
  p.C = p.x.size(1);
  p.HW = p.x.size(2) * p.x.size(3);
  p.cl = use_channels_last(p.x);
  return p;
}

// Parameters stay as given (strided views are read in place); only a dtype other than the arithmetic
// one is converted (checked_param).
Problem make_problem(const char* op, const at::Tensor& x_in, const at::Tensor& gamma_in, const at::Tensor& alpha_in,
                     const c10::optional<at::Tensor>& beta_in, double eps, int64_t act) {
  check_norm_x(op, x_in, eps, act);
  Problem p = problem_of(x_in);
  p.gamma = checked_param(op, "gamma", gamma_in, x_in);
  p.alpha = checked_param(op, "alpha", alpha_in, x_in);
  if (beta_in.has_value() && beta_in->defined()) p.beta = checked_param(op, "beta", *beta_in, x_in);
  return p;
}

// The lookup form: the labels stay on the device, checked by the kernels as they read them.
Problem make_lookup_problem(const char* op, const at::Tensor& x_in, const at::Tensor& labels,
                            const at::Tensor& table, double eps, int64_t act) {
  check_norm_x(op, x_in, eps, act);
  const Lookup lookup = checked_lookup(op, labels, table, x_in);
  Problem p = problem_of(x_in);
  p.table = lookup.table;
  p.labels = lookup.labels;
  p.K = lookup.K;
  return p;
}

template <typename acc_t>
ParamView<acc_t> param_view(const Problem& p) {
  if (p.table.defined()) {
    const acc_t* base = p.table.data_ptr<acc_t>();
    const int64_t row = p.table.stride(0), col = p.table.stride(1);
    return {base, base + p.C * col, p.K == 3 ? base + 2 * p.C * col : nullptr, row, row, row, col, col, col,
            p.labels.data_ptr<int64_t>(), p.table.size(0)};
  }
  auto row = [](const at::Tensor& t) { return t.dim() == 2 ? t.stride(0) : int64_t(0); };
  auto col = [](const at::Tensor& t) { return t.stride(t.dim() - 1); };
  const at::Tensor* b = p.beta ? &*p.beta : nullptr;
  return {p.gamma.data_ptr<acc_t>(), p.alpha.data_ptr<acc_t>(), b ? b->data_ptr<acc_t>() : nullptr,
          row(p.gamma), row(p.alpha), b ? row(*b) : int64_t(0),
          col(p.gamma), col(p.alpha), b ? col(*b) : int64_t(0), nullptr, 0};
}

// Blocks per sample of the statistics and sums kernels: one per plane (NCHW), one per 32 channels (NHWC).
int64_t blocks_per_sample(const Problem& p) { return p.cl ? (p.C + 31) / 32 : p.C; }

template <typename acc_t>
SampleEpilogue<acc_t> sample_epilogue(const Problem& p, double eps, at::Tensor& counter) {
  return {param_view<acc_t>(p), p.C, eps, reinterpret_cast<unsigned int*>(counter.data_ptr<int32_t>()),
          blocks_per_sample(p)};
}

// mean, rstd, and (by each sample's last block) scale, shift.
template <typename scalar_t>
void launch_stats(const Problem& p, double eps, at::Tensor& mean, at::Tensor& rstd, at::Tensor& scale,
                  at::Tensor& shift, at::Tensor& counter) {
  using acc_t = at::opmath_type<scalar_t>;
  auto stream = at::cuda::getCurrentCUDAStream();
  const scalar_t* xp = p.x.data_ptr<scalar_t>();
  const SampleEpilogue<acc_t> ep = sample_epilogue<acc_t>(p, eps, counter);
  acc_t *mu = mean.data_ptr<acc_t>(), *rs = rstd.data_ptr<acc_t>();
  acc_t *sc = scale.data_ptr<acc_t>(), *sh = shift.data_ptr<acc_t>();
  const unsigned blocks = static_cast<unsigned>(p.N * blocks_per_sample(p));
  if (!p.cl) {
    if (aligned16(xp) && p.HW % Vec<scalar_t>::size == 0) {
      plane_stats_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(xp, p.HW, eps, mu, rs, ep, sc, sh);
    } else {
      plane_stats_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(xp, p.HW, eps, mu, rs, ep, sc, sh);
    }
  } else {
    row_stats_kernel<scalar_t><<<blocks, dim3(32, kRowsPerBlock), 0, stream>>>(xp, p.HW, p.C, eps, mu, rs, ep, sc, sh);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor sample_counter(const Problem& p) {
  return at::zeros({p.N}, p.x.options().dtype(at::kInt));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(const Problem& p, double eps, int64_t act) {
  const c10::cuda::CUDAGuard guard(p.x.device());
  const auto acc = p.x.options().dtype(acc_dtype(p.x.scalar_type()));
  at::Tensor y = at::empty_like(p.x);
  at::Tensor mean = at::empty({p.N, p.C}, acc), rstd = at::empty({p.N, p.C}, acc);
  at::Tensor scale = at::empty({p.N, p.C}, acc), shift = at::empty({p.N, p.C}, acc);
  at::Tensor counter = sample_counter(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.x.scalar_type(), "norm_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_stats<scalar_t>(p, eps, mean, rstd, scale, shift, counter);
    const scalar_t* xp = p.x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const int64_t total = p.x.numel();
    const unsigned grid = grid_for((total + Vec<scalar_t>::size - 1) / Vec<scalar_t>::size);
    auto stream = at::cuda::getCurrentCUDAStream();
    if (aligned16(xp) && aligned16(yp)) {
      apply_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(xp, yp, total, p.HW, p.C, p.cl, scale.data_ptr<acc_t>(),
                                                                  mean.data_ptr<acc_t>(), shift.data_ptr<acc_t>(), act);
    } else {
      apply_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(xp, yp, total, p.HW, p.C, p.cl, scale.data_ptr<acc_t>(),
                                                                   mean.data_ptr<acc_t>(), shift.data_ptr<acc_t>(), act);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor> run_backward(const char* op, const Problem& p, const at::Tensor& grad_y,
                                            const at::Tensor& x_in, const at::Tensor& mean_in,
                                            const at::Tensor& rstd_in, double eps, int64_t act) {
  check_float_tensor(op, "grad_y", grad_y);
  TORCH_CHECK(grad_y.sizes() == x_in.sizes(), op, ": grad_y must have x's shape ", x_in.sizes(), ", got ",
              grad_y.sizes());
  check_same_device(op, "grad_y", grad_y, "x", x_in);
  const auto acc_type = acc_dtype(x_in.scalar_type());
  for (const char* name : {"mean", "rstd"}) {
    const at::Tensor& t = name[0] == 'm' ? mean_in : rstd_in;
    check_float_tensor(op, name, t);
    TORCH_CHECK(t.dim() == 2 && t.size(0) == p.N && t.size(1) == p.C && t.scalar_type() == acc_type, op, ": ", name,
                " must be the forward's (N, C) = (", p.N, ", ", p.C, ") ", acc_type, " statistics, got ",
                t.scalar_type(), " ", t.sizes());
    check_same_device(op, name, t, "x", x_in);
  }
  const c10::cuda::CUDAGuard guard(p.x.device());
  const at::Tensor dy = grad_y.to(p.x.scalar_type())
                            .contiguous(p.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const auto acc = p.x.options().dtype(acc_type);
  auto nc = [&] { return at::empty({p.N, p.C}, acc); };
  at::Tensor scale = nc(), shift = nc(), S1 = nc(), S2 = nc(), c1 = nc(), c2 = nc(), c3 = nc();
  const int64_t K = p.has_beta() ? 3 : 2;
  at::Tensor dparams = at::empty({p.N, K, p.C}, acc);
  at::Tensor counter = sample_counter(p);
  at::Tensor dx = at::empty_like(p.x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.x.scalar_type(), "norm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto stream = at::cuda::getCurrentCUDAStream();
    auto A = [](at::Tensor& t) { return t.data_ptr<acc_t>(); };
    const acc_t* mu = mean.data_ptr<acc_t>();
    const acc_t* rs = rstd.data_ptr<acc_t>();
    const ParamView<acc_t> params = param_view<acc_t>(p);
    forward_coeffs_kernel<acc_t><<<static_cast<unsigned>(p.N), kThreads, 0, stream>>>(p.C, eps, mu, rs, params, A(scale),
                                                                                    A(shift));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const scalar_t* xp = p.x.data_ptr<scalar_t>();
    const scalar_t* gp = dy.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    const BackwardEpilogue<acc_t> ep{sample_epilogue<acc_t>(p, eps, counter), p.HW, A(c1), A(c2), A(c3), A(dparams), K};
    const unsigned blocks = static_cast<unsigned>(p.N * blocks_per_sample(p));
    if (!p.cl) {
      if (aligned16(xp) && aligned16(gp) && p.HW % Vec<scalar_t>::size == 0) {
        plane_sums_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(xp, gp, p.HW, A(scale), mu, A(shift), rs, act,
                                                                           A(S1), A(S2), ep);
      } else {
        plane_sums_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(xp, gp, p.HW, A(scale), mu, A(shift), rs,
                                                                            act, A(S1), A(S2), ep);
      }
    } else {
      row_sums_kernel<scalar_t><<<blocks, dim3(32, kRowsPerBlock), 0, stream>>>(xp, gp, p.HW, p.C, A(scale), mu,
                                                                                A(shift), rs, act, A(S1), A(S2), ep);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t total = p.x.numel();
    const unsigned grid = grid_for((total + Vec<scalar_t>::size - 1) / Vec<scalar_t>::size);
    if (aligned16(xp) && aligned16(gp) && aligned16(dxp)) {
      dx_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(xp, gp, dxp, total, p.HW, p.C, p.cl, A(scale), mu,
                                                               A(shift), rs, A(c1), A(c2), A(c3), act);
    } else {
      dx_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(xp, gp, dxp, total, p.HW, p.C, p.cl, A(scale), mu,
                                                                A(shift), rs, A(c1), A(c2), A(c3), act);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dx, dparams};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_forward_cuda(const at::Tensor& x, const at::Tensor& gamma,
                                                                 const at::Tensor& alpha,
                                                                 const c10::optional<at::Tensor>& beta, double eps,
                                                                 int64_t act) {
  return run_forward(make_problem("fastscore_ext::norm_forward", x, gamma, alpha, beta, eps, act), eps, act);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_forward_lookup_cuda(const at::Tensor& x, const at::Tensor& labels,
                                                                        const at::Tensor& table, double eps,
                                                                        int64_t act) {
  return run_forward(make_lookup_problem("fastscore_ext::norm_forward_lookup", x, labels, table, eps, act), eps, act);
}

std::tuple<at::Tensor, at::Tensor> norm_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                      const at::Tensor& gamma, const at::Tensor& alpha,
                                                      const c10::optional<at::Tensor>& beta, const at::Tensor& mean,
                                                      const at::Tensor& rstd, double eps, int64_t act) {
  constexpr const char* op = "fastscore_ext::norm_backward";
  return run_backward(op, make_problem(op, x, gamma, alpha, beta, eps, act), grad_y, x, mean, rstd, eps, act);
}

std::tuple<at::Tensor, at::Tensor> norm_backward_lookup_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                             const at::Tensor& labels, const at::Tensor& table,
                                                             const at::Tensor& mean, const at::Tensor& rstd,
                                                             double eps, int64_t act) {
  constexpr const char* op = "fastscore_ext::norm_backward_lookup";
  return run_backward(op, make_lookup_problem(op, x, labels, table, eps, act), grad_y, x, mean, rstd, eps, act);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastscore_ext, CUDA, m) {
  m.impl("norm_forward", &norm_forward_cuda);
  m.impl("norm_backward", &norm_backward_cuda);
  m.impl("norm_forward_lookup", &norm_forward_lookup_cuda);
  m.impl("norm_backward_lookup", &norm_backward_lookup_cuda);
}

}  // namespace cuda
}  // namespace fastscore
