// Philox4x32-10 and the normal mapping of DESIGN.md section 3, for host and device code alike.
//
// The CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda) include this one header, so both
// compute normal(seed, j) with the same integer arithmetic and the same float32 rounding of the
// uniform: f(u) = (float32(u >> 8) + 0.5f) * 2^-24. fastscore/noise.py is the ground truth.
#pragma once

#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#define FS_HD __host__ __device__ __forceinline__
#else
#define FS_HD inline
#endif

namespace fastscore {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr float kTwoPi = 6.28318530717958647692f;
constexpr float kTwoPowMinus24 = 5.9604644775390625e-08f;

struct Words4 {
  uint32_t w[4];
};

FS_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

// Random123's Philox4x32 with 10 rounds: the key is bumped before every round but the first.
FS_HD Words4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    if (r) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kPhiloxM0, c0, &hi0);
    const uint32_t lo1 = mulhilo32(kPhiloxM1, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Words4{{c0, c1, c2, c3}};
}

// The four raw words of stream block k = j div 4 for a seed: counter (k_lo, k_hi, 0, 0), key (seed_lo, seed_hi).
FS_HD Words4 philox_block(uint64_t seed, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// f(u) in (0, 1): the float32 conversion of the top 24 bits is exact, the + 0.5f rounds to nearest
// even exactly as fastscore/noise.py does, and the scaling by 2^-24 is exact.
FS_HD float uniform_from_bits(uint32_t u) {
  return (static_cast<float>(u >> 8) + 0.5f) * kTwoPowMinus24;
}

struct Normal4 {
  float v[4];
};

// Box-Muller on both word pairs: lanes (0, 1) from (u0, u1), lanes (2, 3) from (u2, u3).
FS_HD Normal4 normals_from_words(const Words4& u) {
  Normal4 out;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int pair = 0; pair < 2; ++pair) {
    const float radius = sqrtf(-2.0f * logf(uniform_from_bits(u.w[2 * pair])));
    const float angle = kTwoPi * uniform_from_bits(u.w[2 * pair + 1]);
    float s, c;
#if defined(__CUDA_ARCH__)
    sincosf(angle, &s, &c);
#else
    s = std::sin(angle);
    c = std::cos(angle);
#endif
    out.v[2 * pair] = radius * c;
    out.v[2 * pair + 1] = radius * s;
  }
  return out;
}

// normal(seed, 4 * block + lane) for lane = 0..3.
FS_HD Normal4 normal_block(uint64_t seed, uint64_t block) {
  return normals_from_words(philox_block(seed, block));
}

}  // namespace fastscore
