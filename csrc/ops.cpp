// The op library: the schemas of torch.ops.fastscore_ext.* (one TORCH_LIBRARY for every device) and
// the tensor-level half of every CPU op (argument checks, dtype conversion, allocation, the dispatch on
// x's dtype), registered for the CPU dispatch key. The CPU loops are in cpu/*.cpp, behind the raw
// pointer interface of cpu/kernels.h; the CUDA ops register themselves in cuda/*.cu.
//
// The ops are the backend primitives of fastscore/backend/protocol.py, one schema for every device:
// they compute and nothing more. The public ops (torch.ops.fastscore.*, fastscore/ops/) check their
// inputs, differentiate, sum per-sample parameter gradients for shared parameters and reduce losses;
// fastscore/backend/ext.py adds fake (meta) kernels. The checks here stay, so a direct call of
// torch.ops.fastscore_ext.* with bad arguments fails with a message instead of reading out of bounds.
//
// This is the one C++ translation unit that parses the tensor and dispatcher headers (torch/library.h);
// the kernels' translation units stay light and compile in parallel with it (cpu/kernels.h).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/EmptyTensor.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "checks.h"
#include "cpu/kernels.h"

TORCH_LIBRARY(fastscore_ext, m) {
  // y, and the float32 (float64 for float64 x) per-plane mean and 1 / sqrt(var + eps) kept for backward.
  m.def("norm_forward(Tensor x, Tensor gamma, Tensor alpha, Tensor? beta, float eps, int activation)"
        " -> (Tensor, Tensor, Tensor)");
  // dx, and the parameter grads per sample in one (N, K, C) tensor in the arithmetic dtype, rows
  // dgamma, dalpha (and dbeta: K = 3 with beta, 2 without), whatever the parameters' shapes (the caller
  // sums over N for (C,) parameters). One buffer, laid out as an embedding's (gamma | alpha | beta) rows,
  // so the gradient of such an embedding needs no gather.
  m.def("norm_backward(Tensor grad_y, Tensor x, Tensor gamma, Tensor alpha, Tensor? beta,"
        " Tensor mean, Tensor rstd, float eps, int activation) -> (Tensor, Tensor)");
  // The lookup form of both: sample n's (gamma | alpha | beta) (or (gamma | alpha)) is row labels[n] of table
  // (L, 3C) (or (L, 2C)), an embedding's weight, read in place by the kernels (no gathered copy). The
  // backward's parameter grads are per sample, as above; the caller adds them into the table's rows.
  m.def("norm_forward_lookup(Tensor x, Tensor labels, Tensor table, float eps, int activation)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("norm_backward_lookup(Tensor grad_y, Tensor x, Tensor labels, Tensor table, Tensor mean, Tensor rstd,"
        " float eps, int activation) -> (Tensor, Tensor)");
  // seed_t / offset_t, one-element int64 tensors on x's device, replace seed / offset when given: the
  // CUDA kernels read them on the device (a captured CUDA graph can advance them), never the host.
  m.def("perturb(Tensor x, Tensor sigma, int seed, int offset, Tensor? seed_t=None, Tensor? offset_t=None)"
        " -> Tensor");
  // Per-sample losses (N,), float32 (float64 for float64 scores); the reduction is done by the caller.
  m.def("dsm_per_sample(Tensor scores, Tensor sigma, int seed, int offset, float anneal_power,"
        " Tensor? seed_t=None, Tensor? offset_t=None) -> Tensor");
  // Their mean (reduction 1) or sum (2) as a 0-d tensor in the same dtype, in one call.
  m.def("dsm_reduced(Tensor scores, Tensor sigma, int seed, int offset, float anneal_power, int reduction,"
        " Tensor? seed_t=None, Tensor? offset_t=None) -> Tensor");
  // The per-sample losses and, from the same noise, d loss[n] / d scores (scores' dtype, contiguous).
  m.def("dsm_per_sample_and_grad(Tensor scores, Tensor sigma, int seed, int offset, float anneal_power,"
        " Tensor? seed_t=None, Tensor? offset_t=None) -> (Tensor, Tensor)");
  // d scores for a gradient (N,) of the per-sample losses.
  m.def("dsm_backward(Tensor grad, Tensor scores, Tensor sigma, int seed, int offset, float anneal_power,"
        " Tensor? seed_t=None, Tensor? offset_t=None) -> Tensor");
  // noise_scale < 0 means sqrt(2 step_size). The optional one-element tensors (on x's device) override
  // the numbers and are read by the kernel, never by the host: a captured CUDA graph can change them.
  m.def("langevin_step_(Tensor(a!) x, Tensor score, float step_size, int seed, int offset, float noise_scale,"
        " Tensor? step_size_t=None, Tensor? seed_t=None, Tensor? offset_t=None, Tensor? noise_scale_t=None) -> ()");
  m.def("normal_(Tensor(a!) out, int seed, int offset) -> ()");
  m.def("philox4x32_10(Tensor words) -> Tensor");
}

namespace fastscore {
namespace cpu {
namespace {

// Allocation on the CPU without a trip through the dispatcher (about half a microsecond a tensor, which
// is most of what a small op costs): these kernels only ever allocate CPU tensors. empty_like keeps x's
// strides, as at::empty_like does for the dense tensors the kernels write.
at::Tensor empty(at::IntArrayRef size, const at::TensorOptions& options) {
  return at::detail::empty_cpu(size, options.dtype().toScalarType(), false, std::nullopt);
}

at::Tensor empty_like(const at::Tensor& x) {
  return at::detail::empty_strided_cpu(x.sizes(), x.strides(), x.scalar_type());
}

// ---- norm_forward, norm_backward ----------------------------------------------------------------------

Shape shape_of(const at::Tensor& x) {
  return {x.size(0), x.size(1), x.size(2) * x.size(3), use_channels_last(x)};
}

// The checked parameters (arithmetic dtype, any strides) as the kernels read them: three (N, C) or (C,)
// tensors by their row and column strides ((C,) as one row shared by every sample: row stride 0), or
// the lookup form, a table (L, K*C) whose row labels[n] holds sample n's K blocks of C columns.
struct ParamSource {
  at::Tensor gamma, alpha;
  c10::optional<at::Tensor> beta;
  at::Tensor table, labels;  // the lookup form when table is defined
  int64_t K = 0, C = 0;

  bool has_beta() const { return table.defined() ? K == 3 : beta.has_value(); }

  template <typename acc_t>
  NormParams<acc_t> params() const {
    if (table.defined()) {
      const acc_t* base = table.data_ptr<acc_t>();
      const int64_t row = table.stride(0), col = table.stride(1);
      return {base, base + C * col, K == 3 ? base + 2 * C * col : nullptr, row, row, row, col, col, col,
              labels.data_ptr<int64_t>()};
    }
    auto row = [](const at::Tensor& t) { return t.dim() == 2 ? t.stride(0) : int64_t(0); };
    auto col = [](const at::Tensor& t) { return t.stride(t.dim() - 1); };
    const at::Tensor* b = beta.has_value() ? &*beta : nullptr;
    return {gamma.data_ptr<acc_t>(), alpha.data_ptr<acc_t>(), b ? b->data_ptr<acc_t>() : nullptr,
            row(gamma), row(alpha), b ? row(*b) : int64_t(0),
            col(gamma), col(alpha), b ? col(*b) : int64_t(0)};
  }
};

ParamSource plain_params(const char* op, const at::Tensor& gamma, const at::Tensor& alpha,
                         const c10::optional<at::Tensor>& beta, const at::Tensor& x) {
  ParamSource src;
  src.gamma = checked_param(op, "gamma", gamma, x);
  src.alpha = checked_param(op, "alpha", alpha, x);
  if (beta.has_value() && beta->defined()) src.beta = checked_param(op, "beta", *beta, x);
  return src;
}

// On the CPU every label is checked here, before any kernel reads a row by it.
ParamSource lookup_params(const char* op, const at::Tensor& labels, const at::Tensor& table, const at::Tensor& x) {
  const Lookup lookup = checked_lookup(op, labels, table, x);
  const int64_t rows = lookup.table.size(0);
  const int64_t* r = lookup.labels.data_ptr<int64_t>();
  for (int64_t n = 0; n < lookup.labels.size(0); ++n) {
    TORCH_CHECK_INDEX(r[n] >= 0 && r[n] < rows, op, ": labels must be in [0, ", rows,
                      ") (the table's rows), got labels[", n, "] = ", r[n]);
  }
  ParamSource src;
  src.table = lookup.table;
  src.labels = lookup.labels;
  src.K = lookup.K;
  src.C = x.size(1);
  return src;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(const char* op, const at::Tensor& x_in, const ParamSource& src,
                                                       double eps, int64_t act) {
  const at::Tensor x = dense_input(x_in);
  const Shape s = shape_of(x);
  const auto acc = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor y = empty_like(x);
  at::Tensor mean = empty({s.N, s.C}, acc), rstd = empty({s.N, s.C}, acc);
  at::Tensor coeffs = empty({2, s.N, s.C}, acc);  // scale, shift: scratch
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "norm_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    acc_t* scale = coeffs.data_ptr<acc_t>();
    norm_forward<scalar_t>({s, eps, act, x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), mean.data_ptr<acc_t>(),
                            rstd.data_ptr<acc_t>(), scale, scale + s.N * s.C, src.params<acc_t>()});
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_forward_cpu(const at::Tensor& x, const at::Tensor& gamma,
                                                                const at::Tensor& alpha,
                                                                const c10::optional<at::Tensor>& beta, double eps,
                                                                int64_t act) {
  constexpr const char* op = "fastscore_ext::norm_forward";
  check_norm_x(op, x, eps, act);
  return run_forward(op, x, plain_params(op, gamma, alpha, beta, x), eps, act);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_forward_lookup_cpu(const at::Tensor& x, const at::Tensor& labels,
                                                                       const at::Tensor& table, double eps,
                                                                       int64_t act) {
  constexpr const char* op = "fastscore_ext::norm_forward_lookup";
  check_norm_x(op, x, eps, act);
  return run_forward(op, x, lookup_params(op, labels, table, x), eps, act);
}

std::tuple<at::Tensor, at::Tensor> run_backward(const char* op, const at::Tensor& grad_y, const at::Tensor& x_in,
                                            const ParamSource& src, const at::Tensor& mean_in,
                                            const at::Tensor& rstd_in, double eps, int64_t act) {
  check_float_tensor(op, "grad_y", grad_y);
  TORCH_CHECK(grad_y.sizes() == x_in.sizes(), op, ": grad_y must have x's shape ", x_in.sizes(), ", got ",
              grad_y.sizes());
  check_same_device(op, "grad_y", grad_y, "x", x_in);
  const int64_t N = x_in.size(0), C = x_in.size(1);
  const at::ScalarType stat_type = acc_dtype(x_in.scalar_type());
  auto check_stat = [&](const char* name, const at::Tensor& t) {
    check_float_tensor(op, name, t);
    TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.size(1) == C && t.scalar_type() == stat_type, op, ": ", name,
                " must be the forward's (N, C) = (", N, ", ", C, ") ", stat_type, " statistics, got ", t.scalar_type(),
                " ", t.sizes());
    check_same_device(op, name, t, "x", x_in);
  };
  check_stat("mean", mean_in);
  check_stat("rstd", rstd_in);
  const at::Tensor x = dense_input(x_in);
  const Shape s = shape_of(x);
  const at::Tensor dy = as_dtype(grad_y, x.scalar_type())
                            .contiguous(s.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const auto acc = x.options().dtype(stat_type);
  at::Tensor dx = empty_like(x);
  at::Tensor scratch = empty({7, N, C}, acc);  // scale, shift, S1, S2, c1, c2, c3: (N, C) each
  const bool has_beta = src.has_beta();
  const int64_t K = has_beta ? 3 : 2;
  at::Tensor dparams = empty({N, K, C}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "norm_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    acc_t* nc = scratch.data_ptr<acc_t>();
    const int64_t k = N * C;
    norm_backward<scalar_t>({s, eps, act, x.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                             mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>(), nc, nc + k, nc + 2 * k, nc + 3 * k,
                             nc + 4 * k, nc + 5 * k, nc + 6 * k, dparams.data_ptr<acc_t>(),
                             dparams.data_ptr<acc_t>() + C, has_beta ? dparams.data_ptr<acc_t>() + 2 * C : nullptr,
                             K * C, src.params<acc_t>()});
  });
  return {dx, dparams};
}

std::tuple<at::Tensor, at::Tensor> norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& alpha,
    const c10::optional<at::Tensor>& beta, const at::Tensor& mean, const at::Tensor& rstd, double eps, int64_t act) {
  constexpr const char* op = "fastscore_ext::norm_backward";
  check_norm_x(op, x, eps, act);
  return run_backward(op, grad_y, x, plain_params(op, gamma, alpha, beta, x), mean, rstd, eps, act);
}

std::tuple<at::Tensor, at::Tensor> norm_backward_lookup_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                            const at::Tensor& labels, const at::Tensor& table,
                                                            const at::Tensor& mean, const at::Tensor& rstd, double eps,
                                                            int64_t act) {
  constexpr const char* op = "fastscore_ext::norm_backward_lookup";
  check_norm_x(op, x, eps, act);
  return run_backward(op, grad_y, x, lookup_params(op, labels, table, x), mean, rstd, eps, act);
}

// ---- noise ops --------------------------------------------------------------------------------------

// seed and offset, replaced by the values of seed_t / offset_t when given (on the CPU reading a
// tensor is no device synchronisation), then checked.
void read_stream_position(const char* op, const c10::optional<at::Tensor>& seed_t,
                          const c10::optional<at::Tensor>& offset_t, const at::Tensor& x, int64_t& seed,
                          int64_t& offset) {
  check_scalar_tensor(op, "seed", seed_t, x, true);
  check_scalar_tensor(op, "offset", offset_t, x, true);
  if (seed_t.has_value() && seed_t->defined()) seed = seed_t->item<int64_t>();
  if (offset_t.has_value() && offset_t->defined()) offset = offset_t->item<int64_t>();
  check_seed_offset(op, seed, offset, x.numel());
}

void normal_cpu(at::Tensor out, int64_t seed, int64_t offset) {
  constexpr const char* op = "fastscore_ext::normal_";
  check_float_tensor(op, "out", out);
  check_seed_offset(op, seed, offset, out.numel());
  if (out.numel() == 0) return;
  at::Tensor dense = out.is_contiguous() ? out : empty(out.sizes(), out.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dense.scalar_type(), "normal_cpu", [&] {
    normal_kernel(dense.data_ptr<scalar_t>(), dense.numel(), seed, offset);
  });
  if (!dense.is_same(out)) out.copy_(dense);
}

at::Tensor perturb_cpu(const at::Tensor& x_in, const at::Tensor& sigma_in, int64_t seed, int64_t offset,
                       const c10::optional<at::Tensor>& seed_t, const c10::optional<at::Tensor>& offset_t) {
  constexpr const char* op = "fastscore_ext::perturb";
  check_float_tensor(op, "x", x_in);
  const at::Tensor sigma = checked_sigma(op, sigma_in, x_in, "x");
  read_stream_position(op, seed_t, offset_t, x_in, seed, offset);
  const at::Tensor x = x_in.contiguous();  // the noise follows the logical order: walk it densely
  at::Tensor out = empty_like(x);
  const int64_t d = x.numel() / x.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "perturb_cpu", [&] {
    perturb_kernel(x.data_ptr<scalar_t>(), sigma.data_ptr<acc_type<scalar_t>>(), out.data_ptr<scalar_t>(), x.numel(),
                   d, seed, offset);
  });
  return out;
}

// The per-sample losses and, with `with_grad`, d loss[n] / d scores from the same draw of the noise.
std::tuple<at::Tensor, at::Tensor> dsm_losses_cpu(const char* op, const at::Tensor& scores_in, const at::Tensor& sigma_in,
                                                  int64_t seed, int64_t offset, double power,
                                                  const c10::optional<at::Tensor>& seed_t,
                                                  const c10::optional<at::Tensor>& offset_t, bool with_grad) {
  check_float_tensor(op, "scores", scores_in);
  const at::Tensor sigma = checked_sigma(op, sigma_in, scores_in, "scores");
  read_stream_position(op, seed_t, offset_t, scores_in, seed, offset);
  check_finite(op, "anneal_power", std::abs(power), false);
  const at::Tensor scores = scores_in.contiguous();
  const int64_t n_samples = scores.size(0), d = scores.numel() / n_samples;
  at::Tensor loss = empty({n_samples}, scores.options().dtype(acc_dtype(scores.scalar_type())));
  at::Tensor unit_grad = with_grad ? empty_like(scores) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "dsm_losses_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    dsm_loss_kernel(scores.data_ptr<scalar_t>(), sigma.data_ptr<acc_t>(), loss.data_ptr<acc_t>(),
                    with_grad ? unit_grad.data_ptr<scalar_t>() : nullptr, n_samples, d, seed, offset, power);
  });
  return {loss, unit_grad};
}

