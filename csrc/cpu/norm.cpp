// CPU kernels of cond_instance_norm_plus, forward and backward, for NCHW and channels_last x.
//
// Three passes each way (DESIGN.md section 2; the per-sample algebra is in ../norm_math.h):
//   forward:  plane statistics (mu, rstd)  ->  per-sample coefficients  ->  y = act(scale (x - mu) + shift)
//   backward: plane sums S1, S2 of dpre     ->  per-sample coefficients  ->  dx = c1 dpre + c2 xhat + c3
// NCHW walks one (n, c) plane at a time; channels_last walks rows of C channels, keeping per-channel
// accumulators. All arithmetic is in acc_t (float32, or float64 for float64 storage); plane sums are
// carried in float within a block of rows and in double across blocks, so long planes stay accurate.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../norm_math.h"
#include "vec_math.h"

namespace fastscore {
namespace cpu {
namespace {

constexpr int64_t kSumBlock = 256;     // elements (NCHW) or rows (NHWC) summed in acc_t before going to double
constexpr int64_t kChannelBlock = 64;  // channels per channels_last statistics task

template <typename param_t>
SampleParams<param_t> sample_params(const at::Tensor& g, const at::Tensor& a, const c10::optional<at::Tensor>& b,
                                    int64_t n, int64_t C) {
  auto row = [&](const at::Tensor& t) { return t.data_ptr<param_t>() + (t.dim() == 2 ? n * C : 0); };
  return {row(g), row(a), b.has_value() ? row(*b) : nullptr};
}

// ---- statistics -------------------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
void plane_stats(const scalar_t* x, int64_t len, double eps, acc_t* mu, acc_t* rstd) {
  double total = 0;
  for (int64_t b = 0; b < len; b += kSumBlock) {
    const int64_t n = std::min(kSumBlock, len - b);
    acc_t s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += static_cast<acc_t>(x[b + i]);
    total += s;
  }
  const acc_t mean = static_cast<acc_t>(total / static_cast<double>(len));
  double sq_total = 0;
  for (int64_t b = 0; b < len; b += kSumBlock) {
    const int64_t n = std::min(kSumBlock, len - b);
    acc_t s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) {
      const acc_t d = static_cast<acc_t>(x[b + i]) - mean;
      s += d * d;
    }
    sq_total += s;
  }
  *mu = mean;
  *rstd = static_cast<acc_t>(1.0 / std::sqrt(sq_total / static_cast<double>(len) + eps));
}

// Channels [c0, c0 + cn) of one channels_last sample (hw rows of C values).
template <typename scalar_t, typename acc_t>
void row_stats(const scalar_t* x, int64_t hw, int64_t C, int64_t c0, int64_t cn, double eps, acc_t* mu, acc_t* rstd) {
  double total[kChannelBlock] = {0};
  acc_t part[kChannelBlock];
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t c = 0; c < cn; ++c) total[c] = 0;
    for (int64_t r0 = 0; r0 < hw; r0 += kSumBlock) {
      std::fill(part, part + cn, acc_t(0));
      const int64_t r1 = std::min(hw, r0 + kSumBlock);
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = x + r * C + c0;
        if (pass == 0) {
#pragma omp simd
          for (int64_t c = 0; c < cn; ++c) part[c] += static_cast<acc_t>(row[c]);
        } else {
#pragma omp simd
          for (int64_t c = 0; c < cn; ++c) {
            const acc_t d = static_cast<acc_t>(row[c]) - mu[c];
            part[c] += d * d;
          }
        }
      }
      for (int64_t c = 0; c < cn; ++c) total[c] += part[c];
    }
    for (int64_t c = 0; c < cn; ++c) {
      if (pass == 0) {
        mu[c] = static_cast<acc_t>(total[c] / static_cast<double>(hw));
      } else {
        rstd[c] = static_cast<acc_t>(1.0 / std::sqrt(total[c] / static_cast<double>(hw) + eps));
      }
    }
  }
}

// ---- element passes ---------------------------------------------------------------------------
// kPerElem: coefficients vary along the run (channels_last rows) or are one value (NCHW planes).

