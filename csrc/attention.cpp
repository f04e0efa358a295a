// fastgpt._C: the fused causal attention kernels on CPU (forward, backward, the dropout keep mask).
//
// The kernels (attention_kernels.h) are compiled twice, for the baseline x86-64/ARM target and for
// AVX2 + FMA (isa_copies.h), and the AVX2 copy runs where the CPU has it. These functions check
// their inputs, make them contiguous in the compute dtype (float32, float64 for float64; bfloat16
// is computed in float32), and spread the (batch·head, block) tasks over at::parallel_for.
// fastgpt/cpp_attention.py registers them as the CPU kernels of the fastgpt::causal_attention ops;
// decode.cpp adds the sampling step, bound here too.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#define FASTGPT_KERNELS "attention_kernels.h"
#include "isa_copies.h"

namespace fastgpt {
namespace {

using at::Tensor;

// Runs `f` with the kernels compiled for the best instruction set this CPU has.
template <typename F>
void with_isa(F&& f) {
#ifdef FASTGPT_HAVE_AVX2
  if (cpu_has_avx2()) return f(avx2::Isa{});
#endif
  f(baseline::Isa{});
}

// Runs `f` with the head size as a compile-time constant.
template <typename F>
void with_head_size(int64_t head_size, F&& f) {
  switch (head_size) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: TORCH_CHECK(false, "fastgpt._C: head size ", head_size, " is not one of 8, 16, 32, 64, 128");
  }
}

at::ScalarType compute_dtype(const Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "fastgpt._C: expected a CPU tensor, got ", t.device());
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "fastgpt._C: dtype ", dtype, " is not float32, float64 or bfloat16");
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

Tensor prepared(const Tensor& t, at::ScalarType dtype) { return t.to(dtype).contiguous(); }

void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, double dropout_p) {
  TORCH_CHECK(q.dim() == 4, "fastgpt._C: expected q, k, v of shape (B, H, T, D), got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "fastgpt._C: q, k, v shapes differ: ",
              q.sizes(), k.sizes(), v.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "fastgpt._C: q, k, v dtypes differ");
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "fastgpt._C: dropout_p must be in [0, 1), got ", dropout_p);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Key blocks per backward task. A head's keys split into several chunks when there are few heads,
// so that a small batch still spreads over the threads; every chunk holds at least one key. A
// function of the shape only, so the bits do not depend on the thread count.
int64_t key_blocks_per_chunk(int64_t heads, int64_t seq_len) {
  const int64_t blocks = ceil_div(seq_len, kKeyBlock);
  return ceil_div(blocks, std::max<int64_t>(1, std::min(blocks, ceil_div(16, heads))));
}

}  // namespace

std::tuple<Tensor, Tensor> forward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, double dropout_p,
                                   int64_t seed) {
  check_qkv(q_in, k_in, v_in, dropout_p);
  const auto dtype = compute_dtype(q_in);
  const Tensor q = prepared(q_in, dtype), k = prepared(k_in, dtype), v = prepared(v_in, dtype);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  Tensor out = at::empty_like(q), lse = at::empty({B, H, T}, q.options());
  const Dropout dr = make_dropout(dropout_p, seed);
  const int64_t blocks = ceil_div(T, kQueryBlock);
  AT_DISPATCH_FLOATING_TYPES(dtype, "fastgpt_attention_forward", [&] {
    with_head_size(D, [&](auto head_size) {
      constexpr int kD = decltype(head_size)::value;
      const auto scale = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(D)));
      const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
      scalar_t *op = out.data_ptr<scalar_t>(), *lp = lse.data_ptr<scalar_t>();
      with_isa([&](auto isa) {
        at::parallel_for(0, B * H * blocks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t task = begin; task < end; ++task) {
            const int64_t bh = task / blocks, r0 = (task % blocks) * kQueryBlock;
            const int64_t slice = bh * T * kD;
            decltype(isa)::template forward<scalar_t, kD>(qp + slice, kp + slice, vp + slice, T, r0,
                                                          std::min(T, r0 + kQueryBlock), scale, dr,
                                                          static_cast<uint64_t>(bh * T) * T, op + slice, lp + bh * T);
          }
        });
      });
    });
  });
  return {out.to(q_in.scalar_type()), lse};
}

