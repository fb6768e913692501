// CUDA kernels of the noise-using ops: normal_, perturb, dsm_per_sample, dsm_backward and
// langevin_step_. Each thread owns one 16-byte pack of consecutive logical elements, draws their
// normals from (seed, offset + index) in registers (philox.h, the CPU kernels' code), and never
// keeps generator state between calls, so CUDA graphs can replay them with a device-side offset
// changed only through the arguments. Everything runs on the current CUDA stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <type_traits>

#include "../checks.h"
#include "common.cuh"

namespace fastscore {
namespace cuda {
namespace {

// The sample (row of d elements) of flat index i, kept up to date while walking a pack.
struct SampleCursor {
  int64_t n, next;  // current sample, first index of the next one
  __device__ SampleCursor(int64_t i, int64_t d) : n(i / d), next((i / d + 1) * d) {}
  __device__ void advance_to(int64_t i, int64_t d) {
    while (i >= next) {
      ++n;
      next += d;
    }
  }
};

// Walks [0, total) in packs; f.pack(i0, z) for whole packs, f.one(i, z) for the tail.
// seed_ptr/offset_ptr, when given, hold the stream position on the device (CUDA-graph form).
template <typename scalar_t, typename F>
__global__ void noise_walk_kernel(int64_t total, uint64_t seed, uint64_t offset, const int64_t* seed_ptr,
                                  const int64_t* offset_ptr, F f) {
  constexpr int V = Vec<scalar_t>::size;
  if (seed_ptr) seed = static_cast<uint64_t>(*seed_ptr);
  if (offset_ptr) offset = static_cast<uint64_t>(*offset_ptr);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * V;
  for (int64_t i0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; i0 < total; i0 += stride) {
    if (i0 + V <= total) {
      float z[V];
      noise_run<V>(seed, offset + i0, z);
      f.pack(i0, z);
    } else {
      for (int64_t i = i0; i < total; ++i) f.one(i, normal_at(seed, offset + i));
    }
  }
}

template <typename scalar_t, bool kVec>
struct NormalF {
  static constexpr int V = Vec<scalar_t>::size;
  scalar_t* out;
  __device__ void pack(int64_t i0, const float (&z)[V]) const {
    Pack<scalar_t> p;
#pragma unroll
    for (int v = 0; v < V; ++v) p.v[v] = static_cast<scalar_t>(z[v]);
    if (kVec) {
      store_pack(out + i0, p);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) out[i0 + v] = p.v[v];
    }
  }
  __device__ void one(int64_t i, float z) const { out[i] = static_cast<scalar_t>(z); }
};

// out = a[n] * x + b[n] * z with per-sample coefficients: perturb (a = 1, b = sigma) and the
// dsm backward (a = g sigma^p, b = g sigma^(p - 1)).
template <typename scalar_t, bool kVec>
struct AffineNoiseF {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int V = Vec<scalar_t>::size;
  const scalar_t* x;
  scalar_t* out;
  const acc_t* a;  // null means 1
  const acc_t* b;
  int64_t d;
  __device__ void pack(int64_t i0, const float (&z)[V]) const {
    Pack<scalar_t> in, res;
    if (kVec) {
      in = load_pack(x + i0);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) in.v[v] = x[i0 + v];
    }
    SampleCursor cur(i0, d);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      cur.advance_to(i0 + v, d);
      const acc_t av = a ? a[cur.n] : acc_t(1);
      res.v[v] = static_cast<scalar_t>(av * static_cast<acc_t>(in.v[v]) + b[cur.n] * static_cast<acc_t>(z[v]));
    }
    if (kVec) {
      store_pack(out + i0, res);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) out[i0 + v] = res.v[v];
    }
  }
  __device__ void one(int64_t i, float z) const {
    const int64_t n = i / d;
    const acc_t av = a ? a[n] : acc_t(1);
    out[i] = static_cast<scalar_t>(av * static_cast<acc_t>(x[i]) + b[n] * static_cast<acc_t>(z));
  }
};

