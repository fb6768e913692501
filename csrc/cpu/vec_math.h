// Vectorised building blocks of the CPU kernels: the noise stream over a run of indices, and the
// activations (and their derivatives) over a buffer. Built on at::vec::Vectorized, which is AVX2 with
// SLEEF's 1-ulp log/sin/cos/exp when the extension is compiled with CPU_CAPABILITY_AVX2 (setup.py does
// that when the build machine has AVX2 and FMA; the loader refuses the build on a CPU without them)
// and a portable element-by-element fallback otherwise.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../norm_math.h"
#include "../philox.h"

namespace fastscore {
namespace cpu {

// Elements per chunk of the per-thread buffers: small enough for L1, large enough to amortise loops.
constexpr int64_t kChunk = 1024;

// Philox blocks per vectorised group: 16 blocks give 64 normals and fill whole AVX2/AVX-512 vectors.
constexpr int kGroup = 16;

// The 4 * kGroup normals of stream blocks [k0, k0 + kGroup) into out, lane-major as the stream is.
// Never inlined: the same code serves every op and dtype, and one out-of-line copy (called once per
// 64 normals) instead of two per caller (two dozen callers in noise_ops.cpp) halves that file's
// compile time; the extension is compiled at first use.
[[gnu::noinline]] inline void group_normals(uint64_t seed, uint64_t k0, float* out) {
  using Vec = at::vec::Vectorized<float>;
  // Philox4x32-10 over kGroup consecutive blocks, lane by lane so the compiler vectorises it.
  alignas(64) uint32_t c0[kGroup], c1[kGroup], c2[kGroup], c3[kGroup];
  for (int b = 0; b < kGroup; ++b) {
    c0[b] = static_cast<uint32_t>(k0 + b);
    c1[b] = static_cast<uint32_t>((k0 + b) >> 32);
    c2[b] = 0;
    c3[b] = 0;
  }
  uint32_t k_lo = static_cast<uint32_t>(seed), k_hi = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    if (r) {
      k_lo += kPhiloxW0;
      k_hi += kPhiloxW1;
    }
#pragma omp simd
    for (int b = 0; b < kGroup; ++b) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0[b];
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2[b];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[b] ^ k_lo;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[b] ^ k_hi;
      c1[b] = static_cast<uint32_t>(p1);
      c3[b] = static_cast<uint32_t>(p0);
      c0[b] = n0;
      c2[b] = n2;
    }
  }
  // Box-Muller on the pairs (c0, c1) and (c2, c3), the uniform rounded exactly as uniform_from_bits.
  alignas(64) float lane[4][kGroup];
  const uint32_t* words[4] = {c0, c1, c2, c3};
  for (int pair = 0; pair < 2; ++pair) {
    alignas(64) float fr[kGroup], fa[kGroup];
#pragma omp simd
    for (int b = 0; b < kGroup; ++b) {
      fr[b] = (static_cast<float>(static_cast<int32_t>(words[2 * pair][b] >> 8)) + 0.5f) * kTwoPowMinus24;
      fa[b] = (static_cast<float>(static_cast<int32_t>(words[2 * pair + 1][b] >> 8)) + 0.5f) * kTwoPowMinus24;
    }
    for (int b = 0; b < kGroup; b += Vec::size()) {
      const Vec radius = (Vec::loadu(fr + b).log() * Vec(-2.0f)).sqrt();
      const Vec angle = Vec::loadu(fa + b) * Vec(kTwoPi);
      (radius * angle.cos()).store(lane[2 * pair] + b);
      (radius * angle.sin()).store(lane[2 * pair + 1] + b);
    }
  }
  for (int b = 0; b < kGroup; ++b) {
    out[4 * b + 0] = lane[0][b];
    out[4 * b + 1] = lane[1][b];
    out[4 * b + 2] = lane[2][b];
    out[4 * b + 3] = lane[3][b];
  }
}

// normal(seed, first + i) for i in [0, n) into out (float32), the stream of DESIGN.md section 3.
// Every value comes from group_normals, whatever the run's start and length: a normal must not
// depend on which call produced it (the vector and scalar log/sin/cos may differ in the last bit).
inline void fill_normal(float* out, int64_t n, uint64_t seed, uint64_t first) {
  uint64_t k = first >> 2;
  int64_t skip = static_cast<int64_t>(first & 3), i = 0;
  while (i < n) {
    const int64_t take = std::min<int64_t>(4 * kGroup - skip, n - i);
    if (skip == 0 && take == 4 * kGroup) {
      group_normals(seed, k, out + i);
    } else {
      alignas(64) float tmp[4 * kGroup];
      group_normals(seed, k, tmp);
      std::copy(tmp + skip, tmp + skip + take, out + i);
    }
    i += take;
    skip = 0;
    k += kGroup;
  }
}

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
