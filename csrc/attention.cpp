// The CPU kernels of the ops fastgpt::causal_attention, ::causal_attention_backward, their
// packed-qkv forms and ::attention_keep_mask (schemas, fakes and autograd: fastgpt/ops/attention.py),
// registered below.
//
// The kernels (attention_kernels.h) are compiled once per instruction set and the best copy the CPU
// runs is chosen at run time (isa_copies.h). These functions check their inputs, read and write them
// in place where they can (any strides with contiguous rows of D elements, in the compute dtype:
// float32, or float64 for float64; bfloat16 is computed in float32 through buffers), and spread the
// (batch·head, block) tasks over at::parallel_for.
#include "extension.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
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

bool rows_readable(const Tensor& t, at::ScalarType dtype) { return t.scalar_type() == dtype && t.stride(3) == 1; }

// q, k, v as the kernels read them: in the compute dtype, rows of D contiguous elements, the three
// with the same strides. Views of the model's packed qkv projection are taken as they are.
std::array<Tensor, 3> readable_qkv(const Tensor& q, const Tensor& k, const Tensor& v, at::ScalarType dtype) {
  if (rows_readable(q, dtype) && q.strides() == k.strides() && q.strides() == v.strides() &&
      k.scalar_type() == dtype && v.scalar_type() == dtype)
    return {q, k, v};
  return {prepared(q, dtype), prepared(k, dtype), prepared(v, dtype)};
}

Tensor readable(const Tensor& t, at::ScalarType dtype) { return rows_readable(t, dtype) ? t : prepared(t, dtype); }

// Where the kernels write `t`: t itself when they can (compute dtype, contiguous rows), else a
// buffer that `written` copies into t afterwards (bfloat16 results, odd strides).
Tensor writable(const Tensor& t, at::ScalarType dtype) {
  return rows_readable(t, dtype) ? t : at::empty(t.sizes(), t.options().dtype(dtype));
}

void written(const Tensor& buffer, const Tensor& t) {
  if (!buffer.is_same(t)) t.copy_(buffer);
}

// The (b, h) slice of a (B, H, T, D) tensor as the kernels see it.
template <typename T>
Rows<T> head_rows(const Tensor& t, int64_t b, int64_t h) {
  using Base = std::remove_const_t<T>;
  return {const_cast<Base*>(t.const_data_ptr<Base>()) + b * t.stride(0) + h * t.stride(1), t.stride(2)};
}

void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, double dropout_p) {
  TORCH_CHECK(q.dim() == 4, "fastgpt._C: expected q, k, v of shape (B, H, T, D), got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "fastgpt._C: q, k, v shapes differ: ",
              q.sizes(), k.sizes(), v.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "fastgpt._C: q, k, v dtypes differ");
  check_dropout_p(dropout_p);
}

// Key blocks per backward task. A head's keys split into several chunks when there are few heads,
// so that a small batch still spreads over the threads; every chunk holds at least one key. A
// function of the shape only, so the bits do not depend on the thread count.
int64_t key_blocks_per_chunk(int64_t heads, int64_t seq_len) {
  const int64_t blocks = ceil_div(seq_len, kKeyBlock);
  return ceil_div(blocks, std::max<int64_t>(1, std::min(blocks, ceil_div(16, heads))));
}

// Query rows per forward task: a head's rows in one task, so that each key tile is transposed
// once, split when there are few heads to spread over the threads (or rows beyond kQueryBlock). A
// function of the shape only, like the backward's chunks (the rows' results do not depend on it).
int64_t rows_per_forward_task(int64_t heads, int64_t seq_len) {
  const int64_t chunks = std::max({int64_t{1}, ceil_div(seq_len, kQueryBlock),
                                   std::min(ceil_div(seq_len, kKeyBlock), ceil_div(16, heads))});
  return std::max(kRowGroup, round_up(static_cast<int>(ceil_div(seq_len, chunks)), kRowGroup));
}