at::Tensor dsm_per_sample_cpu(const at::Tensor& scores, const at::Tensor& sigma, int64_t seed, int64_t offset,
                              double power, const c10::optional<at::Tensor>& seed_t,
                              const c10::optional<at::Tensor>& offset_t) {
  return std::get<0>(dsm_losses_cpu("fastscore_ext::dsm_per_sample", scores, sigma, seed, offset, power, seed_t,
                                    offset_t, false));
}

// The per-sample losses' mean (reduction 1) or sum (2), a 0-d tensor in the arithmetic dtype, summed in
// double in the same call: for a small batch a separate torch reduction costs more host time than the loss.
at::Tensor dsm_reduced_cpu(const at::Tensor& scores, const at::Tensor& sigma, int64_t seed, int64_t offset,
                           double power, int64_t reduction, const c10::optional<at::Tensor>& seed_t,
                           const c10::optional<at::Tensor>& offset_t) {
  constexpr const char* op = "fastscore_ext::dsm_reduced";
  check_reduction(op, reduction);
  const at::Tensor losses = std::get<0>(dsm_losses_cpu(op, scores, sigma, seed, offset, power, seed_t, offset_t,
                                                       false));
  at::Tensor out = empty({}, losses.options());
  AT_DISPATCH_FLOATING_TYPES(losses.scalar_type(), "dsm_reduced_cpu", [&] {
    const scalar_t* l = losses.data_ptr<scalar_t>();
    const int64_t n = losses.numel();
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += static_cast<double>(l[i]);
    *out.data_ptr<scalar_t>() = static_cast<scalar_t>(reduction == 1 ? total / static_cast<double>(n) : total);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dsm_per_sample_and_grad_cpu(
    const at::Tensor& scores, const at::Tensor& sigma, int64_t seed, int64_t offset, double power,
    const c10::optional<at::Tensor>& seed_t, const c10::optional<at::Tensor>& offset_t) {
  return dsm_losses_cpu("fastscore_ext::dsm_per_sample_and_grad", scores, sigma, seed, offset, power, seed_t,
                        offset_t, true);
}

at::Tensor dsm_backward_cpu(const at::Tensor& grad_in, const at::Tensor& scores_in, const at::Tensor& sigma_in,
                            int64_t seed, int64_t offset, double power, const c10::optional<at::Tensor>& seed_t,
                            const c10::optional<at::Tensor>& offset_t) {
  constexpr const char* op = "fastscore_ext::dsm_backward";
  check_float_tensor(op, "scores", scores_in);
  const at::Tensor sigma = checked_sigma(op, sigma_in, scores_in, "scores");
  check_float_tensor(op, "grad", grad_in);
  TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == scores_in.size(0), op, ": grad must have shape (N,) = (",
              scores_in.size(0), ",), got ", grad_in.sizes());
  check_same_device(op, "grad", grad_in, "scores", scores_in);
  read_stream_position(op, seed_t, offset_t, scores_in, seed, offset);
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor grad = as_dtype(grad_in, acc_dtype(scores.scalar_type())).contiguous();
  at::Tensor dscores = empty_like(scores);
  const int64_t n_samples = scores.size(0), d = scores.numel() / n_samples;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "dsm_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    dsm_loss_backward_kernel(grad.data_ptr<acc_t>(), scores.data_ptr<scalar_t>(), sigma.data_ptr<acc_t>(),
                             dscores.data_ptr<scalar_t>(), scores.numel(), d, seed, offset, power);
  });
  return dscores;
}

