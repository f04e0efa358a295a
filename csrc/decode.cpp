// The CPU kernel of the op fastgpt::decode_step (schema and fake: fastgpt/ops/decode.py; CPU only):
// sampling steps of the GPT in one call. Each of N sequences adds one position per step (L steps for
// a (N, L) block of tokens: a refill of the cache is one call): its token and position embeddings go
// through every block (LayerNorm, the qkv projection, its key and value written into the cache,
// attention over the cached positions, the output projection, LayerNorm, the ReLU MLP, both
// residuals) and the final LayerNorm and head, giving the next-token logits (N, vocab).
// fastgpt/decode.py hands it the model's tensors by name, one list per kind of block tensor.
//
// At batch 1 a step reads every weight once for two flops each, so it runs at the speed of memory;
// what this call removes is the rest: ~100 operator dispatches, their allocations and the Python
// between them per token. The matrix products are split over at::parallel_for by output column;
// everything else is a few thousand flops and runs on the calling thread.
#include "extension.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#define FASTGPT_KERNELS "decode_kernels.h"
#include "isa_copies.h"

namespace fastgpt {
namespace {

using at::Tensor;

// A weight matrix (M, K) (float, bfloat16 or int8), its int8 row scales (M) or none, its bias (M) or none.
struct Matrix {
  const Tensor* weight;
  const Tensor* scale;
  const Tensor* bias;
};

// One block's tensors, named as in fastgpt/model.py.
struct Layer {
  const Tensor &ln1_weight, &ln1_bias;
  Matrix qkv, attn_proj;
  const Tensor &ln2_weight, &ln2_bias;
  Matrix fc, mlp_proj;
};

// The model as the op fastgpt::decode_step takes it (schema: fastgpt/ops/decode.py).
struct Model {
  const Tensor &token_embedding, &position_embedding;
  std::vector<Layer> layers;
  const Tensor &ln_f_weight, &ln_f_bias;
  Matrix head;
  at::TensorList keys, values;  // the cache of each layer (N, n_head, block, head size), written in place
};

// Multiply-adds below which a product is not worth splitting over threads.
constexpr int64_t kWorkPerTask = 1 << 16;

// One position's activations for N sequences, reused by every position of a call.
template <typename T>
struct Activations {
  std::vector<T> x, h, qkv, att, hidden;
  Activations(int64_t N, int64_t C) : x(N * C), h(N * C), qkv(N * 3 * C), att(N * C), hidden(N * 4 * C) {}
};

template <typename T>
const T* data(const Tensor& t) {
  return t.data_ptr<T>();
}

template <typename Isa, typename T, typename W>
void step(const int64_t* tokens, int64_t N, int64_t pos, const Model& model, int64_t H, double eps,
          Activations<T>& a, T* logits) {
  const int64_t C = model.token_embedding.size(1);
  const int64_t D = C / H, S = model.keys[0].size(2), L = pos + 1;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(D)));

  // y (N, M) from x (N, K) through a weight matrix.
  auto linear = [&](const T* x, int64_t K, const Matrix& matrix, Epilogue epilogue, T* y) {
    const W* w = static_cast<const W*>(matrix.weight->const_data_ptr());
    const T* row_scale = matrix.scale == nullptr ? nullptr : data<T>(*matrix.scale);
    const T* b = matrix.bias == nullptr ? nullptr : data<T>(*matrix.bias);
    const int64_t M = matrix.weight->size(0);
    at::parallel_for(0, M, std::max<int64_t>(1, kWorkPerTask / (K * N)), [&](int64_t m0, int64_t m1) {
      Isa::linear(x, N, K, w, row_scale, b, epilogue, m0, m1, y, M);
    });
  };

