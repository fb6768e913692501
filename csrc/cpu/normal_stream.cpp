// The noise stream of DESIGN.md section 3 on the CPU: fill_normal (normal_stream.h), in two
// implementations that give the same bits, chosen at run time from the CPU's features:
//   - AVX2 + FMA: Philox4x32-10 on 8 counters at once (two vectors of four 64-bit lanes, so that
//     _mm256_mul_epu32 gives each lane's full 32x32->64 product), Box-Muller on 8 pairs at once;
//   - scalar: the same arithmetic one block at a time, for CPUs without AVX2/FMA (and for the test
//     that holds the two to the same bits).
// Both are compiled whatever the build's CPU capability (the AVX2 functions carry a target attribute),
// so the choice is the running CPU's, not the build machine's.
//
// Box-Muller here does not call libm or SLEEF: log and sincos are short polynomials (Cephes' logf and
// sinf/cosf, about 1 ulp) written with explicit fused multiply-adds in both implementations, so that
// the vector and scalar code round identically; every other product here is either exact or not
// followed by an addition, so no compiler contraction of a * b + c can make the two differ. The angle
// is reduced in turns, exactly: 2 pi t = q pi / 2 + 2 pi r with q = rint(4 t) and r = t - q / 4 (exact,
// as t is a multiple of 2^-25), so the polynomial only ever sees |2 pi r| <= pi / 4. Against the
// torch ground truth (fastscore/noise.py: float32 log, sqrt, cos, sin) the normals agree to a few
// float32 ulps of the radius.
#include "normal_stream.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "../philox.h"

namespace fastscore {
namespace cpu {
namespace {

// Cephes logf: ln x = e ln 2 + ln m, m in [sqrt(1/2), sqrt(2)), ln(1 + f) = f - f^2 / 2 + f^3 P(f).
constexpr float kLogP[9] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                            -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                            2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f, kSqrtHalf = 0.707106781186547524f;
// Cephes sinf/cosf on [-pi/4, pi/4].
constexpr float kSin3 = -1.6666654611e-1f, kSin5 = 8.3321608736e-3f, kSin7 = -1.9515295891e-4f;
constexpr float kCos4 = 4.166664568298827e-2f, kCos6 = -1.388731625493765e-3f, kCos8 = 2.443315711809948e-5f;

// Blocks per call of the vector kernel: 8 blocks, 32 normals.
constexpr int kVecBlocks = 8;

// ---- scalar ---------------------------------------------------------------------------------------

inline float log_scalar(float u) {
  const uint32_t bits = std::bit_cast<uint32_t>(u);
  int32_t e = static_cast<int32_t>(bits >> 23) - 126;
  const float m = std::bit_cast<float>((bits & 0x007fffffu) | 0x3f000000u);  // in [0.5, 1)
  const bool low = m < kSqrtHalf;
  e -= low ? 1 : 0;
  const float x = low ? (m + m) - 1.0f : m - 1.0f;  // exact
  const float z = x * x;
  float p = kLogP[0];
  for (int i = 1; i < 9; ++i) p = std::fma(p, x, kLogP[i]);
  const float ef = static_cast<float>(e);
  float y = (x * z) * p;
  y = std::fma(ef, kLn2Lo, y);
  y = std::fma(z, -0.5f, y);
  return std::fma(ef, kLn2Hi, x + y);
}

// (cos, sin)(2 pi t) for t in (0, 1].
inline void sincos_turns_scalar(float t, float* c, float* s) {
  const float q = std::nearbyint(t * 4.0f);
  const float x = (t - q * 0.25f) * kTwoPi;
  const float z = x * x;
  const float sp = std::fma(std::fma(kSin7, z, kSin5), z, kSin3);
  const float sn = std::fma(z * sp, x, x);
  const float cp = std::fma(std::fma(kCos8, z, kCos6), z, kCos4);
  const float cs = std::fma(cp, z * z, std::fma(z, -0.5f, 1.0f));
  const uint32_t qi = static_cast<uint32_t>(static_cast<int32_t>(q));
  const bool swap = qi & 1u;
  *c = std::bit_cast<float>(std::bit_cast<uint32_t>(swap ? sn : cs) ^ (((qi + 1u) & 2u) << 30));
  *s = std::bit_cast<float>(std::bit_cast<uint32_t>(swap ? cs : sn) ^ ((qi & 2u) << 30));
}

inline void normals_scalar(uint64_t seed, uint64_t block, float* out) {
  const Words4 u = philox_block(seed, block);
  for (int pair = 0; pair < 2; ++pair) {
    const float radius = std::sqrt(-2.0f * log_scalar(uniform_from_bits(u.w[2 * pair])));
    float c, s;
    sincos_turns_scalar(uniform_from_bits(u.w[2 * pair + 1]), &c, &s);
    out[2 * pair] = radius * c;
    out[2 * pair + 1] = radius * s;
  }
}

void blocks_scalar(uint64_t seed, uint64_t k0, int64_t blocks, float* out) {
  for (int64_t b = 0; b < blocks; ++b) normals_scalar(seed, k0 + static_cast<uint64_t>(b), out + 4 * b);
}

// ---- AVX2 + FMA -----------------------------------------------------------------------------------

#if defined(__x86_64__) || defined(_M_X64)
#define FS_AVX2 __attribute__((target("avx2,fma"))) inline

FS_AVX2 __m256 log_avx2(__m256 u) {
  const __m256i bits = _mm256_castps_si256(u);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126));
  const __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f000000)));
  const __m256 low = _mm256_cmp_ps(m, _mm256_set1_ps(kSqrtHalf), _CMP_LT_OQ);
  e = _mm256_add_epi32(e, _mm256_castps_si256(low));  // low lanes are all ones: -1
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 x = _mm256_blendv_ps(_mm256_sub_ps(m, one), _mm256_sub_ps(_mm256_add_ps(m, m), one), low);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(kLogP[0]);
  for (int i = 1; i < 9; ++i) p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(kLogP[i]));
  const __m256 ef = _mm256_cvtepi32_ps(e);
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(x, z), p);
  y = _mm256_fmadd_ps(ef, _mm256_set1_ps(kLn2Lo), y);
  y = _mm256_fmadd_ps(z, _mm256_set1_ps(-0.5f), y);
  return _mm256_fmadd_ps(ef, _mm256_set1_ps(kLn2Hi), _mm256_add_ps(x, y));
}

