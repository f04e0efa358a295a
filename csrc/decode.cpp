// fastgpt._C.decode_step: sampling steps of the GPT in one call. Each of N sequences adds one
// position per step (L steps for a (N, L) block of tokens: a refill of the cache is one call): its token and position embeddings go through every block (LayerNorm, the qkv
// projection, its key and value written into the cache, attention over the cached positions, the
// output projection, LayerNorm, the ReLU MLP, both residuals) and the final LayerNorm and head,
// giving the next-token logits (N, vocab). fastgpt/decode.py packs the model's tensors for it.
//
// At batch 1 a step reads every weight once for two flops each, so it runs at the speed of memory;
// what this call removes is the rest: ~100 operator dispatches, their allocations and the Python
// between them per token. The matrix products are split over at::parallel_for by output column;
// everything else is a few thousand flops and runs on the calling thread.
#include "extension.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#define FASTGPT_KERNELS "decode_kernels.h"
#include "isa_copies.h"

namespace fastgpt {
namespace {

using at::Tensor;

// The model's tensors, in the order of fastgpt/decode.py: the two embeddings, the final LayerNorm
// and head, then kPerLayer per block.
enum Param { kTokenEmbedding, kPositionEmbedding, kFinalNormWeight, kFinalNormBias, kHeadWeight, kHeadBias, kGlobal };
enum LayerParam { kNorm1Weight, kNorm1Bias, kQkvWeight, kProjWeight, kProjBias, kNorm2Weight, kNorm2Bias,
                  kFcWeight, kFcBias, kFc2Weight, kFc2Bias, kPerLayer };
// The weight matrices, in the order of `scales`: per block qkv, proj, fc, fc2, then the head.
constexpr int kMatricesPerLayer = 4;

// Multiply-adds below which a product is not worth splitting over threads.
constexpr int64_t kWorkPerTask = 1 << 16;

// One position's activations for N sequences, reused by every position of a call.
template <typename T>
struct Activations {
  std::vector<T> x, h, qkv, att, hidden;
  Activations(int64_t N, int64_t C) : x(N * C), h(N * C), qkv(N * 3 * C), att(N * C), hidden(N * 4 * C) {}
};

template <typename Isa, typename T, typename W>
void step(const int64_t* tokens, int64_t N, int64_t pos, at::TensorList params, at::TensorList scales,
          at::TensorList cache, int64_t H, double eps, Activations<T>& a, T* logits) {
  const int64_t C = params[kTokenEmbedding].size(1);
  const int64_t D = C / H, S = cache[0].size(2), L = pos + 1, layers = cache.size() / 2;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(D)));
  auto vec = [&](int64_t i) { return params[i].data_ptr<T>(); };

  // y (N, M) from x (N, K) through weight matrix `matrix` (its params index `weight`).
  auto linear = [&](const T* x, int64_t K, int64_t weight, int64_t bias, int64_t matrix, Epilogue epilogue, T* y) {
    const W* w = static_cast<const W*>(params[weight].const_data_ptr());
    const T* row_scale = scales.empty() ? nullptr : scales[matrix].data_ptr<T>();
    const T* b = bias < 0 ? nullptr : vec(bias);
    const int64_t M = params[weight].size(0);
    at::parallel_for(0, M, std::max<int64_t>(1, kWorkPerTask / (K * N)), [&](int64_t m0, int64_t m1) {
      Isa::linear(x, N, K, w, row_scale, b, epilogue, m0, m1, y, M);
    });
  };

  auto &x = a.x, &h = a.h, &qkv = a.qkv, &att = a.att, &hidden = a.hidden;
  const T *tok = vec(kTokenEmbedding), *pe = vec(kPositionEmbedding) + pos * C;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) x[n * C + c] = tok[tokens[n] * C + c] + pe[c];

  for (int64_t l = 0; l < layers; ++l) {
    const int64_t p = kGlobal + l * kPerLayer, matrix = l * kMatricesPerLayer;
    T *keys = cache[2 * l].data_ptr<T>(), *values = cache[2 * l + 1].data_ptr<T>();
    Isa::layer_norm(x.data(), N, C, vec(p + kNorm1Weight), vec(p + kNorm1Bias), eps, h.data());
    linear(h.data(), C, p + kQkvWeight, -1, matrix, Epilogue::kStore, qkv.data());
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
    linear(att.data(), C, p + kProjWeight, p + kProjBias, matrix + 1, Epilogue::kAdd, x.data());
    Isa::layer_norm(x.data(), N, C, vec(p + kNorm2Weight), vec(p + kNorm2Bias), eps, h.data());
    linear(h.data(), C, p + kFcWeight, p + kFcBias, matrix + 2, Epilogue::kRelu, hidden.data());
    linear(hidden.data(), 4 * C, p + kFc2Weight, p + kFc2Bias, matrix + 3, Epilogue::kAdd, x.data());
  }
  if (logits == nullptr) return;  // a position whose keys and values are all that is wanted
  Isa::layer_norm(x.data(), N, C, vec(kFinalNormWeight), vec(kFinalNormBias), eps, h.data());
  linear(h.data(), C, kHeadWeight, kHeadBias, layers * kMatricesPerLayer, Epilogue::kStore, logits);
}

// step() for positions pos .. pos + L - 1 of tokens (L, N), one after the other, each appending its
// keys and values to the cache; the logits are those of the last.
template <typename Isa, typename T, typename W>
void steps(const int64_t* tokens, int64_t L, int64_t N, int64_t pos, at::TensorList params, at::TensorList scales,
           at::TensorList cache, int64_t H, double eps, T* logits) {
  Activations<T> activations(N, params[kTokenEmbedding].size(1));
  for (int64_t s = 0; s < L; ++s)
    step<Isa, T, W>(tokens + s * N, N, pos + s, params, scales, cache, H, eps, activations,
                    s == L - 1 ? logits : nullptr);
}

}  // namespace

