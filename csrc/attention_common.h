// What every instruction-set copy of the kernels share: tile sizes and the dropout parameters.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fastgpt {

constexpr int kLanes = 8;        // elements per vector step (one AVX2 register of float)
constexpr int kKeyBlock = 64;    // keys per tile: K^T and V^T of a tile stay in L1
constexpr int kQueryBlock = 256;  // query rows per forward task at most: its row state stays in L2
constexpr int kRowGroup = 4;     // query rows that share each load of a key tile (forward)
constexpr int kBackwardRows = 16;  // query rows per backward step: the depth of the dK and dV products

// What the decode step's linear kernel does with each output: y = out, y = relu(out), or y += out
// (a residual connection).
enum class Epilogue { kStore, kRelu, kAdd };

inline int round_up(int n, int m) { return (n + m - 1) / m * m; }

// One (batch, head) slice of a (B, H, T, D) tensor whose rows of D elements are contiguous: row i
// starts at p + i·ld (ld = D for a contiguous tensor, 3·H·D for a view of the packed qkv).
template <typename T>
struct Rows {
  T* p;
  int64_t ld;
  T* row(int64_t i) const { return p + i * ld; }
};

// kLanes-wide vectors (GCC/Clang vector extensions): the compiler maps them onto the registers of
// whichever target a kernel copy is compiled for (two SSE or one AVX2 register of float; the u64xL
// Philox lanes fill one AVX-512 register).
typedef float f32xL __attribute__((vector_size(kLanes * sizeof(float))));
typedef double f64xL __attribute__((vector_size(kLanes * sizeof(double))));
typedef int32_t i32xL __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef int64_t i64xL __attribute__((vector_size(kLanes * sizeof(int64_t))));
typedef uint64_t u64xL __attribute__((vector_size(kLanes * sizeof(uint64_t))));
typedef uint16_t u16xL __attribute__((vector_size(kLanes * sizeof(uint16_t))));

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

// Counter-based dropout, as fastgpt.ops.mask.attention_keep_mask: Philox-4x32 with kPhiloxRounds
// rounds (why 7: see there), key (seed lo, seed hi), counter (column block j / 8, row i, b·H + h lo,
// b·H + h hi); the 8 elements of a block take the 8 16-bit halves of the output in order (word 0
// low, word 0 high, word 1 low, ...) and are kept iff their draw >= round(p·2^16).
constexpr int kPhiloxRounds = 7;
constexpr int kDrawsPerCall = 8;  // 16-bit draws per Philox call: the width of a column block
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u, kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u, kPhiloxKeyB = 0xBB67AE85u;
static_assert(kLanes == kDrawsPerCall, "a vector of keep multipliers is one Philox call's draws");
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "draws are read as the 16-bit halves of words");

struct Dropout {
  bool on;
  uint32_t threshold;  // an element is kept when its 16-bit draw is >= this
  uint32_t key0[kPhiloxRounds], key1[kPhiloxRounds];  // the key of each round
  double keep_scale;   // 1 / (1 - threshold / 2^16)
};

inline Dropout make_dropout(double p, int64_t seed) {
  Dropout dr{};
  dr.on = p > 0;
  dr.threshold = std::min<uint32_t>(static_cast<uint32_t>(std::nearbyint(p * 65536.0)), 65535u);
  uint32_t k0 = static_cast<uint32_t>(static_cast<uint64_t>(seed));
  uint32_t k1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    dr.key0[r] = k0;
    dr.key1[r] = k1;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  dr.keep_scale = 65536.0 / (65536.0 - dr.threshold);
  return dr;
}

}  // namespace fastgpt