FS_AVX2 void sincos_turns_avx2(__m256 t, __m256* c, __m256* s) {
  const __m256 q = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(4.0f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 x = _mm256_mul_ps(_mm256_sub_ps(t, _mm256_mul_ps(q, _mm256_set1_ps(0.25f))), _mm256_set1_ps(kTwoPi));
  const __m256 z = _mm256_mul_ps(x, x);
  const __m256 sp = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(kSin7), z, _mm256_set1_ps(kSin5)), z,
                                    _mm256_set1_ps(kSin3));
  const __m256 sn = _mm256_fmadd_ps(_mm256_mul_ps(z, sp), x, x);
  const __m256 cp = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(kCos8), z, _mm256_set1_ps(kCos6)), z,
                                    _mm256_set1_ps(kCos4));
  const __m256 cs = _mm256_fmadd_ps(cp, _mm256_mul_ps(z, z), _mm256_fmadd_ps(z, _mm256_set1_ps(-0.5f), _mm256_set1_ps(1.0f)));
  const __m256i qi = _mm256_cvttps_epi32(q);
  const __m256 swap = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(qi, _mm256_set1_epi32(1)), _mm256_set1_epi32(1)));
  const __m256 c_sign = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(qi, _mm256_set1_epi32(1)), _mm256_set1_epi32(2)), 30));
  const __m256 s_sign = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(qi, _mm256_set1_epi32(2)), 30));
  *c = _mm256_xor_ps(_mm256_blendv_ps(cs, sn, swap), c_sign);
  *s = _mm256_xor_ps(_mm256_blendv_ps(sn, cs, swap), s_sign);
}

FS_AVX2 __m256 uniform_avx2(__m256i w) {
  return _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w, 8)), _mm256_set1_ps(0.5f)),
                       _mm256_set1_ps(kTwoPowMinus24));
}

// The low 32-bit words of the 64-bit lanes of a (blocks 0-3) and b (blocks 4-7), as 8 lanes in the
// order of blocks 0 1 4 5 | 2 3 6 7 (undone by the final transpose).
FS_AVX2 __m256i pack_low_words(__m256i a, __m256i b) {
  return _mm256_castps_si256(
      _mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _MM_SHUFFLE(2, 0, 2, 0)));
}

// Philox4x32-10 on 4 blocks whose words sit in the low halves of 64-bit lanes. The high halves hold
// garbage that never matters: _mm256_mul_epu32 reads only the low halves, and the xors keep them apart.
FS_AVX2 void philox_rounds_avx2(__m256i& c0, __m256i& c1, __m256i& c2, __m256i& c3, const __m256i* k_lo,
                                const __m256i* k_hi) {
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
  for (int r = 0; r < 10; ++r) {
    const __m256i p0 = _mm256_mul_epu32(c0, m0);
    const __m256i p1 = _mm256_mul_epu32(c2, m1);
    const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1), k_lo[r]);
    const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3), k_hi[r]);
    c0 = n0;
    c1 = p1;
    c2 = n2;
    c3 = p0;
  }
}

