// CPU kernels of cond_instance_norm_plus, forward and backward, for NCHW and channels_last x.
//
// Three passes each way (DESIGN.md section 2; the per-sample algebra is in ../norm_math.h):
//   forward:  plane statistics (mu, rstd)  ->  per-sample coefficients  ->  y = act(scale (x - mu) + shift)
//   backward: plane sums S1, S2 of dpre     ->  per-sample coefficients  ->  dx = c1 dpre + c2 xhat + c3
// NCHW walks one (n, c) plane at a time; channels_last walks rows of C channels, keeping per-channel
// accumulators. All arithmetic is in acc_t (float32, or float64 for float64 storage); plane sums are
// carried in float within a block of rows and in double across blocks, so long planes stay accurate.
//
// This file: the backward's loops (plane sums, coefficients, dx); norm_forward.cpp has the forward's,
// ../ops.cpp the ops' checks and allocation.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../norm_math.h"
#include "kernels.h"
#include "norm_common.h"
#include "vec_math.h"

namespace fastscore {
namespace cpu {
namespace {

// ---- element passes ---------------------------------------------------------------------------

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

#if defined(CPU_CAPABILITY_AVX2)
// float32 NCHW planes: dpre, xhat, the sums and dx in registers, the activation a template argument.
// The sums are over the same kSumBlock blocks as the generic loop (float within a block, double across),
// on two accumulators each so that the adds do not wait on one another.
struct PlaneF32 {
  __m256 sc, mu, sh, rs;
  PlaneF32(float scale, float mean, float shift, float rstd)
      : sc(_mm256_set1_ps(scale)), mu(_mm256_set1_ps(mean)), sh(_mm256_set1_ps(shift)), rs(_mm256_set1_ps(rstd)) {}
  // dpre = dy act'(pre) and xhat of 8 elements.
  template <int64_t kAct>
  void at(__m256 xv, __m256 dyv, __m256& dpre, __m256& xhat) const {
    const __m256 xc = _mm256_sub_ps(xv, mu);
    xhat = _mm256_mul_ps(xc, rs);
    if constexpr (kAct == kActNone) {
      dpre = dyv;
    } else {
      const __m256 pre = _mm256_fmadd_ps(sc, xc, sh);
      const __m256 pos = _mm256_cmp_ps(pre, _mm256_setzero_ps(), _CMP_GT_OQ);
      const __m256 neg = kAct == kActElu ? exp_nonpositive(pre) : _mm256_setzero_ps();
      dpre = _mm256_mul_ps(dyv, _mm256_blendv_ps(neg, _mm256_set1_ps(1.0f), pos));
    }
  }
};

template <int64_t kAct>
void plane_backward_sums_f32(const float* x, const float* dy, int64_t len, const PlaneF32& pl, float* S1, float* S2,
                             float* keep_dpre) {
  double t1 = 0, t2 = 0;
  for (int64_t b = 0; b < len; b += kSumBlock) {
    const int64_t e = std::min(len, b + kSumBlock);
    __m256 a1 = _mm256_setzero_ps(), b1 = a1, a2 = a1, b2 = a1, dp, xh;
    int64_t i = b;
    for (; i + 16 <= e; i += 16) {
      pl.at<kAct>(_mm256_loadu_ps(x + i), _mm256_loadu_ps(dy + i), dp, xh);
      if (keep_dpre) _mm256_storeu_ps(keep_dpre + i, dp);
      a1 = _mm256_add_ps(a1, dp);
      a2 = _mm256_fmadd_ps(dp, xh, a2);
      pl.at<kAct>(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(dy + i + 8), dp, xh);
      if (keep_dpre) _mm256_storeu_ps(keep_dpre + i + 8, dp);
      b1 = _mm256_add_ps(b1, dp);
      b2 = _mm256_fmadd_ps(dp, xh, b2);
    }
    for (; i + 8 <= e; i += 8) {
      pl.at<kAct>(_mm256_loadu_ps(x + i), _mm256_loadu_ps(dy + i), dp, xh);
      if (keep_dpre) _mm256_storeu_ps(keep_dpre + i, dp);
      a1 = _mm256_add_ps(a1, dp);
      a2 = _mm256_fmadd_ps(dp, xh, a2);
    }
    if (i < e) {
      const __m256i mask = lane_mask(e - i);
      pl.at<kAct>(_mm256_maskload_ps(x + i, mask), _mm256_maskload_ps(dy + i, mask), dp, xh);
      dp = _mm256_and_ps(dp, _mm256_castsi256_ps(mask));
      if (keep_dpre) _mm256_maskstore_ps(keep_dpre + i, mask, dp);
      b1 = _mm256_add_ps(b1, dp);
      b2 = _mm256_fmadd_ps(dp, xh, b2);
    }
    t1 += hsum(_mm256_add_ps(a1, b1));
    t2 += hsum(_mm256_add_ps(a2, b2));
  }
  *S1 = static_cast<float>(t1);
  *S2 = static_cast<float>(t2);
}

// dx = c1 dpre + c2 xhat + c3, dpre recomputed from x and dy (the unfused path keeps no dpre).
template <int64_t kAct>
void plane_dx_f32(const float* x, const float* dy, float* dx, int64_t len, const PlaneF32& pl, float c1, float c2,
                  float c3) {
  const __m256 k1 = _mm256_set1_ps(c1), k2 = _mm256_set1_ps(c2), k3 = _mm256_set1_ps(c3);
  __m256 dp, xh;
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    pl.at<kAct>(_mm256_loadu_ps(x + i), _mm256_loadu_ps(dy + i), dp, xh);
    _mm256_storeu_ps(dx + i, _mm256_fmadd_ps(k1, dp, _mm256_fmadd_ps(k2, xh, k3)));
  }
  if (i < len) {
    const __m256i mask = lane_mask(len - i);
    pl.at<kAct>(_mm256_maskload_ps(x + i, mask), _mm256_maskload_ps(dy + i, mask), dp, xh);
    _mm256_maskstore_ps(dx + i, mask, _mm256_fmadd_ps(k1, dp, _mm256_fmadd_ps(k2, xh, k3)));
  }
}

#endif

// NCHW plane: S1 = sum dpre, S2 = sum dpre * xhat.
// keep_dpre, if given, receives dpre for the dx pass (so the activation's derivative is computed once).
template <typename scalar_t, typename acc_t>
void plane_backward_sums(const scalar_t* x, const scalar_t* dy, int64_t len, acc_t scale, acc_t mu, acc_t shift,
                         acc_t rstd, int64_t act, acc_t* S1, acc_t* S2, acc_t* keep_dpre = nullptr) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    const PlaneF32 pl(scale, mu, shift, rstd);
    if (act == kActElu) return plane_backward_sums_f32<kActElu>(x, dy, len, pl, S1, S2, keep_dpre);
    if (act == kActRelu) return plane_backward_sums_f32<kActRelu>(x, dy, len, pl, S1, S2, keep_dpre);
    return plane_backward_sums_f32<kActNone>(x, dy, len, pl, S1, S2, keep_dpre);
  }
#endif
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
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float> && !kPerElem) {
    const PlaneF32 pl(*scale, *mu, *shift, *rstd);
    if (act == kActElu) return plane_dx_f32<kActElu>(x, dy, dx, len, pl, *c1, *c2, *c3);
    if (act == kActRelu) return plane_dx_f32<kActRelu>(x, dy, dx, len, pl, *c1, *c2, *c3);
    return plane_dx_f32<kActNone>(x, dy, dx, len, pl, *c1, *c2, *c3);
  }
