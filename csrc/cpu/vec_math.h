// Vectorised building blocks of the CPU kernels: the chunk size of the per-thread buffers, and the
// activations (and their derivatives) over a buffer; the noise stream is in normal_stream.h. Built on
// at::vec::Vectorized, which is AVX2 with SLEEF's 1-ulp exp when the extension is compiled with
// CPU_CAPABILITY_AVX2 (setup.py does that when the build machine has AVX2 and FMA; the loader refuses
// the build on a CPU without them) and a portable element-by-element fallback otherwise.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../norm_math.h"

namespace fastscore {
namespace cpu {

// Elements per chunk of the per-thread buffers: small enough for L1, large enough to amortise loops.
constexpr int64_t kChunk = 1024;

// buf <- act(buf) in place.
template <typename acc_t>
inline void activation_inplace(acc_t* buf, int64_t n, int64_t act) {
  using Vec = at::vec::Vectorized<acc_t>;
  if (act == kActRelu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) buf[i] = buf[i] > acc_t(0) ? buf[i] : acc_t(0);
  } else if (act == kActElu) {
    int64_t i = 0;
    for (; i + Vec::size() <= n; i += Vec::size()) {
      const Vec v = Vec::loadu(buf + i);
      // float32: exp(v) - 1 (1-ulp exp, absolute error ~1e-7) is several times cheaper than SLEEF's
      // expm1; float64 keeps expm1 for full relative accuracy near 0.
      const Vec neg = std::is_same_v<acc_t, float> ? v.exp() - Vec(acc_t(1)) : v.expm1();
      Vec::blendv(neg, v, v > Vec(acc_t(0))).store(buf + i);
    }
    for (; i < n; ++i) buf[i] = buf[i] > acc_t(0) ? buf[i] : std::expm1(buf[i]);
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
    int64_t i = 0;
    for (; i + Vec::size() <= n; i += Vec::size()) {
      const Vec v = Vec::loadu(buf + i);
      Vec::blendv(v.exp(), Vec(acc_t(1)), v > Vec(acc_t(0))).store(buf + i);
    }
    for (; i < n; ++i) buf[i] = buf[i] > acc_t(0) ? acc_t(1) : std::exp(buf[i]);
  }
}

}  // namespace cpu
}  // namespace fastscore
