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
#include <type_traits>

#include "../norm_math.h"
#include "kernels.h"
#include "norm_common.h"
#include "vec_math.h"

namespace fastscore {
namespace cpu {
namespace {

// ---- statistics -------------------------------------------------------------------------------

#if defined(CPU_CAPABILITY_AVX2)
// float32 planes: the same blocks of kSumBlock elements summed in float, then in double, but over four
// independent vector accumulators; a single accumulator (what the generic loop compiles to) waits on the
// add's latency at every step and made the statistics a third of the forward.
// sum over x[0, n) of f(x[i]), n <= kSumBlock.
template <typename F>
inline float block_sum(const float* x, int64_t n, F f) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, f(_mm256_loadu_ps(x + i)));
    a1 = _mm256_add_ps(a1, f(_mm256_loadu_ps(x + i + 8)));
    a2 = _mm256_add_ps(a2, f(_mm256_loadu_ps(x + i + 16)));
    a3 = _mm256_add_ps(a3, f(_mm256_loadu_ps(x + i + 24)));
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_add_ps(a0, f(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i mask = lane_mask(n - i);
    a1 = _mm256_add_ps(a1, _mm256_and_ps(f(_mm256_maskload_ps(x + i, mask)), _mm256_castsi256_ps(mask)));
  }
  return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

inline void plane_stats(const float* x, int64_t len, double eps, float* mu, float* rstd) {
  double total = 0;
  for (int64_t b = 0; b < len; b += kSumBlock) total += block_sum(x + b, std::min(kSumBlock, len - b), [](__m256 v) { return v; });
  const float mean = static_cast<float>(total / static_cast<double>(len));
  const __m256 m = _mm256_set1_ps(mean);
  double sq_total = 0;
  for (int64_t b = 0; b < len; b += kSumBlock) {
    sq_total += block_sum(x + b, std::min(kSumBlock, len - b), [m](__m256 v) {
      const __m256 d = _mm256_sub_ps(v, m);
      return _mm256_mul_ps(d, d);
    });
  }
  *mu = mean;
  *rstd = static_cast<float>(1.0 / std::sqrt(sq_total / static_cast<double>(len) + eps));
}
#endif

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

#if defined(CPU_CAPABILITY_AVX2)
// float32 x with ELU: pre, its ELU and the store in registers, with no round trip through a buffer.
template <bool kPerElem>
void forward_run_elu(const float* x, float* y, int64_t len, const float* scale, const float* mu, const float* shift) {
  const auto elu = [](__m256 xv, __m256 sc, __m256 m, __m256 sh) {
    const __m256 pre = _mm256_fmadd_ps(sc, _mm256_sub_ps(xv, m), sh);
    const __m256 neg = _mm256_sub_ps(exp_nonpositive(pre), _mm256_set1_ps(1.0f));
    return _mm256_blendv_ps(neg, pre, _mm256_cmp_ps(pre, _mm256_setzero_ps(), _CMP_GT_OQ));
  };
  const auto coef = [](const float* c, int64_t i) { return kPerElem ? _mm256_loadu_ps(c + i) : _mm256_set1_ps(*c); };
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    _mm256_storeu_ps(y + i, elu(_mm256_loadu_ps(x + i), coef(scale, i), coef(mu, i), coef(shift, i)));
  if (i < len) {
    const __m256i mask = lane_mask(len - i);
    const auto mcoef = [&](const float* c) { return kPerElem ? _mm256_maskload_ps(c + i, mask) : _mm256_set1_ps(*c); };
    _mm256_maskstore_ps(y + i, mask, elu(_mm256_maskload_ps(x + i, mask), mcoef(scale), mcoef(mu), mcoef(shift)));
  }
}
#endif

template <bool kPerElem, typename scalar_t, typename acc_t>
void forward_run(const scalar_t* x, scalar_t* y, int64_t len, const acc_t* scale, const acc_t* mu,
                 const acc_t* shift, int64_t act) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (act == kActElu) return forward_run_elu<kPerElem>(x, y, len, scale, mu, shift);
  }
#endif
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
        y[b + i] = static_cast<scalar_t>(relu && pre < acc_t(0) ? acc_t(0) : pre);  // NaN stays NaN
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