template <bool kPerElem, typename scalar_t, typename acc_t>
void forward_run(const scalar_t* x, scalar_t* y, int64_t len, const acc_t* scale, const acc_t* mu,
                 const acc_t* shift, int64_t act) {
  alignas(64) acc_t buf[kChunk];
  for (int64_t b = 0; b < len; b += kChunk) {
    const int64_t n = std::min(kChunk, len - b);
    const int64_t o = kPerElem ? b : 0;
    const acc_t* sc = scale + o;
    const acc_t* m = mu + o;
    const acc_t* sh = shift + o;
    if (act != kActElu) {  // no transcendental: one pass straight into y
      const bool relu = act == kActRelu;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const int64_t k = kPerElem ? i : 0;
        const acc_t pre = sc[k] * (static_cast<acc_t>(x[b + i]) - m[k]) + sh[k];
        y[b + i] = static_cast<scalar_t>(relu && !(pre > acc_t(0)) ? acc_t(0) : pre);
      }
      continue;
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const int64_t k = kPerElem ? i : 0;
      buf[i] = sc[k] * (static_cast<acc_t>(x[b + i]) - m[k]) + sh[k];
    }
    activation_inplace(buf, n, act);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[b + i] = static_cast<scalar_t>(buf[i]);
  }
}

// dpre = dy * act'(pre) and xhat = (x - mu) * rstd over one chunk.
template <bool kPerElem, typename scalar_t, typename acc_t>
inline void dpre_chunk(const scalar_t* x, const scalar_t* dy, int64_t n, const acc_t* scale, const acc_t* mu,
                       const acc_t* shift, const acc_t* rstd, int64_t act, acc_t* dpre, acc_t* xhat) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = kPerElem ? i : 0;
    const acc_t xc = static_cast<acc_t>(x[i]) - mu[k];
    xhat[i] = xc * rstd[k];
    dpre[i] = scale[k] * xc + shift[k];
  }
  if (act == kActNone) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dpre[i] = static_cast<acc_t>(dy[i]);
    return;
  }
  activation_grad_inplace(dpre, n, act);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dpre[i] *= static_cast<acc_t>(dy[i]);
}

// NCHW plane: S1 = sum dpre, S2 = sum dpre * xhat.
// keep_dpre, if given, receives dpre for the dx pass (so the activation's derivative is computed once).
template <typename scalar_t, typename acc_t>
void plane_backward_sums(const scalar_t* x, const scalar_t* dy, int64_t len, acc_t scale, acc_t mu, acc_t shift,
                         acc_t rstd, int64_t act, acc_t* S1, acc_t* S2, acc_t* keep_dpre = nullptr) {
  alignas(64) acc_t chunk_dpre[kChunk], xhat[kChunk];
  double t1 = 0, t2 = 0;
  for (int64_t b = 0; b < len; b += kChunk) {
    const int64_t n = std::min(kChunk, len - b);
    acc_t* dpre = keep_dpre ? keep_dpre + b : chunk_dpre;
    dpre_chunk<false>(x + b, dy + b, n, &scale, &mu, &shift, &rstd, act, dpre, xhat);
    for (int64_t s0 = 0; s0 < n; s0 += kSumBlock) {
      const int64_t s1 = std::min(n, s0 + kSumBlock);
      acc_t a1 = 0, a2 = 0;
#pragma omp simd reduction(+ : a1, a2)
      for (int64_t i = s0; i < s1; ++i) {
        a1 += dpre[i];
        a2 += dpre[i] * xhat[i];
      }
      t1 += a1;
      t2 += a2;
    }
  }
  *S1 = static_cast<acc_t>(t1);
  *S2 = static_cast<acc_t>(t2);
}

// Channels [c0, c0 + cn) of one channels_last sample.
template <typename scalar_t, typename acc_t>
void row_backward_sums(const scalar_t* x, const scalar_t* dy, int64_t hw, int64_t C, int64_t c0, int64_t cn,
                       const acc_t* scale, const acc_t* mu, const acc_t* shift, const acc_t* rstd, int64_t act,
                       acc_t* S1, acc_t* S2) {
  alignas(64) acc_t dpre[kChannelBlock], xhat[kChannelBlock], p1[kChannelBlock], p2[kChannelBlock];
  double t1[kChannelBlock] = {0}, t2[kChannelBlock] = {0};
  for (int64_t r0 = 0; r0 < hw; r0 += kSumBlock) {
    std::fill(p1, p1 + cn, acc_t(0));
    std::fill(p2, p2 + cn, acc_t(0));
    const int64_t r1 = std::min(hw, r0 + kSumBlock);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * C + c0;
      dpre_chunk<true>(x + base, dy + base, cn, scale, mu, shift, rstd, act, dpre, xhat);
#pragma omp simd
      for (int64_t c = 0; c < cn; ++c) {
        p1[c] += dpre[c];
        p2[c] += dpre[c] * xhat[c];
      }
    }
    for (int64_t c = 0; c < cn; ++c) {
      t1[c] += p1[c];
      t2[c] += p2[c];
    }
  }
  for (int64_t c = 0; c < cn; ++c) {
    S1[c] = static_cast<acc_t>(t1[c]);
    S2[c] = static_cast<acc_t>(t2[c]);
  }
}

