// Pieces shared by the forward (norm_forward.cpp) and backward (norm_backward.cpp) CPU kernels of
// cond_instance_norm_plus: block sizes, the per-sample parameter rows, the fusion decision and the
// forward coefficients. Included by those two files only; the unnamed namespace keeps every helper
// local to each, as when both passes lived in one file.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "../norm_math.h"
#include "kernels.h"

namespace fastscore {
namespace cpu {
namespace {

constexpr int64_t kSumBlock = 256;     // elements (NCHW) or rows (NHWC) summed in acc_t before going to double
constexpr int64_t kChannelBlock = 64;  // channels per channels_last statistics task

template <typename acc_t>
SampleParams<acc_t> sample_params(const NormParams<acc_t>& p, int64_t n) {
  if (p.rows) n = p.rows[n];
  return {p.gamma + n * p.gamma_stride, p.alpha + n * p.alpha_stride, p.beta ? p.beta + n * p.beta_stride : nullptr,
          p.gamma_col, p.alpha_col, p.beta_col};
}

// NCHW with at least one sample per thread and a sample small enough for L2 (x and dy in the backward):
// one task per sample does every pass of that sample, so x is read from DRAM once, not twice.
constexpr int64_t kFuseBytes = int64_t(1) << 20;

inline bool fuse_per_sample(const Shape& s, size_t bytes_per_sample_element) {
  return !s.channels_last && s.N >= at::get_num_threads() &&
         s.C * s.HW * static_cast<int64_t>(bytes_per_sample_element) <= kFuseBytes;
}

template <typename acc_t>
void compute_forward_coeffs(const Shape& s, double eps, const acc_t* mu, const acc_t* rstd, const NormParams<acc_t>& p,
                            acc_t* scale, acc_t* shift) {
  at::parallel_for(0, s.N, 16, [&](int64_t nb, int64_t ne) {
    for (int64_t n = nb; n < ne; ++n) {
      forward_coeffs(mu + n * s.C, rstd + n * s.C, s.C, eps, sample_params(p, n), scale + n * s.C, shift + n * s.C);
    }
  });
}

}  // namespace
}  // namespace cpu
}  // namespace fastscore