// x += step * score + noise_scale * z. step/noise_scale come from device memory when the pointers are
// set (float64 copies of the caller's tensors); noise_scale < 0 means sqrt(2 step).
template <typename scalar_t, typename score_t, bool kVec>
struct LangevinF {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int V = Vec<scalar_t>::size;
  scalar_t* x;
  const score_t* score;
  double step, noise_scale;
  const double* step_ptr;
  const double* noise_ptr;
  __device__ void coefficients(acc_t* st, acc_t* ns) const {
    const double s = step_ptr ? *step_ptr : step;
    const double n = noise_ptr ? *noise_ptr : noise_scale;
    *st = static_cast<acc_t>(s);
    *ns = static_cast<acc_t>(n < 0 ? sqrt(2.0 * s) : n);
  }
  __device__ void pack(int64_t i0, const float (&z)[V]) const {
    acc_t st, ns;
    coefficients(&st, &ns);
    Pack<scalar_t> xs;
    acc_t sc[V];
    if (kVec) {
      xs = load_pack(x + i0);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) xs.v[v] = x[i0 + v];
    }
    if constexpr (kVec && std::is_same_v<score_t, scalar_t>) {
      const Pack<scalar_t> sp = load_pack(score + i0);
#pragma unroll
      for (int v = 0; v < V; ++v) sc[v] = static_cast<acc_t>(sp.v[v]);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) sc[v] = static_cast<acc_t>(score[i0 + v]);
    }
#pragma unroll
    for (int v = 0; v < V; ++v)
      xs.v[v] = static_cast<scalar_t>(static_cast<acc_t>(xs.v[v]) + st * sc[v] + ns * static_cast<acc_t>(z[v]));
    if (kVec) {
      store_pack(x + i0, xs);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) x[i0 + v] = xs.v[v];
    }
  }
  __device__ void one(int64_t i, float z) const {
    acc_t st, ns;
    coefficients(&st, &ns);
    x[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) + st * static_cast<acc_t>(score[i]) + ns * static_cast<acc_t>(z));
  }
};

template <typename scalar_t, typename F>
void launch_walk(int64_t total, int64_t seed, int64_t offset, const F& f, const int64_t* seed_ptr = nullptr,
                 const int64_t* offset_ptr = nullptr) {
  const int64_t packs = (total + Vec<scalar_t>::size - 1) / Vec<scalar_t>::size;
  noise_walk_kernel<scalar_t><<<grid_for(packs), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      total, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), seed_ptr, offset_ptr, f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// A noise-stream position as the kernels take it: numbers, or device pointers that replace them (the
// CUDA-graph form, seed_t / offset_t: read by the kernel on the device, never by the host).
struct StreamPosition {
  int64_t seed, offset;
  const int64_t* seed_ptr;
  const int64_t* offset_ptr;
};

StreamPosition stream_position(const char* op, int64_t seed, int64_t offset, const c10::optional<at::Tensor>& seed_t,
                               const c10::optional<at::Tensor>& offset_t, const at::Tensor& x) {
  check_scalar_tensor(op, "seed", seed_t, x, true);
  check_scalar_tensor(op, "offset", offset_t, x, true);
  const bool has_seed = seed_t.has_value() && seed_t->defined();
  const bool has_offset = offset_t.has_value() && offset_t->defined();
  // Only the numbers are checked here; the public op asserts the tensors' values on the device.
  check_seed_offset(op, has_seed ? 0 : seed, has_offset ? 0 : offset, has_offset ? 0 : x.numel());
  return {seed, offset, has_seed ? seed_t->data_ptr<int64_t>() : nullptr,
          has_offset ? offset_t->data_ptr<int64_t>() : nullptr};
}

void normal_cuda(at::Tensor out, int64_t seed, int64_t offset) {
  constexpr const char* op = "fastscore_ext::normal_";
  check_float_tensor(op, "out", out);
  check_seed_offset(op, seed, offset, out.numel());
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor dense = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dense.scalar_type(), "normal_cuda", [&] {
    scalar_t* p = dense.data_ptr<scalar_t>();
    if (aligned16(p)) {
      launch_walk<scalar_t>(dense.numel(), seed, offset, NormalF<scalar_t, true>{p});
    } else {
      launch_walk<scalar_t>(dense.numel(), seed, offset, NormalF<scalar_t, false>{p});
    }
  });
  if (!dense.is_same(out)) out.copy_(dense);
}

template <typename scalar_t>
void launch_affine(const at::Tensor& x, at::Tensor& out, const at::Tensor* a, const at::Tensor& b,
                   const StreamPosition& pos) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const acc_t* ap = a ? a->data_ptr<acc_t>() : nullptr;
  const acc_t* bp = b.data_ptr<acc_t>();
  const int64_t d = x.numel() / x.size(0);
  if (aligned16(xp) && aligned16(op)) {
    launch_walk<scalar_t>(x.numel(), pos.seed, pos.offset, AffineNoiseF<scalar_t, true>{xp, op, ap, bp, d},
                          pos.seed_ptr, pos.offset_ptr);
  } else {
    launch_walk<scalar_t>(x.numel(), pos.seed, pos.offset, AffineNoiseF<scalar_t, false>{xp, op, ap, bp, d},
                          pos.seed_ptr, pos.offset_ptr);
  }
}