void langevin_step_cpu(at::Tensor x, const at::Tensor& score_in, double step_size, int64_t seed, int64_t offset,
                       double noise_scale, const c10::optional<at::Tensor>& step_t,
                       const c10::optional<at::Tensor>& seed_t, const c10::optional<at::Tensor>& offset_t,
                       const c10::optional<at::Tensor>& noise_t) {
  constexpr const char* op = "fastscore_ext::langevin_step_";
  check_float_tensor(op, "x", x);
  check_float_tensor(op, "score", score_in);
  TORCH_CHECK(score_in.sizes() == x.sizes(), op, ": score must have x's shape ", x.sizes(), ", got ",
              score_in.sizes());
  check_same_device(op, "score", score_in, "x", x);
  check_scalar_tensor(op, "step_size", step_t, x, false);
  check_scalar_tensor(op, "noise_scale", noise_t, x, false);
  read_stream_position(op, seed_t, offset_t, x, seed, offset);
  // On the CPU the tensor forms are simply read.
  if (step_t.has_value() && step_t->defined()) step_size = step_t->item<double>();
  if (noise_t.has_value() && noise_t->defined()) {
    noise_scale = noise_t->item<double>();
  } else if (noise_scale < 0) {
    check_finite(op, "step_size", step_size, false);
    noise_scale = std::sqrt(2.0 * step_size);
  }
  check_finite(op, "step_size", step_size, false);
  check_finite(op, "noise_scale", noise_scale, false);
  if (x.numel() == 0) return;
  // A non-contiguous x is updated through a dense copy and written back, so x itself changes.
  at::Tensor dense = x.is_contiguous() ? x : x.contiguous();
  // score in x's dtype or, if it differs, in the arithmetic dtype: never rounded below what x keeps.
  const at::ScalarType score_dtype = score_in.scalar_type() == x.scalar_type() ? x.scalar_type()
                                                                               : acc_dtype(x.scalar_type());
  const at::Tensor score = as_dtype(score_in, score_dtype).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dense.scalar_type(), "langevin_step_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
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
  constexpr const char* op = "fastscore_ext::philox4x32_10";
  TORCH_CHECK(words_in.scalar_type() == at::kLong && words_in.dim() == 2 && words_in.size(1) == 6, op,
              ": words must be an int64 tensor of shape (M, 6), got ", words_in.scalar_type(), " ", words_in.sizes());
  const at::Tensor words = words_in.contiguous();
  at::Tensor out = empty({words.size(0), 4}, words.options());
  philox_rows(words.data_ptr<int64_t>(), out.data_ptr<int64_t>(), words.size(0));
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace fastscore

TORCH_LIBRARY_IMPL(fastscore_ext, CPU, m) {
  using namespace fastscore::cpu;
  m.impl("norm_forward", &norm_forward_cpu);
  m.impl("norm_backward", &norm_backward_cpu);
  m.impl("norm_forward_lookup", &norm_forward_lookup_cpu);
  m.impl("norm_backward_lookup", &norm_backward_lookup_cpu);
  m.impl("normal_", &normal_cpu);
  m.impl("perturb", &perturb_cpu);
  m.impl("dsm_per_sample", &dsm_per_sample_cpu);
  m.impl("dsm_reduced", &dsm_reduced_cpu);
  m.impl("dsm_per_sample_and_grad", &dsm_per_sample_and_grad_cpu);
  m.impl("dsm_backward", &dsm_backward_cpu);
  m.impl("langevin_step_", &langevin_step_cpu);
  m.impl("philox4x32_10", &philox_cpu);
}