// Causal attention of q, k, v (B, H, T, D) into out (B, H, T, D, q's dtype, any strides: a view of
// the (B, T, H, D) memory the output projection reads); returns the logsumexp (B, H, T).
Tensor forward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& out_in, double dropout_p,
               int64_t seed) {
  check_qkv(q_in, k_in, v_in, dropout_p);
  TORCH_CHECK(out_in.sizes() == q_in.sizes() && out_in.scalar_type() == q_in.scalar_type(),
              "fastgpt._C: out must have q's shape and dtype");
  const auto dtype = compute_dtype(q_in);
  // named tensors, not a structured binding: C++17 lambdas cannot capture those (clang refuses)
  const std::array<Tensor, 3> qkv = readable_qkv(q_in, k_in, v_in, dtype);
  const Tensor &q = qkv[0], &k = qkv[1], &v = qkv[2];
  const Tensor out = writable(out_in, dtype);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  Tensor lse = at::empty({B, H, T}, q.options().dtype(dtype));
  const Dropout dr = make_dropout(dropout_p, seed);
  const int64_t task_rows = rows_per_forward_task(B * H, T), blocks = ceil_div(T, task_rows);
  AT_DISPATCH_FLOATING_TYPES(dtype, "fastgpt_attention_forward", [&] {
    with_head_size(D, [&](auto head_size) {
      constexpr int kD = decltype(head_size)::value;
      const auto scale = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(D)));
      scalar_t* lp = lse.data_ptr<scalar_t>();
      with_isa([&](auto kernels) {
        at::parallel_for(0, B * H * blocks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t task = begin; task < end; ++task) {
            const int64_t bh = task / blocks, b = bh / H, h = bh % H, r0 = (task % blocks) * task_rows;
            decltype(kernels)::template forward<scalar_t, kD>(
                head_rows<const scalar_t>(q, b, h), head_rows<const scalar_t>(k, b, h),
                head_rows<const scalar_t>(v, b, h), r0, std::min(T, r0 + task_rows), scale, dr,
                static_cast<uint64_t>(bh), head_rows<scalar_t>(out, b, h), lp + bh * T);
          }
        });
      });
    });
  });
  written(out, out_in);
  return lse;
}

// The gradients of q, k, v written into dq, dk, dv (B, H, T, D, q's dtype, any strides: views of one
// (B, T, 3, H, D) gradient of the packed qkv projection).
void backward(const Tensor& grad_out_in, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
              const Tensor& out_in, const Tensor& lse_in, const Tensor& dq_in, const Tensor& dk_in,
              const Tensor& dv_in, double dropout_p, int64_t seed) {
  check_qkv(q_in, k_in, v_in, dropout_p);
  for (const Tensor* t : {&grad_out_in, &out_in, &dq_in, &dk_in, &dv_in})
    TORCH_CHECK(t->sizes() == q_in.sizes(), "fastgpt._C: grad_out, out, dq, dk, dv must have the shape of q");
  for (const Tensor* t : {&dq_in, &dk_in, &dv_in})
    TORCH_CHECK(t->scalar_type() == q_in.scalar_type(), "fastgpt._C: dq, dk, dv must have q's dtype");
  TORCH_CHECK(lse_in.sizes() == q_in.sizes().slice(0, 3), "fastgpt._C: lse must be (B, H, T)");
  const auto dtype = compute_dtype(q_in);
  // named tensors, not a structured binding: C++17 lambdas cannot capture those (clang refuses)
  const std::array<Tensor, 3> qkv = readable_qkv(q_in, k_in, v_in, dtype);
  const Tensor &q = qkv[0], &k = qkv[1], &v = qkv[2];
  const Tensor grad_out = readable(grad_out_in, dtype), out = readable(out_in, dtype);
  const Tensor lse = prepared(lse_in, dtype);
  const Tensor dq = writable(dq_in, dtype), dk = writable(dk_in, dtype), dv = writable(dv_in, dtype);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t chunk_keys = key_blocks_per_chunk(B * H, T) * kKeyBlock, chunks = ceil_div(T, chunk_keys);
  // The first key chunk writes dQ; each other chunk writes its share into its own buffer, added in a
  // fixed order below: no races, the same bits on every run.
  Tensor dq_parts = at::empty({chunks - 1, B, H, T, D}, q.options().dtype(dtype));
  const Dropout dr = make_dropout(dropout_p, seed);
  AT_DISPATCH_FLOATING_TYPES(dtype, "fastgpt_attention_backward", [&] {
    with_head_size(D, [&](auto head_size) {
      constexpr int kD = decltype(head_size)::value;
      const auto scale = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(D)));
      const scalar_t* lp = lse.data_ptr<scalar_t>();
      scalar_t* partp = dq_parts.data_ptr<scalar_t>();
      with_isa([&](auto kernels) {
        at::parallel_for(0, B * H * chunks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t task = begin; task < end; ++task) {
            const int64_t bh = task / chunks, b = bh / H, h = bh % H, chunk = task % chunks;
            const int64_t c0 = chunk * chunk_keys, c1 = std::min(T, c0 + chunk_keys);
            const Rows<scalar_t> dq_rows = chunk == 0 ? head_rows<scalar_t>(dq, b, h)
                                                      : Rows<scalar_t>{partp + ((chunk - 1) * B * H + bh) * T * kD, kD};
            decltype(kernels)::template backward<scalar_t, kD>(
                head_rows<const scalar_t>(q, b, h), head_rows<const scalar_t>(k, b, h),
                head_rows<const scalar_t>(v, b, h), head_rows<const scalar_t>(grad_out, b, h),
                head_rows<const scalar_t>(out, b, h), lp + bh * T, T, c0, c1, scale, dr, static_cast<uint64_t>(bh),
                dq_rows, head_rows<scalar_t>(dk, b, h), head_rows<scalar_t>(dv, b, h));
          }
        });
      });
    });
  });
  for (int64_t chunk = 1; chunk < chunks; ++chunk) dq.add_(dq_parts[chunk - 1]);
  written(dq, dq_in);
  written(dk, dk_in);
  written(dv, dv_in);
}

