// CPU kernels of cond_instance_norm_plus, forward and backward, for NCHW and channels_last x.
//
// Three passes each way (DESIGN.md section 2; the per-sample algebra is in ../norm_math.h):
//   forward:  plane statistics (mu, rstd)  ->  per-sample coefficients  ->  y = act(scale (x - mu) + shift)
//   backward: plane sums S1, S2 of dpre     ->  per-sample coefficients  ->  dx = c1 dpre + c2 xhat + c3
// NCHW walks one (n, c) plane at a time; channels_last walks rows of C channels, keeping per-channel
// accumulators. All arithmetic is in acc_t (float32, or float64 for float64 storage); plane sums are
// carried in float within a block of rows and in double across blocks, so long planes stay accurate.
//
// This file: the forward's loops (statistics, coefficients, y); norm_backward.cpp has the backward's,
// ../ops.cpp the ops' checks and allocation.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "../norm_math.h"
#include "kernels.h"
#include "norm_common.h"
#include "vec_math.h"

namespace fastscore {
namespace cpu {
namespace {

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

// ---- the forward --------------------------------------------------------------------------------

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

}  // namespace

template <typename scalar_t>
void norm_forward(const NormForwardArgs<scalar_t>& a) {
  using acc_t = acc_type<scalar_t>;
  const Shape s = a.s;
  const double eps = a.eps;
  const int64_t act = a.act;
  const scalar_t* xp = a.x;
  scalar_t* yp = a.y;
  acc_t *mu = a.mean, *rs = a.rstd;
  acc_t *sc = a.scale, *sh = a.shift;
  if (fuse_per_sample(s, sizeof(scalar_t))) {
    // One sample per task: its planes' statistics, its coefficients, then y while x is still in L2.
    at::parallel_for(0, s.N, 1, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) {
        const int64_t o = n * s.C;
        for (int64_t p = o; p < o + s.C; ++p) plane_stats(xp + p * s.HW, s.HW, eps, mu + p, rs + p);
        forward_coeffs(mu + o, rs + o, s.C, eps, sample_params(a.params, n), sc + o, sh + o);
        for (int64_t p = o; p < o + s.C; ++p)
          forward_run<false>(xp + p * s.HW, yp + p * s.HW, s.HW, sc + p, mu + p, sh + p, act);
      }
    });
    return;
  }
  compute_stats(xp, s, eps, mu, rs);
  compute_forward_coeffs(s, eps, mu, rs, a.params, sc, sh);
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
}

#define FASTSCORE_INSTANTIATE(scalar_t) template void norm_forward<scalar_t>(const NormForwardArgs<scalar_t>&);
FASTSCORE_CPU_DTYPES(FASTSCORE_INSTANTIATE)
#undef FASTSCORE_INSTANTIATE

}  // namespace cpu
}  // namespace fastscore
