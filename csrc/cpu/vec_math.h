// Vectorised building blocks of the CPU kernels: the chunk size of the per-thread buffers, and the
// activations (and their derivatives) over a buffer; the noise stream is in normal_stream.h. float32
// uses AVX2 intrinsics when the extension is compiled with CPU_CAPABILITY_AVX2 (setup.py does that when
// the build machine has AVX2 and FMA; the loader refuses the build on a CPU without them) and the same
// formulas element by element otherwise; float64 uses at::vec::Vectorized (SLEEF's 1-ulp exp and expm1
// under AVX2).
#pragma once

#include <ATen/cpu/vec/vec.h>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../norm_math.h"

namespace fastscore {
namespace cpu {

// Elements per chunk of the per-thread buffers: small enough for L1, large enough to amortise loops.
constexpr int64_t kChunk = 1024;

// ---- exp(x) for float32 x <= 0 ---------------------------------------------------------------------
// Only the ELU's negative branch needs an exponential, and there exp(x) lies in (0, 1]. SLEEF's general
// expf (at::vec's exp) spends most of its time on the range checks and the scaling of a result that may
// overflow; on (-inf, 0] none of that is needed: x is clamped to [ln(FLT_MIN), 0] (below, exp(x) < 1.2e-38
// and ELU is -1 in float), n = round(x / ln2) lies in [-126, 0] so 2^n is a normal float built from its
// exponent bits, r = x - n ln2 (ln2 split in a part exact in float and the rest, so r is exact to an ulp)
// lies in [-ln2/2, ln2/2], and exp(r) is Cephes' expf polynomial (relative error below 2e-7 on that
// interval). NaN stays NaN (the clamps keep x when it is NaN). The scalar form below is the same
// formula for builds without AVX2 (with separate multiplies and adds where no FMA is available, so it
// may differ in the last bit); the AVX2 loops take their tails through a padded vector instead.
namespace expneg {
constexpr float kLo = -87.33654475f;       // ln(FLT_MIN)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;     // 8 significant bits: n * kLn2Hi is exact for |n| <= 126
constexpr float kLn2Lo = -2.12194440e-4f;  // ln2 - kLn2Hi
// 1.5 * 2^23 + 127: adding it to x / ln2 rounds to an integer n, leaving n + 127 in the low mantissa bits.
constexpr float kShift = 12582912.0f + 127.0f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
}  // namespace expneg

inline float exp_nonpositive(float x) {
  using namespace expneg;
  x = x > 0.0f ? 0.0f : x;
  x = x < kLo ? kLo : x;  // NaN compares false both times and stays NaN
  const float t = x * kLog2e + kShift;
  const float n = t - kShift;  // round(x / ln2), exactly
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  const float p = ((((kP0 * r + kP1) * r + kP2) * r + kP3) * r + kP4) * r + kP5;
  const float two_n = std::bit_cast<float>(std::bit_cast<uint32_t>(t) << 23);
  return (p * (r * r) + (r + 1.0f)) * two_n;
}

#if defined(CPU_CAPABILITY_AVX2)
inline __m256 exp_nonpositive(__m256 x) {
  using namespace expneg;
  x = _mm256_min_ps(_mm256_setzero_ps(), x);  // min/max return their second operand when one is NaN
  x = _mm256_max_ps(_mm256_set1_ps(kLo), x);
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), _mm256_set1_ps(kShift));
  const __m256 n = _mm256_sub_ps(t, _mm256_set1_ps(kShift));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kP0), r, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256 two_n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
  return _mm256_mul_ps(p, two_n);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// The first `count` of 8 lanes (for maskload/maskstore of a run's last, partial vector), 0 < count < 8.
inline __m256i lane_mask(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

// f(v) over buf for float32, f taking and returning __m256 under AVX2 (the tail through a padded
// vector, so every element gets the same arithmetic) and float otherwise.
template <typename F>
inline void map_float(float* buf, int64_t n, F f) {
#if defined(CPU_CAPABILITY_AVX2)
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(buf + i, f(_mm256_loadu_ps(buf + i)));
  if (i < n) {
    alignas(32) float tail[8] = {0};
    std::copy(buf + i, buf + n, tail);
    _mm256_store_ps(tail, f(_mm256_load_ps(tail)));
    std::copy(tail, tail + (n - i), buf + i);
  }
#else
  for (int64_t i = 0; i < n; ++i) buf[i] = f(buf[i]);
#endif
}

// buf <- act(buf) in place.
template <typename acc_t>
inline void activation_inplace(acc_t* buf, int64_t n, int64_t act) {
  using Vec = at::vec::Vectorized<acc_t>;
  if (act == kActRelu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) buf[i] = buf[i] < acc_t(0) ? acc_t(0) : buf[i];  // NaN stays NaN
  } else if (act == kActElu) {
    if constexpr (std::is_same_v<acc_t, float>) {
      // exp(v) - 1 (absolute error ~1e-7) is several times cheaper than an expm1; float64 keeps expm1
      // for full relative accuracy near 0.
#if defined(CPU_CAPABILITY_AVX2)
      map_float(buf, n, [](__m256 v) {
        const __m256 neg = _mm256_sub_ps(exp_nonpositive(v), _mm256_set1_ps(1.0f));
        return _mm256_blendv_ps(neg, v, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ));
      });
#else
      map_float(buf, n, [](float v) { return v > 0.0f ? v : exp_nonpositive(v) - 1.0f; });
#endif
    } else {
      int64_t i = 0;
      for (; i + Vec::size() <= n; i += Vec::size()) {
        const Vec v = Vec::loadu(buf + i);
        Vec::blendv(v.expm1(), v, v > Vec(acc_t(0))).store(buf + i);
      }
      for (; i < n; ++i) buf[i] = buf[i] > acc_t(0) ? buf[i] : std::expm1(buf[i]);
    }
  }
}

// buf <- act'(buf) in place, buf holding the pre-activations (ELU: 1 above 0, exp(pre) below).
template <typename acc_t>
inline void activation_grad_inplace(acc_t* buf, int64_t n, int64_t act) {
  using Vec = at::vec::Vectorized<acc_t>;
  if (act == kActRelu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) buf[i] = buf[i] > acc_t(0) ? acc_t(1) : acc_t(0);
  } else if (act == kActElu) {
    if constexpr (std::is_same_v<acc_t, float>) {
#if defined(CPU_CAPABILITY_AVX2)
      map_float(buf, n, [](__m256 v) {
        return _mm256_blendv_ps(exp_nonpositive(v), _mm256_set1_ps(1.0f), _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ));
      });
#else
      map_float(buf, n, [](float v) { return v > 0.0f ? 1.0f : exp_nonpositive(v); });
#endif
    } else {
      int64_t i = 0;
      for (; i + Vec::size() <= n; i += Vec::size()) {
        const Vec v = Vec::loadu(buf + i);
        Vec::blendv(v.exp(), Vec(acc_t(1)), v > Vec(acc_t(0))).store(buf + i);
      }
      for (; i < n; ++i) buf[i] = buf[i] > acc_t(0) ? acc_t(1) : std::exp(buf[i]);
    }
  }
}

}  // namespace cpu
}  // namespace fastscore
