// What both instruction-set copies of the kernels share: tile sizes and the dropout parameters.
#pragma once

#include <cstdint>

namespace fastgpt {

constexpr int kLanes = 8;        // elements per vector step (one AVX2 register of float)
constexpr int kKeyBlock = 64;    // keys per tile: K^T and V^T of a tile stay in L1
constexpr int kQueryBlock = 32;  // query rows per forward task
constexpr int kRowGroup = 4;     // query rows that share each load of a key tile

// What the decode step's linear kernel does with each output: y = out, y = relu(out), or y += out
// (a residual connection).
enum class Epilogue { kStore, kRelu, kAdd };

inline int round_up(int n, int m) { return (n + m - 1) / m * m; }

// kLanes-wide vectors (GCC/Clang vector extensions): the compiler maps them onto the registers of
// whichever target a kernel copy is compiled for (two SSE or one AVX2 register of float).
typedef float f32xL __attribute__((vector_size(kLanes * sizeof(float))));
typedef double f64xL __attribute__((vector_size(kLanes * sizeof(double))));
typedef int32_t i32xL __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef int64_t i64xL __attribute__((vector_size(kLanes * sizeof(int64_t))));
typedef uint64_t u64xL __attribute__((vector_size(kLanes * sizeof(uint64_t))));

template <typename T>
struct VecOf;
template <>
struct VecOf<float> { using type = f32xL; using mask = i32xL; };
template <>
struct VecOf<double> { using type = f64xL; using mask = i64xL; };
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
using VecMask = typename VecOf<T>::mask;  // what comparing two Vec<T> gives

// Counter-based dropout: Philox-4x32-10, first output word, key (seed lo, seed hi), counter
// (offset lo, offset hi, 0, 0).
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u, kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u, kPhiloxKeyB = 0xBB67AE85u;

struct Dropout {
  bool on;
  uint32_t threshold;           // an element is kept when its Philox word is >= this
  uint32_t key0[10], key1[10];  // the key of each of the ten rounds
  double keep_scale;            // 1 / (1 - p)
};

inline Dropout make_dropout(double p, int64_t seed) {
  Dropout dr{};
  dr.on = p > 0;
  dr.threshold = static_cast<uint32_t>(p * 4294967296.0);
  uint32_t k0 = static_cast<uint32_t>(static_cast<uint64_t>(seed));
  uint32_t k1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  for (int r = 0; r < 10; ++r) {
    dr.key0[r] = k0;
    dr.key1[r] = k1;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  dr.keep_scale = 1.0 / (1.0 - p);
  return dr;
}

}  // namespace fastgpt
