// CPU kernels of the noise-using ops: normal_ (the stream itself), perturb, dsm_loss (per-sample
// forward and its backward) and langevin_step_. Each walks x's logical (N, C, H, W) order in chunks
// of kChunk elements: one thread generates the chunk's normals into an L1 buffer, then applies the
// op to the chunk, so the noise never touches memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"
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

void normal_cpu(at::Tensor out, int64_t seed, int64_t offset) {
  constexpr const char* op = "fastscore::normal_";
  check_float_tensor(op, "out", out);
  check_seed_offset(op, seed, offset, out.numel());
  if (out.numel() == 0) return;
  at::Tensor dense = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dense.scalar_type(), "normal_cpu", [&] {
    scalar_t* dst = dense.data_ptr<scalar_t>();
    for_each_noise_chunk(dense.numel(), seed, offset, [&](int64_t start, int64_t len, const float* z) {
      for (int64_t i = 0; i < len; ++i) dst[start + i] = static_cast<scalar_t>(z[i]);
    });
  });
  if (!dense.is_same(out)) out.copy_(dense);
}

at::Tensor perturb_cpu(const at::Tensor& x_in, const at::Tensor& sigma_in, int64_t seed, int64_t offset) {
  constexpr const char* op = "fastscore::perturb";
  check_float_tensor(op, "x", x_in);
  const at::Tensor sigma = checked_sigma(op, sigma_in, x_in, "x");
  check_seed_offset(op, seed, offset, x_in.numel());
  const at::Tensor x = x_in.contiguous();  // the noise follows the logical order: walk it densely
  at::Tensor out = at::empty_like(x);
  const int64_t d = x.numel() / x.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "perturb_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const acc_t* sig = sigma.data_ptr<acc_t>();
    for_each_noise_chunk(x.numel(), seed, offset, [&](int64_t start, int64_t len, const float* z) {
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
  });
  return out;
}

// Per-sample losses l[n] = 0.5 sigma[n]^p sum_d (scores + z / sigma)^2, in the arithmetic dtype.
// Each task sums one kChunk-piece of one sample; pieces are added per sample in a fixed order, so
// the result does not depend on the number of threads.
at::Tensor dsm_loss_cpu(const at::Tensor& scores_in, const at::Tensor& sigma_in, int64_t seed, int64_t offset,
                        double power) {
  constexpr const char* op = "fastscore::dsm_loss";
  check_float_tensor(op, "scores", scores_in);
  const at::Tensor sigma = checked_sigma(op, sigma_in, scores_in, "scores");
  check_seed_offset(op, seed, offset, scores_in.numel());
  check_finite(op, "anneal_power", std::abs(power), false);
  const at::Tensor scores = scores_in.contiguous();
  const int64_t n_samples = scores.size(0), d = scores.numel() / n_samples;
  const int64_t pieces = (d + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(n_samples * pieces));
  at::Tensor loss = at::empty({n_samples}, scores.options().dtype(acc_dtype(scores.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "dsm_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = scores.data_ptr<scalar_t>();
    const acc_t* sig = sigma.data_ptr<acc_t>();
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
        partial[t] = static_cast<double>(sum);
      }
    });
    acc_t* out = loss.data_ptr<acc_t>();
    for (int64_t n = 0; n < n_samples; ++n) {
      double total = 0;
      for (int64_t p = 0; p < pieces; ++p) total += partial[n * pieces + p];
      out[n] = static_cast<acc_t>(0.5 * std::pow(static_cast<double>(sig[n]), power) * total);
    }
  });
  return loss;
}

// d l[n] / d scores[n, :] = sigma^p (scores + z / sigma), times the incoming grad of l[n].
at::Tensor dsm_loss_backward_cpu(const at::Tensor& grad_in, const at::Tensor& scores_in, const at::Tensor& sigma_in,
                                 int64_t seed, int64_t offset, double power) {
  constexpr const char* op = "fastscore::dsm_loss_backward";
  check_float_tensor(op, "scores", scores_in);
  const at::Tensor sigma = checked_sigma(op, sigma_in, scores_in, "scores");
  check_float_tensor(op, "grad", grad_in);
  TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == scores_in.size(0), op, ": grad must have shape (N,) = (",
              scores_in.size(0), ",), got ", grad_in.sizes());
  check_same_device(op, "grad", grad_in, "scores", scores_in);
  check_seed_offset(op, seed, offset, scores_in.numel());
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor grad = grad_in.to(acc_dtype(scores.scalar_type())).contiguous();
  at::Tensor dscores = at::empty_like(scores);
  const int64_t n_samples = scores.size(0), d = scores.numel() / n_samples;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "dsm_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = scores.data_ptr<scalar_t>();
    scalar_t* dst = dscores.data_ptr<scalar_t>();
    const acc_t* sig = sigma.data_ptr<acc_t>();
    const acc_t* g = grad.data_ptr<acc_t>();
    for_each_noise_chunk(scores.numel(), seed, offset, [&](int64_t start, int64_t len, const float* z) {
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
  });
  return dscores;
}