// The 32 normals of blocks [k0, k0 + 8) into out (unaligned), lane-major as the stream is.
FS_AVX2 void normals_avx2(const __m256i* k_lo, const __m256i* k_hi, uint64_t k0, float* out) {
  const __m256i base = _mm256_set1_epi64x(static_cast<long long>(k0));
  __m256i a0 = _mm256_add_epi64(base, _mm256_setr_epi64x(0, 1, 2, 3));
  __m256i b0 = _mm256_add_epi64(base, _mm256_setr_epi64x(4, 5, 6, 7));
  // counter (k_lo, k_hi, 0, 0): the 64-bit lane holds k, whose low half is word 0.
  __m256i a1 = _mm256_srli_epi64(a0, 32), b1 = _mm256_srli_epi64(b0, 32);
  __m256i a2 = _mm256_setzero_si256(), a3 = a2, b2 = a2, b3 = a2;
  philox_rounds_avx2(a0, a1, a2, a3, k_lo, k_hi);
  philox_rounds_avx2(b0, b1, b2, b3, k_lo, k_hi);
  __m256 n[4];
  for (int pair = 0; pair < 2; ++pair) {
    const __m256i wr = pair ? pack_low_words(a2, b2) : pack_low_words(a0, b0);
    const __m256i wa = pair ? pack_low_words(a3, b3) : pack_low_words(a1, b1);
    const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), log_avx2(uniform_avx2(wr))));
    __m256 c, s;
    sincos_turns_avx2(uniform_avx2(wa), &c, &s);
    n[2 * pair] = _mm256_mul_ps(radius, c);
    n[2 * pair + 1] = _mm256_mul_ps(radius, s);
  }
  // 4 x 8 transpose: lane i of n[l] is word l of the block in position i of (0 1 4 5 | 2 3 6 7).
  const __m256 t0 = _mm256_unpacklo_ps(n[0], n[1]), t1 = _mm256_unpackhi_ps(n[0], n[1]);
  const __m256 t2 = _mm256_unpacklo_ps(n[2], n[3]), t3 = _mm256_unpackhi_ps(n[2], n[3]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));  // blocks 0 | 2
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));  // blocks 1 | 3
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));  // blocks 4 | 6
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));  // blocks 5 | 7
  _mm256_storeu_ps(out + 0, _mm256_permute2f128_ps(u0, u1, 0x20));
  _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(u0, u1, 0x31));
  _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(u2, u3, 0x20));
  _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
}

__attribute__((target("avx2,fma"))) void blocks_avx2(uint64_t seed, uint64_t k0, int64_t blocks, float* out) {
  __m256i k_lo[10], k_hi[10];
  uint32_t lo = static_cast<uint32_t>(seed), hi = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    if (r) {
      lo += kPhiloxW0;
      hi += kPhiloxW1;
    }
    k_lo[r] = _mm256_set1_epi64x(lo);
    k_hi[r] = _mm256_set1_epi64x(hi);
  }
  int64_t b = 0;
  for (; b + kVecBlocks <= blocks; b += kVecBlocks) normals_avx2(k_lo, k_hi, k0 + static_cast<uint64_t>(b), out + 4 * b);
  if (b < blocks) {
    float tmp[4 * kVecBlocks];
    normals_avx2(k_lo, k_hi, k0 + static_cast<uint64_t>(b), tmp);
    std::copy(tmp, tmp + 4 * (blocks - b), out + 4 * b);
  }
}

bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
void blocks_avx2(uint64_t seed, uint64_t k0, int64_t blocks, float* out) { blocks_scalar(seed, k0, blocks, out); }
bool cpu_has_avx2_fma() { return false; }
#endif

// Which implementation fill_normal runs: decided once from the CPU (FASTSCORE_NOISE_SIMD=0 forces the
// scalar one); set_normal_simd changes it for tests.
std::atomic<bool>& simd_flag() {
  static std::atomic<bool> flag{[] {
    const char* env = std::getenv("FASTSCORE_NOISE_SIMD");
    return cpu_has_avx2_fma() && !(env && env[0] == '0');
  }()};
  return flag;
}

}  // namespace

bool normal_simd_available() { return cpu_has_avx2_fma(); }

bool normal_simd() { return simd_flag().load(std::memory_order_relaxed); }

bool set_normal_simd(bool enable) {
  return simd_flag().exchange(enable && cpu_has_avx2_fma(), std::memory_order_relaxed);
}

// Blocks are computed whole (a block's four normals come from one computation, whichever call asks
// for them), so a normal never depends on the run it was drawn in.
void fill_normal(float* out, int64_t n, uint64_t seed, uint64_t first) {
  if (n <= 0) return;
  const bool simd = normal_simd();
  auto blocks = [&](uint64_t k, int64_t count, float* dst) {
    if (simd) {
      blocks_avx2(seed, k, count, dst);
    } else {
      blocks_scalar(seed, k, count, dst);
    }
  };
  uint64_t k = first >> 2;
  int64_t i = 0;
  const int64_t skip = static_cast<int64_t>(first & 3);
  if (skip) {  // the tail of the first block
    float tmp[4];
    blocks(k, 1, tmp);
    const int64_t take = std::min<int64_t>(4 - skip, n);
    std::copy(tmp + skip, tmp + skip + take, out);
    i = take;
    ++k;
  }
  const int64_t whole = (n - i) / 4;
  if (whole) {
    blocks(k, whole, out + i);
    i += 4 * whole;
    k += static_cast<uint64_t>(whole);
  }
  if (i < n) {  // the head of the last block
    float tmp[4];
    blocks(k, 1, tmp);
    std::copy(tmp, tmp + (n - i), out + i);
  }
}

}  // namespace cpu
}  // namespace fastscore