// NCHW plane: dx = c1 dpre + c2 xhat + c3 from a dpre kept by plane_backward_sums.
template <typename scalar_t, typename acc_t>
void plane_dx_from_dpre(const scalar_t* x, const acc_t* dpre, scalar_t* dx, int64_t len, acc_t mu, acc_t rstd, acc_t c1,
                        acc_t c2, acc_t c3) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i)
    dx[i] = static_cast<scalar_t>(c1 * dpre[i] + c2 * ((static_cast<acc_t>(x[i]) - mu) * rstd) + c3);
}

template <bool kPerElem, typename scalar_t, typename acc_t>
void dx_run(const scalar_t* x, const scalar_t* dy, scalar_t* dx, int64_t len, const acc_t* scale, const acc_t* mu,
            const acc_t* shift, const acc_t* rstd, const acc_t* c1, const acc_t* c2, const acc_t* c3, int64_t act) {
  alignas(64) acc_t dpre[kChunk], xhat[kChunk];
  for (int64_t b = 0; b < len; b += kChunk) {
    const int64_t n = std::min(kChunk, len - b);
    const int64_t o = kPerElem ? b : 0;
    dpre_chunk<kPerElem>(x + b, dy + b, n, scale + o, mu + o, shift + o, rstd + o, act, dpre, xhat);
    const acc_t* k1 = c1 + o;
    const acc_t* k2 = c2 + o;
    const acc_t* k3 = c3 + o;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const int64_t k = kPerElem ? i : 0;
      dx[b + i] = static_cast<scalar_t>(k1[k] * dpre[i] + k2[k] * xhat[i] + k3[k]);
    }
  }
}

// ---- ops ----------------------------------------------------------------------------------------

struct Shape {
  int64_t N, C, HW;
  bool channels_last;
};

Shape shape_of(const at::Tensor& x) {
  return {x.size(0), x.size(1), x.size(2) * x.size(3), use_channels_last(x)};
}

// NCHW with at least one sample per thread and a sample small enough for L2 (x and dy in the backward):
// one task per sample does every pass of that sample, so x is read from DRAM once, not twice.
constexpr int64_t kFuseBytes = int64_t(1) << 20;

bool fuse_per_sample(const Shape& s, size_t bytes_per_sample_element) {
  return !s.channels_last && s.N >= at::get_num_threads() &&
         s.C * s.HW * static_cast<int64_t>(bytes_per_sample_element) <= kFuseBytes;
}

// mean and rstd (N, C) of every plane.
template <typename scalar_t, typename acc_t>
void compute_stats(const scalar_t* x, const Shape& s, double eps, acc_t* mu, acc_t* rstd) {
  if (!s.channels_last) {
    at::parallel_for(0, s.N * s.C, 1 + 16384 / s.HW, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) plane_stats(x + p * s.HW, s.HW, eps, mu + p, rstd + p);
    });
    return;
  }
  const int64_t blocks = (s.C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, s.N * blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / blocks, c0 = (t % blocks) * kChannelBlock, cn = std::min(kChannelBlock, s.C - c0);
      row_stats(x + n * s.HW * s.C, s.HW, s.C, c0, cn, eps, mu + n * s.C + c0, rstd + n * s.C + c0);
    }
  });
}