template <typename scalar_t, typename score_t>
void langevin_kernel(scalar_t* x, const score_t* score, int64_t total, double step, double noise_scale, int64_t seed,
                     int64_t offset) {
  using acc_t = at::opmath_type<scalar_t>;
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

void langevin_step_cpu(at::Tensor x, const at::Tensor& score_in, double step_size, int64_t seed, int64_t offset,
                       double noise_scale, const c10::optional<at::Tensor>& step_t,
                       const c10::optional<at::Tensor>& seed_t, const c10::optional<at::Tensor>& offset_t,
                       const c10::optional<at::Tensor>& noise_t) {
  constexpr const char* op = "fastscore::langevin_step_";
  check_float_tensor(op, "x", x);
  check_float_tensor(op, "score", score_in);
  TORCH_CHECK(score_in.sizes() == x.sizes(), op, ": score must have x's shape ", x.sizes(), ", got ",
              score_in.sizes());
  check_same_device(op, "score", score_in, "x", x);
  check_scalar_tensor(op, "step_size", step_t, x, false);
  check_scalar_tensor(op, "seed", seed_t, x, true);
  check_scalar_tensor(op, "offset", offset_t, x, true);
  check_scalar_tensor(op, "noise_scale", noise_t, x, false);
  // On the CPU the tensor forms are simply read.
  if (step_t.has_value() && step_t->defined()) step_size = step_t->item<double>();
  if (seed_t.has_value() && seed_t->defined()) seed = seed_t->item<int64_t>();
  if (offset_t.has_value() && offset_t->defined()) offset = offset_t->item<int64_t>();
  if (noise_t.has_value() && noise_t->defined()) {
    noise_scale = noise_t->item<double>();
  } else if (noise_scale < 0) {
    check_finite(op, "step_size", step_size, false);
    noise_scale = std::sqrt(2.0 * step_size);
  }
  check_finite(op, "step_size", step_size, false);
  check_finite(op, "noise_scale", noise_scale, false);
  check_seed_offset(op, seed, offset, x.numel());
  if (x.numel() == 0) return;
  // A non-contiguous x is updated through a dense copy and written back, so x itself changes.
  at::Tensor dense = x.is_contiguous() ? x : x.contiguous();
  // score in x's dtype or, if it differs, in the arithmetic dtype: never rounded below what x keeps.
  const at::ScalarType score_dtype = score_in.scalar_type() == x.scalar_type() ? x.scalar_type()
                                                                               : acc_dtype(x.scalar_type());
  const at::Tensor score = score_in.to(score_dtype).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dense.scalar_type(), "langevin_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (score.scalar_type() == dense.scalar_type()) {
      langevin_kernel(dense.data_ptr<scalar_t>(), score.data_ptr<scalar_t>(), dense.numel(), step_size, noise_scale,
                      seed, offset);
    } else {
      langevin_kernel(dense.data_ptr<scalar_t>(), score.data_ptr<acc_t>(), dense.numel(), step_size, noise_scale,
                      seed, offset);
    }
  });
  if (!dense.is_same(x)) x.copy_(dense);
}

// The raw Philox4x32-10 words of (counter, key) rows, for the known-answer tests: words is (M, 6)
// int64 holding uint32 values (c0, c1, c2, c3, k0, k1); the result is (M, 4) int64.
at::Tensor philox_cpu(const at::Tensor& words_in) {
  constexpr const char* op = "fastscore::philox4x32_10";
  TORCH_CHECK(words_in.scalar_type() == at::kLong && words_in.dim() == 2 && words_in.size(1) == 6, op,
              ": words must be an int64 tensor of shape (M, 6), got ", words_in.scalar_type(), " ", words_in.sizes());
  const at::Tensor words = words_in.contiguous();
  at::Tensor out = at::empty({words.size(0), 4}, words.options());
  const int64_t* w = words.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t m = 0; m < words.size(0); ++m) {
    const int64_t* r = w + 6 * m;
    const Words4 u = philox4x32_10(static_cast<uint32_t>(r[0]), static_cast<uint32_t>(r[1]), static_cast<uint32_t>(r[2]),
                                   static_cast<uint32_t>(r[3]), static_cast<uint32_t>(r[4]), static_cast<uint32_t>(r[5]));
    for (int l = 0; l < 4; ++l) o[4 * m + l] = static_cast<int64_t>(u.w[l]);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastscore, CPU, m) {
  m.impl("normal_", &normal_cpu);
  m.impl("perturb", &perturb_cpu);
  m.impl("dsm_loss", &dsm_loss_cpu);
  m.impl("dsm_loss_backward", &dsm_loss_backward_cpu);
  m.impl("langevin_step_", &langevin_step_cpu);
  m.impl("philox4x32_10", &philox_cpu);
}

}  // namespace cpu
}  // namespace fastscore
