// The kernels of the sampling step (decode.cpp): one new position per sequence through the model,
// its keys and values appended to a cache. Compiled once per instruction set (isa_copies.h), like
// attention_kernels.h, hence no include guard and nothing from ATen.
//
// At a few sequences a step is memory-bound: each weight is read once and used for a handful of
// multiply-adds. So a weight matrix may be stored narrower than the float activations: as
// bfloat16 (the upper half of a float, widened by a shift) or as int8 with one float scale per
// output row. Activations, sums and the cache stay in the compute type.

#include "vector_ops.h"

namespace fastgpt {
namespace FASTGPT_ISA {

typedef uint16_t u16xL __attribute__((vector_size(kLanes * sizeof(uint16_t))));
typedef uint32_t u32xL __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef int8_t i8xL __attribute__((vector_size(kLanes * sizeof(int8_t))));

// kLanes weights from p, in the compute type.
template <typename T>
inline Vec<T> widen(const T* p) { return load(p); }

// GCC widens vectors of 8- and 16-bit integers lane by lane; the AVX2 copy says what it means.
inline f32xL widen(const uint16_t* bfloat16_bits) {
#if FASTGPT_AVX2_INTRINSICS
  static_assert(sizeof(f32xL) == sizeof(__m256), "one AVX2 register per vector");
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bfloat16_bits));
  const __m256 x = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
  f32xL out;
  std::memcpy(&out, &x, sizeof(out));
  return out;
#else
  u16xL half;
  std::memcpy(&half, bfloat16_bits, sizeof(half));
  const u32xL bits = __builtin_convertvector(half, u32xL) << 16;
  f32xL x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
#endif
}

inline f32xL widen(const int8_t* p) {
#if FASTGPT_AVX2_INTRINSICS
  const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
  f32xL out;
  std::memcpy(&out, &x, sizeof(out));
  return out;
#else
  i8xL q;
  std::memcpy(&q, p, sizeof(q));
  return __builtin_convertvector(q, f32xL);
#endif
}

// sums[r][j] = Σ_k x[j·K + k]·w[r·K + k]: R weight rows against NB rows of x, each weight vector
// loaded once for all NB rows.
template <int R, int NB, typename T, typename W>
inline void dot_block(const T* x, int64_t K, const W* w, T (&sums)[R][NB]) {
  Vec<T> acc[R][NB] = {};
  for (int64_t k = 0; k < K; k += kLanes) {
    Vec<T> xs[NB];
    for (int j = 0; j < NB; ++j) xs[j] = load(x + j * K + k);
    for (int r = 0; r < R; ++r) {
      const Vec<T> wr = widen(w + r * K + k);
      for (int j = 0; j < NB; ++j) acc[r][j] += wr * xs[j];
    }
  }
  if constexpr (R == kLanes && NB == 1) {
    Vec<T> rows[kLanes];
    for (int r = 0; r < R; ++r) rows[r] = acc[r][0];
    const Vec<T> all = horizontal_sums<T>(rows);
    for (int r = 0; r < R; ++r) sums[r][0] = all[r];
  } else {
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < NB; ++j) sums[r][j] = horizontal_sum<T>(acc[r][j]);
  }
}

template <typename T>
inline void finish(T sum, const T* scale, const T* bias, int64_t m, Epilogue epilogue, T* y) {
  if (scale) sum *= scale[m];
  if (bias) sum += bias[m];
  if (epilogue == Epilogue::kAdd) *y += sum;
  else *y = epilogue == Epilogue::kRelu && sum < T(0) ? T(0) : sum;
}

template <int R, int NB, typename T, typename W>
inline void linear_block(const T* x, int64_t K, const W* w, const T* scale, const T* bias, Epilogue epilogue,
                         int64_t m, int64_t n, T* y, int64_t ldy) {
  T sums[R][NB];
  dot_block<R, NB>(x + n * K, K, w + m * K, sums);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) finish(sums[r][j], scale, bias, m + r, epilogue, y + (n + j) * ldy + m + r);
}