  auto &x = a.x, &h = a.h, &qkv = a.qkv, &att = a.att, &hidden = a.hidden;
  const T *tok = data<T>(model.token_embedding), *pe = data<T>(model.position_embedding) + pos * C;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) x[n * C + c] = tok[tokens[n] * C + c] + pe[c];

  for (size_t l = 0; l < model.layers.size(); ++l) {
    const Layer& layer = model.layers[l];
    T *keys = model.keys[l].data_ptr<T>(), *values = model.values[l].data_ptr<T>();
    Isa::layer_norm(x.data(), N, C, data<T>(layer.ln1_weight), data<T>(layer.ln1_bias), eps, h.data());
    linear(h.data(), C, layer.qkv, Epilogue::kStore, qkv.data());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t hd = 0; hd < H; ++hd) {
        const int64_t slot = ((n * H + hd) * S + pos) * D;  // cache[n, hd, pos]
        std::memcpy(keys + slot, &qkv[n * 3 * C + C + hd * D], D * sizeof(T));
        std::memcpy(values + slot, &qkv[n * 3 * C + 2 * C + hd * D], D * sizeof(T));
      }
    at::parallel_for(0, N * H, std::max<int64_t>(1, kWorkPerTask / (2 * L * D)), [&](int64_t b0, int64_t b1) {
      std::vector<T> scores(L);
      for (int64_t bh = b0; bh < b1; ++bh) {
        const int64_t n = bh / H, hd = bh % H, head = bh * S * D;
        Isa::attend(&qkv[n * 3 * C + hd * D], keys + head, values + head, L, D, scale, scores.data(),
                    &att[n * C + hd * D]);
      }
    });
    linear(att.data(), C, layer.attn_proj, Epilogue::kAdd, x.data());
    Isa::layer_norm(x.data(), N, C, data<T>(layer.ln2_weight), data<T>(layer.ln2_bias), eps, h.data());
    linear(h.data(), C, layer.fc, Epilogue::kRelu, hidden.data());
    linear(hidden.data(), 4 * C, layer.mlp_proj, Epilogue::kAdd, x.data());
  }
  if (logits == nullptr) return;  // a position whose keys and values are all that is wanted
  Isa::layer_norm(x.data(), N, C, data<T>(model.ln_f_weight), data<T>(model.ln_f_bias), eps, h.data());
  linear(h.data(), C, model.head, Epilogue::kStore, logits);
}

// step() for positions pos .. pos + L - 1 of tokens (L, N), one after the other, each appending its
// keys and values to the cache; the logits are those of the last.
template <typename Isa, typename T, typename W>
void steps(const int64_t* tokens, int64_t L, int64_t N, int64_t pos, const Model& model, int64_t H, double eps,
           T* logits) {
  Activations<T> activations(N, model.token_embedding.size(1));
  for (int64_t s = 0; s < L; ++s)
    step<Isa, T, W>(tokens + s * N, N, pos + s, model, H, eps, activations, s == L - 1 ? logits : nullptr);
}

// The op's checks of the model's tensors: shapes, dtypes (weight matrices `matrix_dtype`, every other
// tensor `dtype`), contiguous CPU memory.
void check_model(const Model& model, int64_t V, int64_t C, at::ScalarType dtype, at::ScalarType matrix_dtype) {
  auto expect = [&](const Tensor& t, const char* name, std::initializer_list<int64_t> shape, at::ScalarType type) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "fastgpt::decode_step: ", name,
                " must be a contiguous CPU tensor");
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "fastgpt::decode_step: ", name, " has shape ", t.sizes(),
                ", expected ", at::IntArrayRef(shape));
    TORCH_CHECK(t.scalar_type() == type, "fastgpt::decode_step: ", name, " is ", t.scalar_type(), ", expected ", type,
                " (weight matrices share one dtype, every other tensor has the embeddings')");
  };
  auto expect_matrix = [&](const Matrix& m, const char* name, int64_t M, int64_t K) {
    expect(*m.weight, name, {M, K}, matrix_dtype);
    if (m.scale != nullptr) expect(*m.scale, "a row scale", {M}, at::kFloat);
    if (m.bias != nullptr) expect(*m.bias, "a bias", {M}, dtype);
  };
  expect(model.position_embedding, "position_embedding", {model.position_embedding.size(0), C}, dtype);
  for (const Layer& layer : model.layers) {
    for (const Tensor* t : {&layer.ln1_weight, &layer.ln1_bias, &layer.ln2_weight, &layer.ln2_bias})
      expect(*t, "a LayerNorm weight or bias", {C}, dtype);
    expect_matrix(layer.qkv, "qkv_weight", 3 * C, C);
    expect_matrix(layer.attn_proj, "attn_proj_weight", C, C);
    expect_matrix(layer.fc, "fc_weight", 4 * C, C);
    expect_matrix(layer.mlp_proj, "mlp_proj_weight", C, 4 * C);
  }
  expect(model.ln_f_weight, "ln_f_weight", {C}, dtype);
  expect(model.ln_f_bias, "ln_f_bias", {C}, dtype);
  expect_matrix(model.head, "head_weight", V, C);
}