#endif
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

}  // namespace

// ---- the backward -------------------------------------------------------------------------------

template <typename scalar_t>
void norm_backward(const NormBackwardArgs<scalar_t>& a) {
  using acc_t = acc_type<scalar_t>;
  const Shape s = a.s;
  const int64_t N = s.N, C = s.C;
  const double eps = a.eps;
  const int64_t act = a.act;
  const scalar_t* xp = a.x;
  const scalar_t* dyp = a.dy;
  scalar_t* dxp = a.dx;
  const acc_t *mu = a.mean, *rs = a.rstd;
  acc_t *sc = a.scale, *sh = a.shift;
  acc_t *s1 = a.S1, *s2 = a.S2;
  acc_t *k1 = a.c1, *k2 = a.c2, *k3 = a.c3;
  acc_t *dg = a.dgamma, *da = a.dalpha, *db = a.dbeta;
  if (fuse_per_sample(s, 2 * sizeof(scalar_t))) {
    // One sample per task, every pass, while its x and dy are in L2.
    at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
      std::vector<acc_t> dpre(static_cast<size_t>(C * s.HW));  // this sample's dpre, reused by the dx pass
      for (int64_t n = b; n < e; ++n) {
        const int64_t o = n * C;
        const auto params = sample_params(a.params, n);
        forward_coeffs(mu + o, rs + o, C, eps, params, sc + o, sh + o);
        for (int64_t p = o; p < o + C; ++p)
          plane_backward_sums(xp + p * s.HW, dyp + p * s.HW, s.HW, sc[p], mu[p], sh[p], rs[p], act, s1 + p, s2 + p,
                              dpre.data() + (p - o) * s.HW);
        const int64_t g = n * a.grad_ld;
        backward_coeffs(mu + o, rs + o, s1 + o, s2 + o, C, s.HW, eps, params, dg + g, da + g, db ? db + g : nullptr,
                        k1 + o, k2 + o, k3 + o);
        for (int64_t p = o; p < o + C; ++p)
          plane_dx_from_dpre(xp + p * s.HW, dpre.data() + (p - o) * s.HW, dxp + p * s.HW, s.HW, mu[p], rs[p], k1[p],
                             k2[p], k3[p]);
      }
    });
    return;
  }
  compute_forward_coeffs(s, eps, mu, rs, a.params, sc, sh);
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
      const int64_t o = n * C, g = n * a.grad_ld;
      backward_coeffs(mu + o, rs + o, s1 + o, s2 + o, C, s.HW, eps, sample_params(a.params, n), dg + g, da + g,
                      db ? db + g : nullptr, k1 + o, k2 + o, k3 + o);
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
}

#define FASTSCORE_INSTANTIATE(scalar_t) template void norm_backward<scalar_t>(const NormBackwardArgs<scalar_t>&);
FASTSCORE_CPU_DTYPES(FASTSCORE_INSTANTIATE)
#undef FASTSCORE_INSTANTIATE

}  // namespace cpu
}  // namespace fastscore
