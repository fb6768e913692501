// The noise stream of DESIGN.md section 3 on the CPU, for the noise ops' kernels (noise_ops.cpp).
// Defined in normal_stream.cpp: an AVX2 + FMA implementation and a scalar one that give the same bits,
// chosen at run time from the CPU's features.
#pragma once

#include <cstdint>

namespace fastscore {
namespace cpu {

// normal(seed, first + i) for i in [0, n) into out (float32). A normal never depends on the call that
// drew it (its start, its length, the implementation): the noise ops cut the stream in chunks.
void fill_normal(float* out, int64_t n, uint64_t seed, uint64_t first);

// Whether this CPU has AVX2 and FMA; whether fill_normal uses them; the latter can be switched (to
// compare the two implementations; FASTSCORE_NOISE_SIMD=0 starts with the scalar one). Returns the
// previous setting; enabling is ignored on a CPU without AVX2 and FMA.
bool normal_simd_available();
bool normal_simd();
bool set_normal_simd(bool enable);

}  // namespace cpu
}  // namespace fastscore