// Output columns m0 <= m < m1 of y (N, ldy) from x (N, K) and w (M, K): bias[m] + scale[m]·x·w[m]
// (scale, bias may be null), through the epilogue. K is a multiple of kLanes.
template <typename T, typename W>
inline void linear_columns(const T* x, int64_t N, int64_t K, const W* w, const T* scale, const T* bias,
                           Epilogue epilogue, int64_t m0, int64_t m1, T* y, int64_t ldy) {
  constexpr int kRows = 4, kBatch = 2;  // 4 × 2 accumulators, 4 weight and 2 x vectors in 16 registers
  // One sequence: 8 rows at once, so that 8 independent FMA chains hide the FMA latency.
  constexpr int kRowsAlone = 8;
  int64_t m = m0;
  if (N == 1)
    for (; m + kRowsAlone <= m1; m += kRowsAlone) linear_block<kRowsAlone, 1>(x, K, w, scale, bias, epilogue, m, 0, y, ldy);
  for (; m + kRows <= m1; m += kRows) {
    int64_t n = 0;
    for (; n + kBatch <= N; n += kBatch) linear_block<kRows, kBatch>(x, K, w, scale, bias, epilogue, m, n, y, ldy);
    for (; n < N; ++n) linear_block<kRows, 1>(x, K, w, scale, bias, epilogue, m, n, y, ldy);
  }
  for (; m < m1; ++m)
    for (int64_t n = 0; n < N; ++n) linear_block<1, 1>(x, K, w, scale, bias, epilogue, m, n, y, ldy);
}

// out = (x - mean) / sqrt(var + eps) · gamma + beta over one row of C; the moments in double.
template <typename T>
inline void layer_norm_row(const T* x, int64_t C, const T* gamma, const T* beta, double eps, T* out) {
  double mean = 0, var = 0;
  for (int64_t c = 0; c < C; ++c) mean += x[c];
  mean /= C;
  for (int64_t c = 0; c < C; ++c) var += (x[c] - mean) * (x[c] - mean);
  const double rstd = 1.0 / std::sqrt(var / C + eps);
  for (int64_t c = 0; c < C; ++c) out[c] = static_cast<T>((x[c] - mean) * rstd) * gamma[c] + beta[c];
}

// out (D) = Σ_t softmax_t(scale · q·k_t) v_t over the L cached positions, k and v (L, D) rows: the
// last position of causal attention, which sees every position. p holds L scores. D % kLanes == 0.
template <typename T>
inline void attend_row(const T* q, const T* k, const T* v, int64_t L, int64_t D, T scale, T* p, T* out) {
  T max = -std::numeric_limits<T>::infinity();
  int64_t t0 = 0;
  for (; t0 + kLanes <= L; t0 += kLanes) {  // kLanes scores at once
    Vec<T> acc[kLanes] = {};
    for (int64_t d = 0; d < D; d += kLanes) {
      const Vec<T> qd = load(q + d);
      for (int u = 0; u < kLanes; ++u) acc[u] += qd * load(k + (t0 + u) * D + d);
    }
    const Vec<T> scores = horizontal_sums<T>(acc) * scale;
    store(p + t0, scores);
    for (int u = 0; u < kLanes; ++u) max = std::max(max, scores[u]);
  }
  for (int64_t t = t0; t < L; ++t) {
    Vec<T> acc{};
    for (int64_t d = 0; d < D; d += kLanes) acc += load(q + d) * load(k + t * D + d);
    p[t] = horizontal_sum<T>(acc) * scale;
    max = std::max(max, p[t]);
  }
  Vec<T> sums{};
  int64_t t = 0;
  for (; t + kLanes <= L; t += kLanes) {
    const Vec<T> e = exp_approx(load(p + t) - max);
    store(p + t, e);
    sums += e;
  }
  T sum = horizontal_sum<T>(sums);
  for (; t < L; ++t) sum += p[t] = std::exp(p[t] - max);
  const T norm = T(1) / sum;
  for (int64_t d = 0; d < D; d += kLanes) {
    Vec<T> acc{};
    for (int64_t s = 0; s < L; ++s) acc += splat(p[s]) * load(v + s * D + d);
    store(out + d, acc * norm);
  }
}

// The entry points decode.cpp calls: out of line, so that each is compiled whole for this target.
namespace {
struct Kernels {
  template <typename T, typename W>
  static void linear(const T* x, int64_t N, int64_t K, const W* w, const T* scale, const T* bias, Epilogue epilogue,
                     int64_t m0, int64_t m1, T* y, int64_t ldy) {
    linear_columns(x, N, K, w, scale, bias, epilogue, m0, m1, y, ldy);
  }
  template <typename T>
  static void layer_norm(const T* x, int64_t rows, int64_t C, const T* gamma, const T* beta, double eps, T* out) {
    for (int64_t n = 0; n < rows; ++n) layer_norm_row(x + n * C, C, gamma, beta, eps, out + n * C);
  }
  template <typename T>
  static void attend(const T* q, const T* k, const T* v, int64_t L, int64_t D, T scale, T* p, T* out) {
    attend_row(q, k, v, L, D, scale, p, out);
  }
};
}  // namespace

}  // namespace FASTGPT_ISA
}  // namespace fastgpt
