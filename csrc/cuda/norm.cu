// CUDA kernels of norm_forward and norm_backward (CondInstanceNorm++), NCHW and channels_last.
//
// forward:  stats (one block per NCHW plane, or per (n, 32 channels) for channels_last)
//           -> coeffs (one thread per sample, ../norm_math.h) -> apply (16-byte packs over all of x)
// backward: coeffs -> plane sums S1, S2 (same blocking as stats) -> backward coeffs -> dx (packs)
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
  if (act == kActRelu) return v > acc_t(0) ? v : acc_t(0);
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

// ---- statistics and plane sums -----------------------------------------------------------------

// One block per NCHW plane: mean, then the biased variance about it (the plane is re-read from cache).
template <typename scalar_t, bool kVec>
__global__ void plane_stats_kernel(const scalar_t* x, int64_t hw, double eps, at::opmath_type<scalar_t>* mu,
                                   at::opmath_type<scalar_t>* rstd) {
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
__global__ void row_stats_kernel(const scalar_t* x, int64_t hw, int64_t C, double eps, at::opmath_type<scalar_t>* mu,
                                 at::opmath_type<scalar_t>* rstd) {
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
}

// dpre and xhat of one element, given its channel's coefficients.
template <typename acc_t>
__device__ __forceinline__ void dpre_xhat(acc_t x, acc_t dy, acc_t scale, acc_t mu, acc_t shift, acc_t rstd, int64_t act,
                                          acc_t* dpre, acc_t* xhat) {
  const acc_t xc = x - mu;
  *xhat = xc * rstd;
  *dpre = act == kActNone ? dy : dy * act_grad(scale * xc + shift, act);
}

template <typename scalar_t, bool kVec>
__global__ void plane_sums_kernel(const scalar_t* x, const scalar_t* dy, int64_t hw, const at::opmath_type<scalar_t>* scale,
                                  const at::opmath_type<scalar_t>* mu, const at::opmath_type<scalar_t>* shift,
                                  const at::opmath_type<scalar_t>* rstd, int64_t act, at::opmath_type<scalar_t>* S1,
                                  at::opmath_type<scalar_t>* S2) {
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
}

template <typename scalar_t>
__global__ void row_sums_kernel(const scalar_t* x, const scalar_t* dy, int64_t hw, int64_t C,
                                const at::opmath_type<scalar_t>* scale, const at::opmath_type<scalar_t>* mu,
                                const at::opmath_type<scalar_t>* shift, const at::opmath_type<scalar_t>* rstd,
                                int64_t act, at::opmath_type<scalar_t>* S1, at::opmath_type<scalar_t>* S2) {
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
}

// ---- per-sample coefficients (one thread per sample) -----------------------------------------------

template <typename acc_t>
__device__ __forceinline__ SampleParams<acc_t> params_of(const acc_t* g, const acc_t* a, const acc_t* b, bool per_sample,
                                                         int64_t n, int64_t C) {
  const int64_t o = per_sample ? n * C : 0;
  return {g + o, a + o, b ? b + o : nullptr};
}

template <typename acc_t>
__global__ void forward_coeffs_kernel(int64_t N, int64_t C, double eps, const acc_t* mu, const acc_t* rstd,
                                      const acc_t* g, const acc_t* a, const acc_t* b, bool per_sample, acc_t* scale,
                                      acc_t* shift) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  forward_coeffs(mu + n * C, rstd + n * C, C, eps, params_of(g, a, b, per_sample, n, C), scale + n * C, shift + n * C);
}