// The ops, with the schemas of fastgpt/ops/attention.py: outputs allocated here, in the layout each
// op returns ((B, H, T, D); (B, T, C) for the packed form, whose gradient is one (B, T, 3C) tensor).

std::tuple<Tensor, Tensor> causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, double dropout_p,
                                            const Tensor& seed) {
  Tensor out = at::empty(q.sizes(), q.options());
  Tensor lse = forward(q, k, v, out, dropout_p, seed_value(seed));
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> causal_attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k,
                                                             const Tensor& v, const Tensor& out, const Tensor& lse,
                                                             double dropout_p, const Tensor& seed) {
  Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(q.sizes(), q.options()),
         dv = at::empty(q.sizes(), q.options());
  backward(grad_out, q, k, v, out, lse, dq, dk, dv, dropout_p, seed_value(seed));
  return {dq, dk, dv};
}

// q, k, v (B, H, T, D) as views of the packed (B, T, 3C) = (B, T, 3, H, D) projection.
std::vector<Tensor> split_heads(const Tensor& qkv, int64_t n_head) {
  TORCH_CHECK(qkv.dim() == 3 && n_head > 0 && qkv.size(2) % (3 * n_head) == 0,
              "fastgpt._C: expected qkv (B, T, 3·n_head·D), got ", qkv.sizes(), " with n_head ", n_head);
  return qkv.unflatten(-1, {3, n_head, qkv.size(2) / (3 * n_head)}).permute({2, 0, 3, 1, 4}).unbind(0);
}

// The (B, H, T, D) view of a (B, T, C) tensor whose heads sit side by side.
Tensor heads(const Tensor& y, int64_t n_head) { return y.unflatten(-1, {n_head, y.size(-1) / n_head}).transpose(1, 2); }

std::tuple<Tensor, Tensor> causal_attention_qkv(const Tensor& qkv, int64_t n_head, double dropout_p,
                                                const Tensor& seed) {
  const auto q = split_heads(qkv, n_head);
  Tensor out = at::empty({qkv.size(0), qkv.size(1), qkv.size(2) / 3}, qkv.options());
  Tensor lse = forward(q[0], q[1], q[2], heads(out, n_head), dropout_p, seed_value(seed));
  return {out, lse};
}

Tensor causal_attention_qkv_backward(const Tensor& grad_out, const Tensor& qkv, const Tensor& out, const Tensor& lse,
                                     int64_t n_head, double dropout_p, const Tensor& seed) {
  Tensor dqkv = at::empty(qkv.sizes(), qkv.options());
  const auto q = split_heads(qkv, n_head), d = split_heads(dqkv, n_head);
  backward(heads(grad_out, n_head), q[0], q[1], q[2], heads(out, n_head), lse, d[0], d[1], d[2], dropout_p,
           seed_value(seed));
  return dqkv;
}

// The bool (B, H, T, T) keep mask that the kernels use for this seed and shape.
Tensor attention_keep_mask(const Tensor& seed, int64_t B, int64_t H, int64_t T, double dropout_p) {
  check_dropout_p(dropout_p);
  TORCH_CHECK(B >= 0 && H >= 0 && T >= 0, "fastgpt._C: B, H, T must not be negative");
  Tensor mask = at::empty({B, H, T, T}, at::kBool);
  const Dropout dr = make_dropout(dropout_p, seed_value(seed));
  bool* mp = mask.data_ptr<bool>();
  with_isa([&](auto kernels) {
    at::parallel_for(0, B * H * T, 64, [&](int64_t begin, int64_t end) {
      decltype(kernels)::keep_mask(dr, T, begin, end, mp);
    });
  });
  return mask;
}

}  // namespace
}  // namespace fastgpt

TORCH_LIBRARY_IMPL(fastgpt, CPU, m) {
  m.impl("causal_attention", &fastgpt::causal_attention);
  m.impl("causal_attention_backward", &fastgpt::causal_attention_backward);
  m.impl("causal_attention_qkv", &fastgpt::causal_attention_qkv);
  m.impl("causal_attention_qkv_backward", &fastgpt::causal_attention_qkv_backward);
  m.impl("attention_keep_mask", &fastgpt::attention_keep_mask);
}