Tensor decode_step(const Tensor& tokens_in, int64_t pos, const std::vector<Tensor>& params,
                   const std::vector<Tensor>& scales, const std::vector<Tensor>& cache, int64_t n_head, double eps) {
  TORCH_CHECK((tokens_in.dim() == 1 || tokens_in.dim() == 2) && tokens_in.scalar_type() == at::kLong,
              "fastgpt._C.decode_step: tokens must be int64, (N,) or (N, L)");
  TORCH_CHECK(tokens_in.dim() == 1 || tokens_in.size(1) > 0, "fastgpt._C.decode_step: no positions to step");
  // (L, N): the tokens of each position side by side
  const Tensor tokens = tokens_in.dim() == 1 ? tokens_in.unsqueeze(0).contiguous() : tokens_in.t().contiguous();
  const int64_t L = tokens.size(0);
  TORCH_CHECK(cache.size() % 2 == 0 && !cache.empty() &&
                  static_cast<int64_t>(params.size()) == kGlobal + kPerLayer * static_cast<int64_t>(cache.size() / 2),
              "fastgpt._C.decode_step: expected ", kGlobal, " + ", kPerLayer, " tensors per layer and a key and a "
              "value cache per layer, got ", params.size(), " and ", cache.size());
  const int64_t layers = cache.size() / 2, N = tokens.size(1);
  TORCH_CHECK(scales.empty() || static_cast<int64_t>(scales.size()) == layers * kMatricesPerLayer + 1,
              "fastgpt._C.decode_step: expected no scales or one per weight matrix");
  const Tensor& emb = params[kTokenEmbedding];
  const auto dtype = emb.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fastgpt._C.decode_step: dtype ", dtype,
              " is not float32 or float64");
  const int64_t C = emb.size(1), V = emb.size(0);
  TORCH_CHECK(n_head > 0 && C % n_head == 0 && (C / n_head) % kLanes == 0,
              "fastgpt._C.decode_step: the head size must be a multiple of ", kLanes);
  for (const Tensor& t : cache)
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == dtype && t.dim() == 4 && t.size(0) == N &&
                    t.size(1) == n_head && t.size(3) == C / n_head,
                "fastgpt._C.decode_step: each cache must be a contiguous (N, n_head, block, head size) tensor "
                "of the embeddings' dtype");
  TORCH_CHECK(0 <= pos && pos + L <= cache[0].size(2) && pos + L <= params[kPositionEmbedding].size(0),
              "fastgpt._C.decode_step: positions ", pos, " to ", pos + L - 1, " are past the cache");
  const auto matrix_dtype = params[kHeadWeight].scalar_type();
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& t = params[i];
    const bool matrix = t.dim() == 2 && i > kPositionEmbedding;
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "fastgpt._C.decode_step: expected contiguous CPU tensors");
    TORCH_CHECK(t.scalar_type() == (matrix ? matrix_dtype : dtype),
                "fastgpt._C.decode_step: weight matrices must share one dtype, every other tensor the embeddings'");
  }
  auto expect = [&](int64_t i, std::initializer_list<int64_t> shape) {
    TORCH_CHECK(params[i].sizes() == at::IntArrayRef(shape), "fastgpt._C.decode_step: tensor ", i, " has shape ",
                params[i].sizes(), ", expected ", at::IntArrayRef(shape));
  };
  expect(kPositionEmbedding, {params[kPositionEmbedding].size(0), C});
  expect(kHeadWeight, {V, C});
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t p = kGlobal + l * kPerLayer;
    expect(p + kQkvWeight, {3 * C, C});
    expect(p + kProjWeight, {C, C});
    expect(p + kFcWeight, {4 * C, C});
    expect(p + kFc2Weight, {C, 4 * C});
  }
  for (const Tensor& s : scales)
    TORCH_CHECK(s.scalar_type() == at::kFloat && s.is_contiguous(), "fastgpt._C.decode_step: scales must be float32");
  const int64_t* tp = tokens.data_ptr<int64_t>();
  for (int64_t n = 0; n < N * L; ++n)
    TORCH_CHECK(0 <= tp[n] && tp[n] < V, "fastgpt._C.decode_step: token ", tp[n], " is not below the vocabulary size ", V);

  Tensor logits = at::empty({N, params[kHeadWeight].size(0)}, emb.options());
  with_isa([&](auto kernels) {
    using Isa = decltype(kernels);
    if (dtype == at::kDouble) {
      TORCH_CHECK(matrix_dtype == at::kDouble, "fastgpt._C.decode_step: float64 embeddings need float64 weights");
      return steps<Isa, double, double>(tp, L, N, pos, params, scales, cache, n_head, eps, logits.data_ptr<double>());
    }
    float* out = logits.data_ptr<float>();
    switch (matrix_dtype) {
      case at::kFloat: return steps<Isa, float, float>(tp, L, N, pos, params, scales, cache, n_head, eps, out);
      case at::kBFloat16: return steps<Isa, float, uint16_t>(tp, L, N, pos, params, scales, cache, n_head, eps, out);
      case at::kChar:
        TORCH_CHECK(!scales.empty(), "fastgpt._C.decode_step: int8 weights need their row scales");
        return steps<Isa, float, int8_t>(tp, L, N, pos, params, scales, cache, n_head, eps, out);
      default: TORCH_CHECK(false, "fastgpt._C.decode_step: weight dtype ", matrix_dtype,
                           " is not float32, bfloat16 or int8");
    }
  });
  return logits;
}

}  // namespace fastgpt
