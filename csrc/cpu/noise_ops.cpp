// CPU kernels of the noise-using ops: normal_ (the stream itself), perturb, dsm_loss (per-sample
// forward and its backward) and langevin_step_. Each walks x's logical (N, C, H, W) order in chunks
// of kChunk elements: one thread generates the chunk's normals into an L1 buffer, then applies the
// op to the chunk, so the noise never touches memory.
//
// This file: the loops, on raw pointers (kernels.h); ../ops.cpp has the ops' checks and allocation.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../philox.h"
#include "kernels.h"
#include "normal_stream.h"
#include "vec_math.h"

namespace fastscore {
namespace cpu {
namespace {

// Runs f(start, len, z) over [0, total) in chunks, in parallel, with z = normal(seed, offset + start + i).
template <typename F>
void for_each_noise_chunk(int64_t total, int64_t seed, int64_t offset, const F& f) {
  const int64_t chunks = (total + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, /*grain_size=*/8, [&](int64_t begin, int64_t end) {
    alignas(64) float z[kChunk];
    for (int64_t c = begin; c < end; ++c) {
      const int64_t start = c * kChunk, len = std::min(kChunk, total - start);
      fill_normal(z, len, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset + start));
      f(start, len, z);
    }
  });
}

// Splits the flat run [start, start + len) into pieces that stay within one sample of d elements.
template <typename G>
inline void for_each_sample_piece(int64_t start, int64_t len, int64_t d, const G& g) {
  int64_t pos = start;
  const int64_t end = start + len;
  while (pos < end) {
    const int64_t n = pos / d, stop = std::min(end, (n + 1) * d);
    g(n, pos - start, stop - pos);
    pos = stop;
  }
}

}  // namespace

template <typename scalar_t>
void normal_kernel(scalar_t* dst, int64_t numel, int64_t seed, int64_t offset) {
  for_each_noise_chunk(numel, seed, offset, [&](int64_t start, int64_t len, const float* z) {
    for (int64_t i = 0; i < len; ++i) dst[start + i] = static_cast<scalar_t>(z[i]);
  });
}

template <typename scalar_t>
void perturb_kernel(const scalar_t* src, const acc_type<scalar_t>* sig, scalar_t* dst, int64_t numel, int64_t d,
                    int64_t seed, int64_t offset) {
  using acc_t = acc_type<scalar_t>;
  for_each_noise_chunk(numel, seed, offset, [&](int64_t start, int64_t len, const float* z) {
    for_each_sample_piece(start, len, d, [&](int64_t n, int64_t rel, int64_t count) {
      const acc_t s = sig[n];
      const scalar_t* a = src + start + rel;
      scalar_t* o = dst + start + rel;
      const float* zz = z + rel;
      _Pragma("omp simd")
      for (int64_t i = 0; i < count; ++i)
        o[i] = static_cast<scalar_t>(static_cast<acc_t>(a[i]) + s * static_cast<acc_t>(zz[i]));
    });
  });
}

// Per-sample losses l[n] = 0.5 sigma[n]^p sum_d (scores + z / sigma)^2, in the arithmetic dtype, and,
// when unit_grad is not null, d l[n] / d scores = sigma^p (scores + z / sigma) into it (scores' dtype):
// the gradient from the same draw of z, so the backward need not draw it again.
// Each task sums one kChunk-piece of one sample; pieces are added per sample in a fixed order, so
// the result does not depend on the number of threads, nor on whether unit_grad is written.
template <typename scalar_t>
void dsm_loss_kernel(const scalar_t* src, const acc_type<scalar_t>* sig, acc_type<scalar_t>* out, scalar_t* unit_grad,
                     int64_t n_samples, int64_t d, int64_t seed, int64_t offset, double power) {
  using acc_t = acc_type<scalar_t>;
  const int64_t pieces = (d + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(n_samples * pieces));
  at::parallel_for(0, n_samples * pieces, /*grain_size=*/4, [&](int64_t begin, int64_t end) {
    alignas(64) float z[kChunk];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / pieces, start = n * d + (t % pieces) * kChunk;
      const int64_t len = std::min(kChunk, (n + 1) * d - start);
      fill_normal(z, len, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset + start));
      const acc_t inv_sigma = acc_t(1) / sig[n];
      const scalar_t* s = src + start;
      acc_t sum = 0;
      _Pragma("omp simd reduction(+ : sum)")
      for (int64_t i = 0; i < len; ++i) {
        const acc_t r = static_cast<acc_t>(s[i]) + static_cast<acc_t>(z[i]) * inv_sigma;
        sum += r * r;
      }
      if (unit_grad != nullptr) {  // a second loop over the chunk (in L1), so the sum keeps its bits
        const acc_t pw = static_cast<acc_t>(std::pow(static_cast<double>(sig[n]), power));
        scalar_t* o = unit_grad + start;
        _Pragma("omp simd")
        for (int64_t i = 0; i < len; ++i)
          o[i] = static_cast<scalar_t>(pw * (static_cast<acc_t>(s[i]) + static_cast<acc_t>(z[i]) * inv_sigma));
      }
      partial[t] = static_cast<double>(sum);
    }
  });
  for (int64_t n = 0; n < n_samples; ++n) {
    double total = 0;
    for (int64_t p = 0; p < pieces; ++p) total += partial[n * pieces + p];
    out[n] = static_cast<acc_t>(0.5 * std::pow(static_cast<double>(sig[n]), power) * total);
  }
}