template <typename acc_t>
void compute_forward_coeffs(const Shape& s, double eps, const acc_t* mu, const acc_t* rstd, const at::Tensor& g,
                            const at::Tensor& a, const c10::optional<at::Tensor>& b, acc_t* scale, acc_t* shift) {
  at::parallel_for(0, s.N, 16, [&](int64_t nb, int64_t ne) {
    for (int64_t n = nb; n < ne; ++n) {
      forward_coeffs(mu + n * s.C, rstd + n * s.C, s.C, eps, sample_params<acc_t>(g, a, b, n, s.C), scale + n * s.C,
                     shift + n * s.C);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_forward_cpu(const at::Tensor& x_in, const at::Tensor& gamma_in,
                                                                const at::Tensor& alpha_in,
                                                                const c10::optional<at::Tensor>& beta_in, double eps,
                                                                int64_t act) {
  constexpr const char* op = "fastscore::cond_instance_norm_plus";
  check_norm_x(op, x_in, eps, act);
  const at::Tensor gamma = checked_param(op, "gamma", gamma_in, x_in);
  const at::Tensor alpha = checked_param(op, "alpha", alpha_in, x_in);
  c10::optional<at::Tensor> beta;
  if (beta_in.has_value() && beta_in->defined()) beta = checked_param(op, "beta", *beta_in, x_in);
  const at::Tensor x = dense_input(x_in);
  const Shape s = shape_of(x);
  const auto acc = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({s.N, s.C}, acc), rstd = at::empty({s.N, s.C}, acc);
  at::Tensor scale = at::empty({s.N, s.C}, acc), shift = at::empty({s.N, s.C}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "norm_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    acc_t *mu = mean.data_ptr<acc_t>(), *rs = rstd.data_ptr<acc_t>();
    acc_t *sc = scale.data_ptr<acc_t>(), *sh = shift.data_ptr<acc_t>();
    if (fuse_per_sample(s, sizeof(scalar_t))) {
      // One sample per task: its planes' statistics, its coefficients, then y while x is still in L2.
      at::parallel_for(0, s.N, 1, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) {
          const int64_t o = n * s.C;
          for (int64_t p = o; p < o + s.C; ++p) plane_stats(xp + p * s.HW, s.HW, eps, mu + p, rs + p);
          forward_coeffs(mu + o, rs + o, s.C, eps, sample_params<acc_t>(gamma, alpha, beta, n, s.C), sc + o, sh + o);
          for (int64_t p = o; p < o + s.C; ++p)
            forward_run<false>(xp + p * s.HW, yp + p * s.HW, s.HW, sc + p, mu + p, sh + p, act);
        }
      });
      return;
    }
    compute_stats(xp, s, eps, mu, rs);
    compute_forward_coeffs(s, eps, mu, rs, gamma, alpha, beta, sc, sh);
    if (!s.channels_last) {
      at::parallel_for(0, s.N * s.C, 1 + 16384 / s.HW, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p)
          forward_run<false>(xp + p * s.HW, yp + p * s.HW, s.HW, sc + p, mu + p, sh + p, act);
      });
    } else {
      at::parallel_for(0, s.N * s.HW, 1 + 16384 / s.C, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t n = r / s.HW;
          forward_run<true>(xp + r * s.C, yp + r * s.C, s.C, sc + n * s.C, mu + n * s.C, sh + n * s.C, act);
        }
      });
    }
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& gamma_in, const at::Tensor& alpha_in,
    const c10::optional<at::Tensor>& beta_in, const at::Tensor& mean_in, const at::Tensor& rstd_in, double eps,
    int64_t act) {
  constexpr const char* op = "fastscore::cond_instance_norm_plus_backward";
  check_norm_x(op, x_in, eps, act);
  check_float_tensor(op, "grad_y", grad_y);
  TORCH_CHECK(grad_y.sizes() == x_in.sizes(), op, ": grad_y must have x's shape ", x_in.sizes(), ", got ",
              grad_y.sizes());
  check_same_device(op, "grad_y", grad_y, "x", x_in);
  const at::Tensor gamma = checked_param(op, "gamma", gamma_in, x_in);
  const at::Tensor alpha = checked_param(op, "alpha", alpha_in, x_in);
  c10::optional<at::Tensor> beta;
  if (beta_in.has_value() && beta_in->defined()) beta = checked_param(op, "beta", *beta_in, x_in);
  const int64_t N = x_in.size(0), C = x_in.size(1);
  const auto acc_type = acc_dtype(x_in.scalar_type());
  auto check_stat = [&](const char* name, const at::Tensor& t) {
    check_float_tensor(op, name, t);
    TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.size(1) == C && t.scalar_type() == acc_type, op, ": ", name,
                " must be the forward's (N, C) = (", N, ", ", C, ") ", acc_type, " statistics, got ", t.scalar_type(),
                " ", t.sizes());
    check_same_device(op, name, t, "x", x_in);
  };
  check_stat("mean", mean_in);
  check_stat("rstd", rstd_in);
  const at::Tensor x = dense_input(x_in);
  const Shape s = shape_of(x);
  const at::Tensor dy = grad_y.to(x.scalar_type())
                            .contiguous(s.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const auto acc = x.options().dtype(acc_type);
  at::Tensor dx = at::empty_like(x);
  auto nc = [&] { return at::empty({N, C}, acc); };
  at::Tensor scale = nc(), shift = nc(), S1 = nc(), S2 = nc(), c1 = nc(), c2 = nc(), c3 = nc();
  at::Tensor dgamma = nc(), dalpha = nc(), dbeta = nc();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "norm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    const acc_t *mu = mean.data_ptr<acc_t>(), *rs = rstd.data_ptr<acc_t>();
    acc_t *sc = scale.data_ptr<acc_t>(), *sh = shift.data_ptr<acc_t>();
    acc_t *s1 = S1.data_ptr<acc_t>(), *s2 = S2.data_ptr<acc_t>();
    acc_t *k1 = c1.data_ptr<acc_t>(), *k2 = c2.data_ptr<acc_t>(), *k3 = c3.data_ptr<acc_t>();
    acc_t *dg = dgamma.data_ptr<acc_t>(), *da = dalpha.data_ptr<acc_t>(), *db = dbeta.data_ptr<acc_t>();
    if (fuse_per_sample(s, 2 * sizeof(scalar_t))) {
      // One sample per task, every pass, while its x and dy are in L2.
      at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
        std::vector<acc_t> dpre(static_cast<size_t>(C * s.HW));  // this sample's dpre, reused by the dx pass
        for (int64_t n = b; n < e; ++n) {
          const int64_t o = n * C;
          const auto params = sample_params<acc_t>(gamma, alpha, beta, n, C);
          forward_coeffs(mu + o, rs + o, C, eps, params, sc + o, sh + o);
          for (int64_t p = o; p < o + C; ++p)
            plane_backward_sums(xp + p * s.HW, dyp + p * s.HW, s.HW, sc[p], mu[p], sh[p], rs[p], act, s1 + p, s2 + p,
                                dpre.data() + (p - o) * s.HW);
          backward_coeffs(mu + o, rs + o, s1 + o, s2 + o, C, s.HW, eps, params, dg + o, da + o, db + o, k1 + o, k2 + o,
                          k3 + o);
          for (int64_t p = o; p < o + C; ++p)
            plane_dx_from_dpre(xp + p * s.HW, dpre.data() + (p - o) * s.HW, dxp + p * s.HW, s.HW, mu[p], rs[p], k1[p],
                               k2[p], k3[p]);
        }
      });
      return;
    }
    compute_forward_coeffs(s, eps, mu, rs, gamma, alpha, beta, sc, sh);
    if (!s.channels_last) {
      at::parallel_for(0, N * C, 1 + 16384 / s.HW, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p)
          plane_backward_sums(xp + p * s.HW, dyp + p * s.HW, s.HW, sc[p], mu[p], sh[p], rs[p], act, s1 + p, s2 + p);
      });
    } else {
      const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
      at::parallel_for(0, N * blocks, 1, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
          const int64_t n = t / blocks, c0 = (t % blocks) * kChannelBlock, cn = std::min(kChannelBlock, C - c0);
          const int64_t o = n * C + c0;
          row_backward_sums(xp + n * s.HW * C, dyp + n * s.HW * C, s.HW, C, c0, cn, sc + o, mu + o, sh + o, rs + o, act,
                            s1 + o, s2 + o);
        }
      });
    }
    at::parallel_for(0, N, 16, [&](int64_t nb, int64_t ne) {
      for (int64_t n = nb; n < ne; ++n) {
        const int64_t o = n * C;
        backward_coeffs(mu + o, rs + o, s1 + o, s2 + o, C, s.HW, eps, sample_params<acc_t>(gamma, alpha, beta, n, C),
                        dg + o, da + o, db + o, k1 + o, k2 + o, k3 + o);
      }
    });
    if (!s.channels_last) {
      at::parallel_for(0, N * C, 1 + 16384 / s.HW, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p)
          dx_run<false>(xp + p * s.HW, dyp + p * s.HW, dxp + p * s.HW, s.HW, sc + p, mu + p, sh + p, rs + p, k1 + p,
                        k2 + p, k3 + p, act);
      });
    } else {
      at::parallel_for(0, N * s.HW, 1 + 16384 / C, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t o = (r / s.HW) * C;
          dx_run<true>(xp + r * C, dyp + r * C, dxp + r * C, C, sc + o, mu + o, sh + o, rs + o, k1 + o, k2 + o, k3 + o,
                       act);
        }
      });
    }
  });
  // Per-sample parameter grads, summed over N for shared (C,) parameters, in each parameter's dtype.
  auto reduce = [](const at::Tensor& g, const at::Tensor& like) {
    return (like.dim() == 1 ? g.sum(0) : g).to(like.scalar_type());
  };
  at::Tensor dbeta_out = beta_in.has_value() && beta_in->defined() ? reduce(dbeta, *beta_in) : reduce(dbeta, gamma_in);
  return {dx, reduce(dgamma, gamma_in), reduce(dalpha, alpha_in), dbeta_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastscore, CPU, m) {
  m.impl("cond_instance_norm_plus", &norm_forward_cpu);
  m.impl("cond_instance_norm_plus_backward", &norm_backward_cpu);
}

}  // namespace cpu
}  // namespace fastscore