template <typename acc_t>
__global__ void backward_coeffs_kernel(int64_t N, int64_t C, int64_t hw, double eps, const acc_t* mu, const acc_t* rstd,
                                       const acc_t* S1, const acc_t* S2, const acc_t* g, const acc_t* a, const acc_t* b,
                                       bool per_sample, acc_t* dg, acc_t* da, acc_t* db, acc_t* c1, acc_t* c2,
                                       acc_t* c3) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int64_t o = n * C;
  backward_coeffs(mu + o, rstd + o, S1 + o, S2 + o, C, hw, eps, params_of(g, a, b, per_sample, n, C), dg + o, da + o,
                  db ? db + o : nullptr, c1 + o, c2 + o, c3 + o);
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
__global__ void apply_kernel(const scalar_t* x, scalar_t* y, int64_t total, int64_t hw, int64_t C, bool cl,
                             const at::opmath_type<scalar_t>* scale, const at::opmath_type<scalar_t>* mu,
                             const at::opmath_type<scalar_t>* shift, int64_t act) {
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
__global__ void dx_kernel(const scalar_t* x, const scalar_t* dy, scalar_t* dx, int64_t total, int64_t hw, int64_t C,
                          bool cl, const at::opmath_type<scalar_t>* scale, const at::opmath_type<scalar_t>* mu,
                          const at::opmath_type<scalar_t>* shift, const at::opmath_type<scalar_t>* rstd,
                          const at::opmath_type<scalar_t>* c1, const at::opmath_type<scalar_t>* c2,
                          const at::opmath_type<scalar_t>* c3, int64_t act) {
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
  int64_t N, C, HW;
  bool cl;
};

Problem make_problem(const char* op, const at::Tensor& x_in, const at::Tensor& gamma_in, const at::Tensor& alpha_in,
                     const c10::optional<at::Tensor>& beta_in, double eps, int64_t act) {
  check_norm_x(op, x_in, eps, act);
  Problem p;
  p.gamma = checked_param(op, "gamma", gamma_in, x_in);
  p.alpha = checked_param(op, "alpha", alpha_in, x_in);
  if (beta_in.has_value() && beta_in->defined()) p.beta = checked_param(op, "beta", *beta_in, x_in);
  // The kernels index all three parameters alike: if they mix (N, C) and (C,), expand to (N, C) (tiny).
  const bool any_per_sample = p.gamma.dim() == 2 || p.alpha.dim() == 2 || (p.beta && p.beta->dim() == 2);
  if (any_per_sample) {
    const int64_t n = x_in.size(0), c = x_in.size(1);
    p.gamma = p.gamma.expand({n, c}).contiguous();
    p.alpha = p.alpha.expand({n, c}).contiguous();
    if (p.beta) p.beta = p.beta->expand({n, c}).contiguous();
  }
  p.x = dense_input(x_in);
  p.N = p.x.size(0);
  p.C = p.x.size(1);
  p.HW = p.x.size(2) * p.x.size(3);
  p.cl = use_channels_last(p.x);
  return p;
}

template <typename scalar_t>
void launch_stats(const Problem& p, double eps, at::Tensor& mean, at::Tensor& rstd) {
  using acc_t = at::opmath_type<scalar_t>;
  auto stream = at::cuda::getCurrentCUDAStream();
  const scalar_t* xp = p.x.data_ptr<scalar_t>();
  if (!p.cl) {
    const bool vec = aligned16(xp) && p.HW % Vec<scalar_t>::size == 0;
    const unsigned blocks = static_cast<unsigned>(p.N * p.C);
    if (vec) {
      plane_stats_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(xp, p.HW, eps, mean.data_ptr<acc_t>(),
                                                                          rstd.data_ptr<acc_t>());
    } else {
      plane_stats_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(xp, p.HW, eps, mean.data_ptr<acc_t>(),
                                                                           rstd.data_ptr<acc_t>());
    }
  } else {
    const unsigned blocks = static_cast<unsigned>(p.N * ((p.C + 31) / 32));
    row_stats_kernel<scalar_t><<<blocks, dim3(32, kRowsPerBlock), 0, stream>>>(xp, p.HW, p.C, eps, mean.data_ptr<acc_t>(),
                                                                               rstd.data_ptr<acc_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
void launch_forward_coeffs(const Problem& p, double eps, const at::Tensor& mean, const at::Tensor& rstd,
                           at::Tensor& scale, at::Tensor& shift) {
  forward_coeffs_kernel<acc_t><<<grid_for(p.N, 128), 128, 0, at::cuda::getCurrentCUDAStream()>>>(
      p.N, p.C, eps, mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>(), p.gamma.data_ptr<acc_t>(),
      p.alpha.data_ptr<acc_t>(), p.beta ? p.beta->data_ptr<acc_t>() : nullptr, p.gamma.dim() == 2,
      scale.data_ptr<acc_t>(), shift.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_forward_cuda(const at::Tensor& x_in, const at::Tensor& gamma_in,
                                                                 const at::Tensor& alpha_in,
                                                                 const c10::optional<at::Tensor>& beta_in, double eps,
                                                                 int64_t act) {
  const Problem p = make_problem("fastscore_ext::norm_forward", x_in, gamma_in, alpha_in, beta_in, eps, act);
  const c10::cuda::CUDAGuard guard(p.x.device());
  const auto acc = p.x.options().dtype(acc_dtype(p.x.scalar_type()));
  at::Tensor y = at::empty_like(p.x);
  at::Tensor mean = at::empty({p.N, p.C}, acc), rstd = at::empty({p.N, p.C}, acc);
  at::Tensor scale = at::empty({p.N, p.C}, acc), shift = at::empty({p.N, p.C}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.x.scalar_type(), "norm_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_stats<scalar_t>(p, eps, mean, rstd);
    launch_forward_coeffs<acc_t>(p, eps, mean, rstd, scale, shift);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& gamma_in, const at::Tensor& alpha_in,
    const c10::optional<at::Tensor>& beta_in, const at::Tensor& mean_in, const at::Tensor& rstd_in, double eps,
    int64_t act) {
  constexpr const char* op = "fastscore_ext::norm_backward";
  const Problem p = make_problem(op, x_in, gamma_in, alpha_in, beta_in, eps, act);
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
  at::Tensor dgamma = nc(), dalpha = nc();
  at::Tensor dbeta = p.beta ? nc() : at::empty({0}, acc);
  at::Tensor dx = at::empty_like(p.x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.x.scalar_type(), "norm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto stream = at::cuda::getCurrentCUDAStream();
    launch_forward_coeffs<acc_t>(p, eps, mean, rstd, scale, shift);
    const scalar_t* xp = p.x.data_ptr<scalar_t>();
    const scalar_t* gp = dy.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    auto A = [](at::Tensor& t) { return t.data_ptr<acc_t>(); };
    const acc_t* mu = mean.data_ptr<acc_t>();
    const acc_t* rs = rstd.data_ptr<acc_t>();
    if (!p.cl) {
      const unsigned blocks = static_cast<unsigned>(p.N * p.C);
      if (aligned16(xp) && aligned16(gp) && p.HW % Vec<scalar_t>::size == 0) {
        plane_sums_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(xp, gp, p.HW, A(scale), mu, A(shift), rs, act,
                                                                           A(S1), A(S2));
      } else {
        plane_sums_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(xp, gp, p.HW, A(scale), mu, A(shift), rs,
                                                                            act, A(S1), A(S2));
      }
    } else {
      const unsigned blocks = static_cast<unsigned>(p.N * ((p.C + 31) / 32));
      row_sums_kernel<scalar_t><<<blocks, dim3(32, kRowsPerBlock), 0, stream>>>(xp, gp, p.HW, p.C, A(scale), mu,
                                                                                A(shift), rs, act, A(S1), A(S2));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_coeffs_kernel<acc_t><<<grid_for(p.N, 128), 128, 0, stream>>>(
        p.N, p.C, p.HW, eps, mu, rs, A(S1), A(S2), p.gamma.data_ptr<acc_t>(), p.alpha.data_ptr<acc_t>(),
        p.beta ? p.beta->data_ptr<acc_t>() : nullptr, p.gamma.dim() == 2, A(dgamma), A(dalpha),
        p.beta ? A(dbeta) : nullptr, A(c1), A(c2), A(c3));
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
  return {dx, dgamma, dalpha, dbeta};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastscore_ext, CUDA, m) {
  m.impl("norm_forward", &norm_forward_cuda);
  m.impl("norm_backward", &norm_backward_cuda);
}

}  // namespace cuda
}  // namespace fastscore