// The op fastgpt::decode_step (schema: fastgpt/ops/decode.py).
Tensor decode_step(const Tensor& tokens_in, int64_t pos, const Tensor& token_embedding,
                   const Tensor& position_embedding, at::TensorList ln1_weight, at::TensorList ln1_bias,
                   at::TensorList qkv_weight, at::TensorList qkv_scale, at::TensorList attn_proj_weight,
                   at::TensorList attn_proj_scale, at::TensorList attn_proj_bias, at::TensorList ln2_weight,
                   at::TensorList ln2_bias, at::TensorList fc_weight, at::TensorList fc_scale, at::TensorList fc_bias,
                   at::TensorList mlp_proj_weight, at::TensorList mlp_proj_scale, at::TensorList mlp_proj_bias,
                   const Tensor& ln_f_weight, const Tensor& ln_f_bias, const Tensor& head_weight,
                   const std::optional<Tensor>& head_scale, const Tensor& head_bias, at::TensorList keys,
                   at::TensorList values, int64_t n_head, double eps) {
  TORCH_CHECK((tokens_in.dim() == 1 || tokens_in.dim() == 2) && tokens_in.scalar_type() == at::kLong,
              "fastgpt::decode_step: tokens must be int64, (N,) or (N, L)");
  TORCH_CHECK(tokens_in.dim() == 1 || tokens_in.size(1) > 0, "fastgpt::decode_step: no positions to step");
  // (L, N): the tokens of each position side by side
  const Tensor tokens = tokens_in.dim() == 1 ? tokens_in.unsqueeze(0).contiguous() : tokens_in.t().contiguous();
  const int64_t L = tokens.size(0), N = tokens.size(1), layers = static_cast<int64_t>(keys.size());
  const bool scaled = head_scale.has_value();
  for (at::TensorList list : {ln1_weight, ln1_bias, qkv_weight, attn_proj_weight, attn_proj_bias, ln2_weight, ln2_bias,
                              fc_weight, fc_bias, mlp_proj_weight, mlp_proj_bias, values})
    TORCH_CHECK(static_cast<int64_t>(list.size()) == layers, "fastgpt::decode_step: expected one tensor per layer "
                "in every list (", layers, " key caches), got ", list.size());
  for (at::TensorList list : {qkv_scale, attn_proj_scale, fc_scale, mlp_proj_scale})
    TORCH_CHECK(static_cast<int64_t>(list.size()) == (scaled ? layers : 0),
                "fastgpt::decode_step: expected row scales for every weight matrix (int8) or for none");
  TORCH_CHECK(layers > 0, "fastgpt::decode_step: expected at least one layer");
  auto matrix = [](at::TensorList weight, at::TensorList scale, at::TensorList bias, int64_t l) {
    return Matrix{&weight[l], scale.empty() ? nullptr : &scale[l], bias.empty() ? nullptr : &bias[l]};
  };
  std::vector<Layer> blocks;
  for (int64_t l = 0; l < layers; ++l)
    blocks.push_back(Layer{ln1_weight[l], ln1_bias[l], matrix(qkv_weight, qkv_scale, {}, l),
                           matrix(attn_proj_weight, attn_proj_scale, attn_proj_bias, l), ln2_weight[l], ln2_bias[l],
                           matrix(fc_weight, fc_scale, fc_bias, l), matrix(mlp_proj_weight, mlp_proj_scale, mlp_proj_bias, l)});
  const Model model{token_embedding, position_embedding, std::move(blocks), ln_f_weight, ln_f_bias,
                    Matrix{&head_weight, scaled ? &*head_scale : nullptr, &head_bias}, keys, values};

  const auto dtype = token_embedding.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fastgpt::decode_step: dtype ", dtype,
              " is not float32 or float64");
  TORCH_CHECK(token_embedding.device().is_cpu() && token_embedding.is_contiguous() && token_embedding.dim() == 2,
              "fastgpt::decode_step: token_embedding must be a contiguous CPU (vocabulary, C) tensor");
  const int64_t C = token_embedding.size(1), V = token_embedding.size(0);
  TORCH_CHECK(n_head > 0 && C % n_head == 0 && (C / n_head) % kLanes == 0,
              "fastgpt::decode_step: the head size must be a multiple of ", kLanes);
  for (at::TensorList cache : {keys, values})
    for (const Tensor& t : cache)
      TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == dtype && t.dim() == 4 &&
                      t.size(0) == N && t.size(1) == n_head && t.size(2) == keys[0].size(2) && t.size(3) == C / n_head,
                  "fastgpt::decode_step: each cache must be a contiguous (N, n_head, block, head size) CPU tensor "
                  "of the embeddings' dtype");
  TORCH_CHECK(0 <= pos && pos + L <= keys[0].size(2) && pos + L <= position_embedding.size(0),
              "fastgpt::decode_step: positions ", pos, " to ", pos + L - 1, " are past the cache");
  const auto matrix_dtype = head_weight.scalar_type();
  check_model(model, V, C, dtype, matrix_dtype);
  const int64_t* tp = tokens.data_ptr<int64_t>();
  for (int64_t n = 0; n < N * L; ++n)
    TORCH_CHECK(0 <= tp[n] && tp[n] < V, "fastgpt::decode_step: token ", tp[n], " is not below the vocabulary size ", V);

  Tensor logits = at::empty({N, V}, token_embedding.options());
  with_isa([&](auto kernels) {
    using Isa = decltype(kernels);
    if (dtype == at::kDouble) {
      TORCH_CHECK(matrix_dtype == at::kDouble && !scaled,
                  "fastgpt::decode_step: float64 embeddings need float64 weights");
      return steps<Isa, double, double>(tp, L, N, pos, model, n_head, eps, logits.data_ptr<double>());
    }
    float* out = logits.data_ptr<float>();
    switch (matrix_dtype) {
      case at::kFloat: return steps<Isa, float, float>(tp, L, N, pos, model, n_head, eps, out);
      case at::kBFloat16: return steps<Isa, float, uint16_t>(tp, L, N, pos, model, n_head, eps, out);
      case at::kChar:
        TORCH_CHECK(scaled, "fastgpt::decode_step: int8 weights need their row scales");
        return steps<Isa, float, int8_t>(tp, L, N, pos, model, n_head, eps, out);
      default: TORCH_CHECK(false, "fastgpt::decode_step: weight dtype ", matrix_dtype,
                           " is not float32, bfloat16 or int8");
    }
  });
  return logits;
}

}  // namespace
}  // namespace fastgpt

TORCH_LIBRARY_IMPL(fastgpt, CPU, m) { m.impl("decode_step", &fastgpt::decode_step); }
