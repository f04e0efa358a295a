// kLanes-wide vector loads, stores, reductions and exp shared by the kernel headers. Like them it has
// no include guard: each instruction-set copy (FASTGPT_ISA) includes it into its own namespace.

namespace fastgpt {
namespace FASTGPT_ISA {

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}

template <typename T>
inline void store(T* p, Vec<T> x) { std::memcpy(p, &x, sizeof(x)); }

template <typename T>
inline Vec<T> splat(T x) { return Vec<T>{} + x; }

template <typename T>
inline T horizontal_sum(Vec<T> x) {
  T sum = 0;
  for (int u = 0; u < kLanes; ++u) sum += x[u];
  return sum;
}

// The sums of kLanes vectors at once, sums[u] = Σ_i x[u][i]: a transpose folded into three rounds of
// shuffles and adds instead of kLanes lane-by-lane reductions.
template <typename T>
inline Vec<T> horizontal_sums(const Vec<T> (&x)[kLanes]) {
  static_assert(kLanes == 8, "three rounds of pairs");
  Vec<T> pairs[4], quads[2];
  for (int i = 0; i < 4; ++i)  // [x0 01, x1 01, x0 23, x1 23, ...] of x[2i], x[2i + 1]
    pairs[i] = __builtin_shufflevector(x[2 * i], x[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               __builtin_shufflevector(x[2 * i], x[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  for (int i = 0; i < 2; ++i)  // [x0 0-3, x1 0-3, x2 0-3, x3 0-3, x0 4-7, ...] of four vectors
    quads[i] = __builtin_shufflevector(pairs[2 * i], pairs[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(pairs[2 * i], pairs[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return __builtin_shufflevector(quads[0], quads[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(quads[0], quads[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// 0, 1, ..., kLanes - 1
template <typename T>
inline Vec<T> lane_index() {
  Vec<T> x;
  for (int u = 0; u < kLanes; ++u) x[u] = static_cast<T>(u);
  return x;
}

// ---------------------------------------------------------------------------------------------
// exp: a vector float exp (Cephes' polynomial, ~1 ulp) for arguments <= ~0; double uses std::exp
// lane by lane (float64 is the gradcheck path, not a fast one).
// ---------------------------------------------------------------------------------------------

inline f32xL exp_approx(f32xL x) {
  x = x > -87.0f ? x : splat(-87.0f);
  const f32xL t = x * 1.44269504088896341f + 12582912.0f;  // 1.5·2^23: rounds x·log2(e) to an integer
  const f32xL n = t - 12582912.0f;
  const i32xL n_int = reinterpret_cast<i32xL>(t) - 0x4B400000;
  const f32xL r = x - n * 0.693359375f - n * -2.12194440e-4f;  // x - n·ln 2 in two parts
  f32xL poly = splat(1.9875691500e-4f);
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  return reinterpret_cast<f32xL>(reinterpret_cast<i32xL>(poly) + (n_int << 23));  // times 2^n
}

inline f64xL exp_approx(f64xL x) {
  for (int u = 0; u < kLanes; ++u) x[u] = std::exp(x[u]);
  return x;
}

}  // namespace FASTGPT_ISA
}  // namespace fastgpt
