// The CPU kernels' interface: raw pointers and sizes, no tensors.
//
// The ops are split in two halves. ../ops.cpp holds the tensor-level half of every CPU op (argument
// checks, dtype conversion, allocation, the dispatch on the dtype) next to the op registration, and
// calls the loops declared here. cpu/*.cpp define the loops and instantiate them for the four float
// dtypes (FASTSCORE_CPU_DTYPES). That keeps the kernels' translation units on the scalar-type,
// parallel and vector headers alone: the tensor and dispatcher headers (ATen/core/Tensor.h,
// torch/library.h) take seconds to parse per translation unit, and they are parsed once, in ops.cpp.
// This matters for the first-use compile (fastscore/backend/ext.py).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace fastscore {
namespace cpu {

// The dtypes every kernel is instantiated for: the storage dtypes of AT_DISPATCH_FLOATING_TYPES_AND2(
// kBFloat16, kHalf, ...), whose arithmetic dtype (acc_t) is float, or double for double.
#define FASTSCORE_CPU_DTYPES(M) M(float) M(double) M(c10::BFloat16) M(c10::Half)

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

// ---- norm_forward, norm_backward (norm_forward.cpp, norm_backward.cpp) ----------------------------

// x as the norm kernels walk it: N samples of C planes of HW elements, NCHW or channels_last.
struct Shape {
  int64_t N, C, HW;
  bool channels_last;
};

// gamma, alpha and beta (null when absent), in the arithmetic dtype, each (N, C) or (C,), any strides:
// a parameter's value for (n, c) is data[r * stride + c * col_stride], stride 0 for (C,), where r is
// n, or rows[n] when rows is given (the lookup form: the parameters are tables of L rows, already
// checked to hold every rows[n]).
template <typename acc_t>
struct NormParams {
  const acc_t* gamma;
  const acc_t* alpha;
  const acc_t* beta;
  int64_t gamma_stride, alpha_stride, beta_stride;
  int64_t gamma_col, alpha_col, beta_col;
  const int64_t* rows = nullptr;
};

template <typename scalar_t>
struct NormForwardArgs {
  using acc_t = acc_type<scalar_t>;
  Shape s;
  double eps;
  int64_t act;
  const scalar_t* x;  // dense in its format (NCHW, or NHWC for channels_last)
  scalar_t* y;        // x's format
  acc_t* mean;        // (N, C) outputs: the statistics kept for backward
  acc_t* rstd;
  acc_t* scale;  // (N, C) scratch
  acc_t* shift;
  NormParams<acc_t> params;
};

template <typename scalar_t>
struct NormBackwardArgs {
  using acc_t = acc_type<scalar_t>;
  Shape s;
  double eps;
  int64_t act;
  const scalar_t* x;   // dense in its format
  const scalar_t* dy;  // x's format
  scalar_t* dx;        // x's format
  const acc_t* mean;   // (N, C): the forward's statistics
  const acc_t* rstd;
  acc_t *scale, *shift, *S1, *S2, *c1, *c2, *c3;  // (N, C) scratch
  acc_t *dgamma, *dalpha, *dbeta;                 // (N, C) outputs: per-sample parameter grads, row n at
                                                  // + n * grad_ld (rows of one (N, 2 or 3, C) buffer);
                                                  // dbeta null when there is no beta
  int64_t grad_ld;
  NormParams<acc_t> params;
};

template <typename scalar_t>
void norm_forward(const NormForwardArgs<scalar_t>& a);
template <typename scalar_t>
void norm_backward(const NormBackwardArgs<scalar_t>& a);

// ---- noise ops (noise_ops.cpp) --------------------------------------------------------------------
// numel elements in logical (N, C, H, W) order, d = numel / N per sample; normal number j of the
// stream is normal(seed, offset + j).

template <typename scalar_t>
void normal_kernel(scalar_t* out, int64_t numel, int64_t seed, int64_t offset);
template <typename scalar_t>
void perturb_kernel(const scalar_t* x, const acc_type<scalar_t>* sigma, scalar_t* out, int64_t numel, int64_t d,
                    int64_t seed, int64_t offset);
// loss: (n_samples,) per-sample losses in the arithmetic dtype; unit_grad: null, or numel elements that
// receive d loss[n] / d scores (the gradient for a unit incoming gradient), from the same noise.
template <typename scalar_t>
void dsm_loss_kernel(const scalar_t* scores, const acc_type<scalar_t>* sigma, acc_type<scalar_t>* loss,
                     scalar_t* unit_grad, int64_t n_samples, int64_t d, int64_t seed, int64_t offset, double power);
template <typename scalar_t>
void dsm_loss_backward_kernel(const acc_type<scalar_t>* grad, const scalar_t* scores, const acc_type<scalar_t>* sigma,
                              scalar_t* dscores, int64_t numel, int64_t d, int64_t seed, int64_t offset, double power);
// score_t: scalar_t, or acc_type<scalar_t> when the score came in another dtype.
template <typename scalar_t, typename score_t>
void langevin_kernel(scalar_t* x, const score_t* score, int64_t total, double step, double noise_scale, int64_t seed,
                     int64_t offset);
// rows of (c0, c1, c2, c3, k0, k1) words in, rows of 4 Philox4x32-10 output words out.
void philox_rows(const int64_t* words, int64_t* out, int64_t rows);

}  // namespace cpu
}  // namespace fastscore