// d l[n] / d scores[n, :] = sigma^p (scores + z / sigma), times the incoming grad of l[n].
template <typename scalar_t>
void dsm_loss_backward_kernel(const acc_type<scalar_t>* g, const scalar_t* src, const acc_type<scalar_t>* sig,
                              scalar_t* dst, int64_t numel, int64_t d, int64_t seed, int64_t offset, double power) {
  using acc_t = acc_type<scalar_t>;
  for_each_noise_chunk(numel, seed, offset, [&](int64_t start, int64_t len, const float* z) {
    for_each_sample_piece(start, len, d, [&](int64_t n, int64_t rel, int64_t count) {
      const acc_t a = g[n] * static_cast<acc_t>(std::pow(static_cast<double>(sig[n]), power));
      const acc_t b = a / sig[n];
      const scalar_t* s = src + start + rel;
      scalar_t* o = dst + start + rel;
      const float* zz = z + rel;
      _Pragma("omp simd")
      for (int64_t i = 0; i < count; ++i)
        o[i] = static_cast<scalar_t>(a * static_cast<acc_t>(s[i]) + b * static_cast<acc_t>(zz[i]));
    });
  });
}

template <typename scalar_t, typename score_t>
void langevin_kernel(scalar_t* x, const score_t* score, int64_t total, double step, double noise_scale, int64_t seed,
                     int64_t offset) {
  using acc_t = acc_type<scalar_t>;
  const acc_t st = static_cast<acc_t>(step), ns = static_cast<acc_t>(noise_scale);
  for_each_noise_chunk(total, seed, offset, [&](int64_t start, int64_t len, const float* z) {
    scalar_t* xx = x + start;
    const score_t* sc = score + start;
    _Pragma("omp simd")
    for (int64_t i = 0; i < len; ++i)
      xx[i] = static_cast<scalar_t>(static_cast<acc_t>(xx[i]) + st * static_cast<acc_t>(sc[i]) +
                                    ns * static_cast<acc_t>(z[i]));
  });
}

void philox_rows(const int64_t* w, int64_t* o, int64_t rows) {
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t* r = w + 6 * m;
    const Words4 u = philox4x32_10(static_cast<uint32_t>(r[0]), static_cast<uint32_t>(r[1]), static_cast<uint32_t>(r[2]),
                                   static_cast<uint32_t>(r[3]), static_cast<uint32_t>(r[4]), static_cast<uint32_t>(r[5]));
    for (int l = 0; l < 4; ++l) o[4 * m + l] = static_cast<int64_t>(u.w[l]);
  }
}

#define FASTSCORE_INSTANTIATE(scalar_t)                                                                          \
  template void normal_kernel<scalar_t>(scalar_t*, int64_t, int64_t, int64_t);                                 \
  template void perturb_kernel<scalar_t>(const scalar_t*, const acc_type<scalar_t>*, scalar_t*, int64_t, int64_t, \
                                         int64_t, int64_t);                                                     \
  template void dsm_loss_kernel<scalar_t>(const scalar_t*, const acc_type<scalar_t>*, acc_type<scalar_t>*,     \
                                          scalar_t*, int64_t, int64_t, int64_t, int64_t, double);               \
  template void dsm_loss_backward_kernel<scalar_t>(const acc_type<scalar_t>*, const scalar_t*,                 \
                                                   const acc_type<scalar_t>*, scalar_t*, int64_t, int64_t, int64_t, \
                                                   int64_t, double);                                            \
  template void langevin_kernel<scalar_t, scalar_t>(scalar_t*, const scalar_t*, int64_t, double, double, int64_t,  \
                                                    int64_t);
FASTSCORE_CPU_DTYPES(FASTSCORE_INSTANTIATE)
#undef FASTSCORE_INSTANTIATE
// langevin_step_ with a score in another dtype than x's: the score in x's arithmetic dtype.
template void langevin_kernel<c10::BFloat16, float>(c10::BFloat16*, const float*, int64_t, double, double, int64_t,
                                                    int64_t);
template void langevin_kernel<c10::Half, float>(c10::Half*, const float*, int64_t, double, double, int64_t, int64_t);

}  // namespace cpu
}  // namespace fastscore
