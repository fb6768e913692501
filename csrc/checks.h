// Argument checks shared by the CPU and CUDA implementations. Every message starts with the op's
// name and names the offending argument, so a direct call of torch.ops.fastscore_ext.* (which skips
// the Python checks of fastscore.ops) still fails clearly instead of crashing or reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>  // not ATen/ATen.h, seconds more to parse (the compile at first use)
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace fastscore {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// Float32 for float32/bfloat16/float16 storage, float64 for float64: the arithmetic dtype.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_float_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
  TORCH_CHECK(is_float_dtype(t.scalar_type()), op, ": ", name,
              " must be float32, float64, bfloat16 or float16, got ", t.scalar_type());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                              const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), "; they must share a device");
}

inline void check_seed_offset(const char* op, int64_t seed, int64_t offset, int64_t numel) {
  TORCH_CHECK(seed >= 0, op, ": seed must be in [0, 2^63), got ", seed);
  // offset + numel <= 2^63: the last position used, offset + numel - 1, is at most 2^63 - 1.
  TORCH_CHECK(offset >= 0 && offset - 1 <= std::numeric_limits<int64_t>::max() - numel, op,
              ": offset must be in [0, 2^63 - numel), got ", offset, " for ", numel, " draws");
}

inline void check_finite(const char* op, const char* name, double v, bool positive) {
  TORCH_CHECK(std::isfinite(v), op, ": ", name, " must be finite, got ", v);
  if (positive) {
    TORCH_CHECK(v > 0, op, ": ", name, " must be > 0, got ", v);
  } else {
    TORCH_CHECK(v >= 0, op, ": ", name, " must be >= 0, got ", v);
  }
}

// dsm_reduced's reduction code: 1 mean, 2 sum.
inline void check_reduction(const char* op, int64_t reduction) {
  TORCH_CHECK(reduction == 1 || reduction == 2, op, ": reduction must be 1 (mean) or 2 (sum), got ", reduction);
}

// t in dtype: t itself when it already is (Tensor::to would still make a dispatcher call).
inline at::Tensor as_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// sigma: (N,) on x's device; returned as a contiguous tensor in the arithmetic dtype.
inline at::Tensor checked_sigma(const char* op, const at::Tensor& sigma, const at::Tensor& x, const char* x_name) {
  check_float_tensor(op, "sigma", sigma);
  TORCH_CHECK(x.dim() >= 1 && x.numel() > 0, op, ": ", x_name, " must be a non-empty tensor of at least 1 dimension, got shape ",
              x.sizes());
  TORCH_CHECK(sigma.dim() == 1 && sigma.size(0) == x.size(0), op, ": sigma must have shape (N,) = (", x.size(0),
              ",) to match ", x_name, ", got ", sigma.sizes());
  check_same_device(op, "sigma", sigma, x_name, x);
  return as_dtype(sigma, acc_dtype(x.scalar_type())).contiguous();
}

// gamma/alpha/beta: (N, C) or (C,) on x's device; returned in the arithmetic dtype with its strides
// (the kernels read strided parameters in place; only a dtype conversion copies).
inline at::Tensor checked_param(const char* op, const char* name, const at::Tensor& p, const at::Tensor& x) {
  check_float_tensor(op, name, p);
  const int64_t n = x.size(0), c = x.size(1);
  const bool ok = (p.dim() == 2 && p.size(0) == n && p.size(1) == c) || (p.dim() == 1 && p.size(0) == c);
  TORCH_CHECK(ok, op, ": ", name, " must have shape (N, C) = (", n, ", ", c, ") or (C,) = (", c, ",), got ",
              p.sizes());
  check_same_device(op, name, p, "x", x);
  return as_dtype(p, acc_dtype(x.scalar_type()));
}

// The lookup form's parameters: row labels[n] of table (L, K*C) holds sample n's (gamma | alpha | beta)
// (K = 3) or (gamma | alpha) (K = 2), as an embedding's weight does. Checks shapes, dtypes and devices,
// not the labels' values (the kernels check each label they read); returns the table in the arithmetic
// dtype (only a conversion copies; any strides) and the labels as int64.
struct Lookup {
  at::Tensor labels;  // (N,) int64
  at::Tensor table;   // (L, K*C) in the arithmetic dtype
  int64_t K;
};

inline Lookup checked_lookup(const char* op, const at::Tensor& labels, const at::Tensor& table, const at::Tensor& x) {
  TORCH_CHECK(labels.defined() && (labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt), op,
              ": labels must be an int64 or int32 tensor, got ",
              labels.defined() ? c10::toString(labels.scalar_type()) : "None");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == x.size(0), op, ": labels must have shape (N,) = (", x.size(0),
              ",), got ", labels.sizes());
  check_same_device(op, "labels", labels, "x", x);
  check_float_tensor(op, "table", table);
  const int64_t c = x.size(1);
  TORCH_CHECK(table.dim() == 2 && table.size(0) > 0 && (table.size(1) == 3 * c || table.size(1) == 2 * c), op,
              ": table must have shape (L, 3C) or (L, 2C) with C = ", c, ", got ", table.sizes());
  check_same_device(op, "table", table, "x", x);
  return {as_dtype(labels, at::kLong).contiguous(), as_dtype(table, acc_dtype(x.scalar_type())), table.size(1) / c};
}

inline void check_norm_x(const char* op, const at::Tensor& x, double eps, int64_t activation) {
  check_float_tensor(op, "x", x);
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.numel() > 0, op, ": x must not be empty, got shape ", x.sizes());
  check_finite(op, "eps", eps, /*positive=*/true);
  TORCH_CHECK(activation >= 0 && activation <= 2, op, ": activation must be 0 (none), 1 (elu) or 2 (relu), got ",
              activation);
}

// A one-element tensor standing in for a scalar argument (langevin_step_'s CUDA-graph form).
inline void check_scalar_tensor(const char* op, const char* name, const c10::optional<at::Tensor>& t,
                                const at::Tensor& x, bool integral) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->numel() == 1, op, ": ", name, " given as a tensor must have one element, got shape ", t->sizes());
  if (integral) {
    TORCH_CHECK(t->scalar_type() == at::kLong, op, ": ", name, " given as a tensor must be int64, got ",
                t->scalar_type());
  } else {
    TORCH_CHECK(is_float_dtype(t->scalar_type()), op, ": ", name, " given as a tensor must be floating, got ",
                t->scalar_type());
  }
  check_same_device(op, name, *t, "x", x);
}

// The memory format the kernels walk: channels_last only when x is channels_last and not also
// plainly contiguous (a tensor can be both when C == 1 or H * W == 1; then either walk is right).
inline bool use_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// x as the kernels read it: contiguous in its own format (NCHW, or NHWC for channels_last).
inline at::Tensor dense_input(const at::Tensor& x) {
  if (x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)) return x;
  return x.contiguous();
}

}  // namespace fastscore
