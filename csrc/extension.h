// What the .cpp files of fastgpt._C share: the checks and conversions around the kernels. The ops
// are registered with TORCH_LIBRARY_IMPL in the file of their kernels (csrc/<op>.cpp); their schemas
// live in fastgpt/ops/<op>.py.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fastgpt {

// The dtype the kernels compute a `dtype` result in: float32, or float64 for float64 (gradcheck).
inline at::ScalarType compute_dtype(const at::Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "fastgpt._C: expected a CPU tensor, got ", t.device());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "fastgpt._C: dtype ", dtype, " is not float32, float64 or bfloat16");
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline at::ScalarType compute_dtype(const at::Tensor& t) { return compute_dtype(t, t.scalar_type()); }

inline at::Tensor prepared(const at::Tensor& t, at::ScalarType dtype) { return t.to(dtype).contiguous(); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline void check_dropout_p(double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "fastgpt._C: dropout_p must be in [0, 1), got ", p);
}

// The ops take their dropout seed as a 0-dim int64 tensor, so that torch.compile keeps it in the graph.
inline int64_t seed_value(const at::Tensor& seed) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong, "fastgpt._C: the seed must be one int64");
  return seed.item<int64_t>();
}

}  // namespace fastgpt
