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
