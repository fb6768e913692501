// The per-sample (cross-channel) part of CondInstanceNorm++ (DESIGN.md section 2), shared by the CPU
// and CUDA kernels. The per-plane statistics (mu, rstd over H*W) and the per-element passes live in
// the kernels; everything that only looks at the C means of one sample is here, written once.
//
// With d[c] = mu[c] - m, s = 1 / sqrt(v + eps), muhat[c] = d[c] * s, the forward is
//     pre = scale[c] * (x - mu[c]) + shift[c],   scale = gamma * rstd,   shift = gamma * alpha * muhat + beta
// and, with S1[c] = sum over the plane of dpre and S2[c] = sum of dpre * xhat (xhat = (x - mu) * rstd),
//     dx = c1[c] * dpre + c2[c] * xhat + c3[c]
//     c1 = rstd * gamma,  c2 = -c1 * S2 / HW,  c3 = -c1 * S1 / HW + dmu[c] / HW
//     dmu = s * (dmuhat - mean(dmuhat)) - s^3 * d * sum(dmuhat * d) / (C - 1),  dmuhat = alpha * gamma * S1
// (the mean over C and the unbiased variance over C of the plane means, differentiated).
#pragma once

#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#define FS_HD_NM __host__ __device__ __forceinline__
#else
#define FS_HD_NM inline
#endif

namespace fastscore {

#if !defined(__CUDACC__)
using std::sqrt;
#endif

enum Activation : int64_t { kActNone = 0, kActElu = 1, kActRelu = 2 };

// Parameters of one sample: pointers already moved to row n for (N, C) parameters, row 0 for (C,).
template <typename param_t>
struct SampleParams {
  const param_t* gamma;
  const param_t* alpha;
  const param_t* beta;  // may be null
};

template <typename acc_t>
struct CrossChannel {
  acc_t m;  // mean over c of mu
  acc_t s;  // 1 / sqrt(v + eps), v the unbiased variance over c of mu (0 when C == 1)
};

template <typename acc_t>
FS_HD_NM CrossChannel<acc_t> cross_channel(const acc_t* mu, int64_t C, double eps) {
  acc_t sum = 0;
  for (int64_t c = 0; c < C; ++c) sum += mu[c];
  const acc_t m = sum / static_cast<acc_t>(C);
  acc_t ss = 0;
  for (int64_t c = 0; c < C; ++c) ss += (mu[c] - m) * (mu[c] - m);
  acc_t s = 0;
  if (C > 1) s = acc_t(1) / sqrt(ss / static_cast<acc_t>(C - 1) + static_cast<acc_t>(eps));
  return {m, s};
}

// Forward coefficients of one sample: scale[c], shift[c] (and muhat[c] if asked).
template <typename acc_t, typename param_t>
FS_HD_NM void forward_coeffs(const acc_t* mu, const acc_t* rstd, int64_t C, double eps, SampleParams<param_t> p,
                             acc_t* scale, acc_t* shift) {
  const CrossChannel<acc_t> cc = cross_channel(mu, C, eps);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t g = static_cast<acc_t>(p.gamma[c]);
    const acc_t a = static_cast<acc_t>(p.alpha[c]);
    const acc_t b = p.beta ? static_cast<acc_t>(p.beta[c]) : acc_t(0);
    const acc_t muhat = (mu[c] - cc.m) * cc.s;
    scale[c] = g * rstd[c];
    shift[c] = g * a * muhat + b;
  }
}

// Backward of one sample from the plane sums S1, S2 (dgamma = S2 + alpha muhat S1, dalpha = gamma muhat S1,
// dbeta = S1): per-channel parameter grads of this sample and the coefficients (c1, c2, c3) of dx.
// `hw` is H * W. dbeta may be null (no beta: nothing to write).
template <typename acc_t, typename param_t>
FS_HD_NM void backward_coeffs(const acc_t* mu, const acc_t* rstd, const acc_t* S1, const acc_t* S2, int64_t C,
                              int64_t hw, double eps, SampleParams<param_t> p, acc_t* dgamma, acc_t* dalpha,
                              acc_t* dbeta, acc_t* c1, acc_t* c2, acc_t* c3) {
  const CrossChannel<acc_t> cc = cross_channel(mu, C, eps);
  // sum over c of dmuhat and of dmuhat * d, for the cross-channel normalisation's backward.
  acc_t sum_dm = 0, dot = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t dm = static_cast<acc_t>(p.alpha[c]) * static_cast<acc_t>(p.gamma[c]) * S1[c];
    sum_dm += dm;
    dot += dm * (mu[c] - cc.m);
  }
  const acc_t mean_dm = sum_dm / static_cast<acc_t>(C);
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(hw);
  const acc_t s3_dot = C > 1 ? cc.s * cc.s * cc.s * dot / static_cast<acc_t>(C - 1) : acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t g = static_cast<acc_t>(p.gamma[c]);
    const acc_t a = static_cast<acc_t>(p.alpha[c]);
    const acc_t d = mu[c] - cc.m;
    const acc_t muhat = d * cc.s;
    if (dbeta) dbeta[c] = S1[c];
    dgamma[c] = S2[c] + a * muhat * S1[c];  // h = xhat + alpha * muhat
    dalpha[c] = g * muhat * S1[c];
    const acc_t dmu = C > 1 ? cc.s * (a * g * S1[c] - mean_dm) - d * s3_dot : acc_t(0);
    c1[c] = rstd[c] * g;
    c2[c] = -c1[c] * S2[c] * inv_hw;
    c3[c] = -c1[c] * S1[c] * inv_hw + dmu * inv_hw;
  }
}

}  // namespace fastscore