at::Tensor perturb_cuda(const at::Tensor& x_in, const at::Tensor& sigma_in, int64_t seed, int64_t offset,
                        const c10::optional<at::Tensor>& seed_t, const c10::optional<at::Tensor>& offset_t) {
  constexpr const char* op = "fastscore_ext::perturb";
  check_float_tensor(op, "x", x_in);
  const at::Tensor sigma = checked_sigma(op, sigma_in, x_in, "x");
  const StreamPosition pos = stream_position(op, seed, offset, seed_t, offset_t, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "perturb_cuda",
                                  [&] { launch_affine<scalar_t>(x, out, nullptr, sigma, pos); });
  return out;
}

constexpr int64_t kPiece = 16384;  // elements of one sample summed by one block of the dsm forward

// With unit_grad (else nullptr), the same pass also writes d l[n] / d scores = sigma^p (scores + z / sigma),
// the gradient of a unit loss, from the same draw of z: dsm_per_sample_and_grad's one pass.
template <typename scalar_t, bool kVec>
__global__ void dsm_partial_kernel(const scalar_t* scores, const at::opmath_type<scalar_t>* sigma, int64_t d,
                                   int64_t pieces, uint64_t seed, uint64_t offset, const int64_t* seed_ptr,
                                   const int64_t* offset_ptr, at::opmath_type<scalar_t>* partial,
                                   scalar_t* unit_grad, at::opmath_type<scalar_t> power) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = kVec ? Vec<scalar_t>::size : 4;
  if (seed_ptr) seed = static_cast<uint64_t>(*seed_ptr);
  if (offset_ptr) offset = static_cast<uint64_t>(*offset_ptr);
  const int64_t n = blockIdx.x / pieces, piece = blockIdx.x % pieces;
  const int64_t start = n * d + piece * kPiece, end = min(start + kPiece, (n + 1) * d);
  const acc_t inv_sigma = acc_t(1) / sigma[n];
  const acc_t coef = unit_grad ? pow(sigma[n], power) : acc_t(0);
  acc_t sum = 0;
  for (int64_t i0 = start + static_cast<int64_t>(threadIdx.x) * V; i0 < end; i0 += static_cast<int64_t>(blockDim.x) * V) {
    if (i0 + V <= end) {
      float z[V];
      noise_run<V>(seed, offset + i0, z);
      scalar_t s[V];
      if constexpr (kVec) {
        const Pack<scalar_t> p = load_pack(scores + i0);
#pragma unroll
        for (int v = 0; v < V; ++v) s[v] = p.v[v];
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) s[v] = scores[i0 + v];
      }
      acc_t r[V];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        r[v] = static_cast<acc_t>(s[v]) + static_cast<acc_t>(z[v]) * inv_sigma;
        sum += r[v] * r[v];
      }
      if (unit_grad) {
        if constexpr (kVec) {  // unit_grad is as aligned as scores (the launcher checks both)
          Pack<scalar_t> g;
#pragma unroll
          for (int v = 0; v < V; ++v) g.v[v] = static_cast<scalar_t>(coef * r[v]);
          store_pack(unit_grad + i0, g);
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) unit_grad[i0 + v] = static_cast<scalar_t>(coef * r[v]);
        }
      }
    } else {
      for (int64_t i = i0; i < end; ++i) {
        const acc_t r = static_cast<acc_t>(scores[i]) + static_cast<acc_t>(normal_at(seed, offset + i)) * inv_sigma;
        sum += r * r;
        if (unit_grad) unit_grad[i] = static_cast<scalar_t>(coef * r);
      }
    }
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// The per-sample losses and, with with_grad, d loss[n] / d scores (scores' dtype, contiguous) from the
// same draw of the noise.
std::tuple<at::Tensor, at::Tensor> dsm_losses_cuda(const char* op, const at::Tensor& scores_in,
                                                   const at::Tensor& sigma_in, int64_t seed, int64_t offset,
                                                   double power, const c10::optional<at::Tensor>& seed_t,
                                                   const c10::optional<at::Tensor>& offset_t, bool with_grad) {
  check_float_tensor(op, "scores", scores_in);
  const at::Tensor sigma = checked_sigma(op, sigma_in, scores_in, "scores");
  const StreamPosition pos = stream_position(op, seed, offset, seed_t, offset_t, scores_in);
  check_finite(op, "anneal_power", std::abs(power), false);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t n_samples = scores.size(0), d = scores.numel() / n_samples;
  const int64_t pieces = (d + kPiece - 1) / kPiece;
  at::Tensor partial = at::empty({n_samples, pieces}, sigma.options());
  at::Tensor unit_grad = with_grad ? at::empty_like(scores) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "dsm_losses_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* sp = scores.data_ptr<scalar_t>();
    scalar_t* gp = with_grad ? unit_grad.data_ptr<scalar_t>() : nullptr;
    const bool vec = aligned16(sp) && (gp == nullptr || aligned16(gp)) && d % Vec<scalar_t>::size == 0;
    const unsigned blocks = static_cast<unsigned>(n_samples * pieces);
    auto stream = at::cuda::getCurrentCUDAStream();
    if (vec) {
      dsm_partial_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
          sp, sigma.data_ptr<acc_t>(), d, pieces, pos.seed, pos.offset, pos.seed_ptr, pos.offset_ptr,
          partial.data_ptr<acc_t>(), gp, static_cast<acc_t>(power));
    } else {
      dsm_partial_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
          sp, sigma.data_ptr<acc_t>(), d, pieces, pos.seed, pos.offset, pos.seed_ptr, pos.offset_ptr,
          partial.data_ptr<acc_t>(), gp, static_cast<acc_t>(power));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // The pieces of a sample are added in a fixed order: deterministic, like the CPU kernel.
  return {partial.sum(1).mul_(sigma.pow(power)).mul_(0.5), unit_grad};
}

