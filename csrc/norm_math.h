// The per-sample (cross-channel) part of CondInstanceNorm++ (DESIGN.md section 2), shared by the CPU
// and CUDA kernels. The per-plane statistics (mu, rstd over H*W) and the per-element passes live in
// the kernels; everything that only looks at the C means of one sample is here, written once: the
// per-channel formulas (forward_coeff, backward_coeff) and what they need of the sums over C
// (cross_channel_scale, sample_backward). The CPU sums over C in a loop (forward_coeffs,
// backward_coeffs); the GPU sums block-wide, one block per sample (../cuda/norm.cu).
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

// Parameters of one sample: pointers already moved to row n (row stride 0 for (C,) parameters), and
// each parameter's column stride, so strided views (slices of an embedding's (N, 3C) rows, transposes,
// expanded tensors) are read in place.
template <typename param_t>
struct SampleParams {
  const param_t* gamma;
  const param_t* alpha;
  const param_t* beta;  // may be null
  int64_t gamma_cs, alpha_cs, beta_cs;
  FS_HD_NM param_t g(int64_t c) const { return gamma[c * gamma_cs]; }
  FS_HD_NM param_t a(int64_t c) const { return alpha[c * alpha_cs]; }
  FS_HD_NM param_t b(int64_t c) const { return beta ? beta[c * beta_cs] : param_t(0); }
};

template <typename acc_t>
struct CrossChannel {
  acc_t m;  // mean over c of mu
  acc_t s;  // 1 / sqrt(v + eps), v the unbiased variance over c of mu (0 when C == 1)
};

// s from the sum over c of (mu - m)^2. The reductions themselves are the caller's: a loop on the CPU,
// a block-wide sum on the GPU (both centre on m before squaring).
template <typename acc_t>
FS_HD_NM acc_t cross_channel_scale(acc_t sum_sq_dev, int64_t C, double eps) {
  return C > 1 ? acc_t(1) / sqrt(sum_sq_dev / static_cast<acc_t>(C - 1) + static_cast<acc_t>(eps)) : acc_t(0);
}

template <typename acc_t>
FS_HD_NM CrossChannel<acc_t> cross_channel(const acc_t* mu, int64_t C, double eps) {
  acc_t sum = 0;
  for (int64_t c = 0; c < C; ++c) sum += mu[c];
  const acc_t m = sum / static_cast<acc_t>(C);
  acc_t ss = 0;
  for (int64_t c = 0; c < C; ++c) ss += (mu[c] - m) * (mu[c] - m);
  return {m, cross_channel_scale(ss, C, eps)};
}

// Forward coefficients of channel c: scale = gamma rstd, shift = gamma alpha muhat + beta.
template <typename acc_t, typename param_t>
FS_HD_NM void forward_coeff(int64_t c, acc_t mu, acc_t rstd, CrossChannel<acc_t> cc, const SampleParams<param_t>& p,
                            acc_t* scale, acc_t* shift) {
  const acc_t g = static_cast<acc_t>(p.g(c));
  const acc_t muhat = (mu - cc.m) * cc.s;
  *scale = g * rstd;
  *shift = g * static_cast<acc_t>(p.a(c)) * muhat + static_cast<acc_t>(p.b(c));
}

// Forward coefficients of one sample: scale[c], shift[c].
template <typename acc_t, typename param_t>
FS_HD_NM void forward_coeffs(const acc_t* mu, const acc_t* rstd, int64_t C, double eps, SampleParams<param_t> p,
                             acc_t* scale, acc_t* shift) {
  const CrossChannel<acc_t> cc = cross_channel(mu, C, eps);
  for (int64_t c = 0; c < C; ++c) forward_coeff(c, mu[c], rstd[c], cc, p, scale + c, shift + c);
}

// dL/dmuhat of channel c: alpha gamma S1.
template <typename acc_t, typename param_t>
FS_HD_NM acc_t dmuhat_of(int64_t c, acc_t S1, const SampleParams<param_t>& p) {
  return static_cast<acc_t>(p.a(c)) * static_cast<acc_t>(p.g(c)) * S1;
}

// What the backward of one sample needs besides its per-channel values: from sum_c dmuhat and
// sum_c dmuhat (mu - m), reduced by the caller.
template <typename acc_t>
struct SampleBackward {
  CrossChannel<acc_t> cc;
  acc_t mean_dm, s3_dot, inv_hw;
};

template <typename acc_t>
FS_HD_NM SampleBackward<acc_t> sample_backward(CrossChannel<acc_t> cc, acc_t sum_dm, acc_t dot, int64_t C, int64_t hw) {
  return {cc, sum_dm / static_cast<acc_t>(C),
          C > 1 ? cc.s * cc.s * cc.s * dot / static_cast<acc_t>(C - 1) : acc_t(0), acc_t(1) / static_cast<acc_t>(hw)};
}

// Backward of channel c (dgamma = S2 + alpha muhat S1, dalpha = gamma muhat S1, dbeta = S1) and the
// coefficients (c1, c2, c3) of dx. dbeta may be null (no beta: nothing to write).
template <typename acc_t, typename param_t>
FS_HD_NM void backward_coeff(int64_t c, int64_t C, acc_t mu, acc_t rstd, acc_t S1, acc_t S2, const SampleBackward<acc_t>& sb,
                             const SampleParams<param_t>& p, acc_t* dgamma, acc_t* dalpha, acc_t* dbeta, acc_t* c1,
                             acc_t* c2, acc_t* c3) {
  const acc_t g = static_cast<acc_t>(p.g(c));
  const acc_t a = static_cast<acc_t>(p.a(c));
  const acc_t d = mu - sb.cc.m;
  const acc_t muhat = d * sb.cc.s;
  if (dbeta) *dbeta = S1;
  *dgamma = S2 + a * muhat * S1;  // h = xhat + alpha * muhat
  *dalpha = g * muhat * S1;
  const acc_t dmu = C > 1 ? sb.cc.s * (a * g * S1 - sb.mean_dm) - d * sb.s3_dot : acc_t(0);
  const acc_t k1 = rstd * g;
  *c1 = k1;
  *c2 = -k1 * S2 * sb.inv_hw;
  *c3 = -k1 * S1 * sb.inv_hw + dmu * sb.inv_hw;
}

// Backward of one sample from the plane sums S1, S2: per-channel parameter grads of this sample and
// the coefficients of dx. `hw` is H * W.
template <typename acc_t, typename param_t>
FS_HD_NM void backward_coeffs(const acc_t* mu, const acc_t* rstd, const acc_t* S1, const acc_t* S2, int64_t C,
                              int64_t hw, double eps, SampleParams<param_t> p, acc_t* dgamma, acc_t* dalpha,
                              acc_t* dbeta, acc_t* c1, acc_t* c2, acc_t* c3) {
  const CrossChannel<acc_t> cc = cross_channel(mu, C, eps);
  acc_t sum_dm = 0, dot = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t dm = dmuhat_of(c, S1[c], p);
    sum_dm += dm;
    dot += dm * (mu[c] - cc.m);
  }
  const SampleBackward<acc_t> sb = sample_backward(cc, sum_dm, dot, C, hw);
  for (int64_t c = 0; c < C; ++c)
    backward_coeff(c, C, mu[c], rstd[c], S1[c], S2[c], sb, p, dgamma + c, dalpha + c, dbeta ? dbeta + c : nullptr,
                   c1 + c, c2 + c, c3 + c);
}

}  // namespace fastscore
