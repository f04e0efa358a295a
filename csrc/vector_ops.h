// kLanes-wide vector loads, stores and reductions shared by the kernel headers. Like them it has
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

}  // namespace FASTGPT_ISA
}  // namespace fastgpt