at::Tensor dsm_backward_cuda(const at::Tensor& grad_in, const at::Tensor& scores_in, const at::Tensor& sigma_in,
                             int64_t seed, int64_t offset, double power, const c10::optional<at::Tensor>& seed_t,
                             const c10::optional<at::Tensor>& offset_t) {
  constexpr const char* op = "fastscore_ext::dsm_backward";
  check_float_tensor(op, "scores", scores_in);
  const at::Tensor sigma = checked_sigma(op, sigma_in, scores_in, "scores");
  check_float_tensor(op, "grad", grad_in);
  TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == scores_in.size(0), op, ": grad must have shape (N,) = (",
              scores_in.size(0), ",), got ", grad_in.sizes());
  check_same_device(op, "grad", grad_in, "scores", scores_in);
  const StreamPosition pos = stream_position(op, seed, offset, seed_t, offset_t, scores_in);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  // dscores = a[n] scores + b[n] z with a = g sigma^p, b = a / sigma: a few (N,) ops, then one pass.
  const at::Tensor a = (grad_in.to(sigma.scalar_type()) * sigma.pow(power)).contiguous();
  const at::Tensor b = (a / sigma).contiguous();
  at::Tensor out = at::empty_like(scores);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "dsm_backward_cuda",
                                  [&] { launch_affine<scalar_t>(scores, out, &a, b, pos); });
  return out;
}

at::Tensor dsm_per_sample_cuda(const at::Tensor& scores, const at::Tensor& sigma, int64_t seed, int64_t offset,
                               double power, const c10::optional<at::Tensor>& seed_t,
                               const c10::optional<at::Tensor>& offset_t) {
  return std::get<0>(dsm_losses_cuda("fastscore_ext::dsm_per_sample", scores, sigma, seed, offset, power, seed_t,
                                     offset_t, false));
}

at::Tensor dsm_reduced_cuda(const at::Tensor& scores, const at::Tensor& sigma, int64_t seed, int64_t offset,
                            double power, int64_t reduction, const c10::optional<at::Tensor>& seed_t,
                            const c10::optional<at::Tensor>& offset_t) {
  constexpr const char* op = "fastscore_ext::dsm_reduced";
  check_reduction(op, reduction);
  const at::Tensor losses = std::get<0>(dsm_losses_cuda(op, scores, sigma, seed, offset, power, seed_t, offset_t,
                                                        false));
  return reduction == 1 ? losses.mean() : losses.sum();
}

std::tuple<at::Tensor, at::Tensor> dsm_per_sample_and_grad_cuda(
    const at::Tensor& scores, const at::Tensor& sigma, int64_t seed, int64_t offset, double power,
    const c10::optional<at::Tensor>& seed_t, const c10::optional<at::Tensor>& offset_t) {
  return dsm_losses_cuda("fastscore_ext::dsm_per_sample_and_grad", scores, sigma, seed, offset, power, seed_t,
                         offset_t, true);
}