std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& grad_out_in, const Tensor& q_in, const Tensor& k_in,
                                            const Tensor& v_in, const Tensor& out_in, const Tensor& lse_in,
                                            double dropout_p, int64_t seed) {
  check_qkv(q_in, k_in, v_in, dropout_p);
  TORCH_CHECK(grad_out_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(),
              "fastgpt._C: grad_out and out must have the shape of q");
  TORCH_CHECK(lse_in.sizes() == q_in.sizes().slice(0, 3), "fastgpt._C: lse must be (B, H, T)");
  const auto dtype = compute_dtype(q_in);
  const Tensor q = prepared(q_in, dtype), k = prepared(k_in, dtype), v = prepared(v_in, dtype);
  const Tensor grad_out = prepared(grad_out_in, dtype), out = prepared(out_in, dtype), lse = prepared(lse_in, dtype);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t chunk_keys = key_blocks_per_chunk(B * H, T) * kKeyBlock, chunks = ceil_div(T, chunk_keys);
  // Each key chunk adds its share of dQ into its own buffer, summed in a fixed order below: no races.
  Tensor dq_parts = at::empty({chunks, B, H, T, D}, q.options());
  Tensor dk = at::empty_like(k), dv = at::empty_like(v);
  const Dropout dr = make_dropout(dropout_p, seed);
  AT_DISPATCH_FLOATING_TYPES(dtype, "fastgpt_attention_backward", [&] {
    with_head_size(D, [&](auto head_size) {
      constexpr int kD = decltype(head_size)::value;
      const auto scale = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(D)));
      const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
      const scalar_t *gp = grad_out.data_ptr<scalar_t>(), *outp = out.data_ptr<scalar_t>(),
                     *lp = lse.data_ptr<scalar_t>();
      scalar_t *dqp = dq_parts.data_ptr<scalar_t>(), *dkp = dk.data_ptr<scalar_t>(), *dvp = dv.data_ptr<scalar_t>();
      with_isa([&](auto isa) {
        at::parallel_for(0, B * H * chunks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t task = begin; task < end; ++task) {
            const int64_t bh = task / chunks, chunk = task % chunks;
            const int64_t c0 = chunk * chunk_keys, c1 = std::min(T, c0 + chunk_keys);
            const int64_t slice = bh * T * kD;
            decltype(isa)::template backward<scalar_t, kD>(
                qp + slice, kp + slice, vp + slice, gp + slice, outp + slice, lp + bh * T, T, c0, c1, scale, dr,
                static_cast<uint64_t>(bh * T) * T, dqp + chunk * B * H * T * kD + slice, dkp + slice, dvp + slice);
          }
        });
      });
    });
  });
  Tensor dq = dq_parts[0];
  for (int64_t chunk = 1; chunk < chunks; ++chunk) dq = dq + dq_parts[chunk];
  const auto out_dtype = q_in.scalar_type();
  return {dq.to(out_dtype), dk.to(out_dtype), dv.to(out_dtype)};
}

// The bool (B, H, T, T) keep mask that the kernels use for this seed and shape (a debug entry point).
Tensor keep_mask(int64_t seed, int64_t B, int64_t H, int64_t T, double dropout_p) {
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "fastgpt._C: dropout_p must be in [0, 1), got ", dropout_p);
  Tensor mask = at::empty({B, H, T, T}, at::kBool);
  const Dropout dr = make_dropout(dropout_p, seed);
  bool* mp = mask.data_ptr<bool>();
  with_isa([&](auto isa) {
    at::parallel_for(0, B * H * T, 64, [&](int64_t begin, int64_t end) {
      decltype(isa)::keep_mask(dr, T, begin, end, mp);
    });
  });
  return mask;
}

// Which instruction set the kernels run with on this CPU.
std::string instruction_set() { return cpu_has_avx2() ? "avx2+fma" : "baseline"; }

// decode.cpp
Tensor decode_step(const Tensor& tokens, int64_t pos, const std::vector<Tensor>& params,
                   const std::vector<Tensor>& scales, const std::vector<Tensor>& cache, int64_t n_head, double eps);

}  // namespace fastgpt

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgpt's fused causal attention and sampling step on CPU";
  m.def("forward", &fastgpt::forward, "(q, k, v, dropout_p, seed) -> (out, lse)");
  m.def("backward", &fastgpt::backward, "(grad_out, q, k, v, out, lse, dropout_p, seed) -> (dq, dk, dv)");
  m.def("keep_mask", &fastgpt::keep_mask, "(seed, B, H, T, dropout_p) -> bool (B, H, T, T) keep mask");
  m.def("decode_step", &fastgpt::decode_step,
        "(tokens, pos, params, scales, cache, n_head, eps) -> logits (N, vocab): one sampling step");
  m.def("instruction_set", &fastgpt::instruction_set, "the instruction set the kernels use on this CPU");
}