void langevin_step_cuda(at::Tensor x, const at::Tensor& score_in, double step_size, int64_t seed, int64_t offset,
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
  const StreamPosition pos = stream_position(op, seed, offset, seed_t, offset_t, x);
  check_scalar_tensor(op, "noise_scale", noise_t, x, false);
  auto given = [](const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  // Only the host-side numbers are checked here: device values are never read back (no sync, capturable).
  if (!given(step_t)) check_finite(op, "step_size", step_size, false);
  if (!given(noise_t) && noise_scale >= 0) check_finite(op, "noise_scale", noise_scale, false);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dense = x.is_contiguous() ? x : x.contiguous();
  const at::ScalarType score_dtype = score_in.scalar_type() == x.scalar_type() ? x.scalar_type()
                                                                               : acc_dtype(x.scalar_type());
  const at::Tensor score = score_in.to(score_dtype).contiguous();
  const at::Tensor step_d = given(step_t) ? step_t->to(at::kDouble).reshape({1}) : at::Tensor();
  const at::Tensor noise_d = given(noise_t) ? noise_t->to(at::kDouble).reshape({1}) : at::Tensor();
  const double* step_ptr = step_d.defined() ? step_d.data_ptr<double>() : nullptr;
  const double* noise_ptr = noise_d.defined() ? noise_d.data_ptr<double>() : nullptr;
  const int64_t* seed_ptr = pos.seed_ptr;
  const int64_t* offset_ptr = pos.offset_ptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dense.scalar_type(), "langevin_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* xp = dense.data_ptr<scalar_t>();
    const int64_t n = dense.numel();
    if (score.scalar_type() == dense.scalar_type()) {
      const scalar_t* sp = score.data_ptr<scalar_t>();
      if (aligned16(xp) && aligned16(sp)) {
        launch_walk<scalar_t>(n, seed, offset, LangevinF<scalar_t, scalar_t, true>{xp, sp, step_size, noise_scale, step_ptr, noise_ptr},
                              seed_ptr, offset_ptr);
      } else {
        launch_walk<scalar_t>(n, seed, offset, LangevinF<scalar_t, scalar_t, false>{xp, sp, step_size, noise_scale, step_ptr, noise_ptr},
                              seed_ptr, offset_ptr);
      }
    } else {
      const acc_t* sp = score.data_ptr<acc_t>();
      if (aligned16(xp)) {
        launch_walk<scalar_t>(n, seed, offset, LangevinF<scalar_t, acc_t, true>{xp, sp, step_size, noise_scale, step_ptr, noise_ptr},
                              seed_ptr, offset_ptr);
      } else {
        launch_walk<scalar_t>(n, seed, offset, LangevinF<scalar_t, acc_t, false>{xp, sp, step_size, noise_scale, step_ptr, noise_ptr},
                              seed_ptr, offset_ptr);
      }
    }
  });
  if (!dense.is_same(x)) x.copy_(dense);
}

__global__ void philox_kernel(const int64_t* words, int64_t m, int64_t* out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= m) return;
  const int64_t* w = words + 6 * r;
  const Words4 u = philox4x32_10(static_cast<uint32_t>(w[0]), static_cast<uint32_t>(w[1]), static_cast<uint32_t>(w[2]),
                                 static_cast<uint32_t>(w[3]), static_cast<uint32_t>(w[4]), static_cast<uint32_t>(w[5]));
  for (int l = 0; l < 4; ++l) out[4 * r + l] = static_cast<int64_t>(u.w[l]);
}

at::Tensor philox_cuda(const at::Tensor& words_in) {
  constexpr const char* op = "fastscore_ext::philox4x32_10";
  TORCH_CHECK(words_in.scalar_type() == at::kLong && words_in.dim() == 2 && words_in.size(1) == 6, op,
              ": words must be an int64 tensor of shape (M, 6), got ", words_in.scalar_type(), " ", words_in.sizes());
  const c10::cuda::CUDAGuard guard(words_in.device());
  const at::Tensor words = words_in.contiguous();
  at::Tensor out = at::empty({words.size(0), 4}, words.options());
  if (words.size(0) > 0) {
    philox_kernel<<<grid_for(words.size(0)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        words.data_ptr<int64_t>(), words.size(0), out.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastscore_ext, CUDA, m) {
  m.impl("normal_", &normal_cuda);
  m.impl("perturb", &perturb_cuda);
  m.impl("dsm_per_sample", &dsm_per_sample_cuda);
  m.impl("dsm_reduced", &dsm_reduced_cuda);
  m.impl("dsm_per_sample_and_grad", &dsm_per_sample_and_grad_cuda);
  m.impl("dsm_backward", &dsm_backward_cuda);
  m.impl("langevin_step_", &langevin_step_cuda);
  m.impl("philox4x32_10", &philox_cuda);
}

}  // namespace cuda
}  // namespace fastscore
