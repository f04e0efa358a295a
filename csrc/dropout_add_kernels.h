// The fused residual dropout: out = x·keep·keep_scale (+ residual), with the attention kernels'
// Philox draws. Compiled once per instruction set (isa_copies.h) for dropout_add.cpp, hence no include
// guard and nothing from ATen.

#include "vector_ops.h"
#include "philox_kernels.h"

namespace fastgpt {
namespace FASTGPT_ISA {

// out[n] = x[n]·keep(n)·keep_scale (+ residual[n]) for n in [begin, end), begin a
// multiple of kDrawsPerPhiloxStep. Element n of the flattened tensor takes draw n % 8 of the Philox
// call at counter (n / 8 lo, n / 8 hi, 0, 0) (fastgpt.ops.mask.residual_keep_mask).

template <typename T>
void dropout_add_range(const Dropout& dr, const T* x, const T* residual, int64_t begin, int64_t end, T* out) {
  uint16_t draws[kDrawsPerPhiloxStep];
  const VecMask<T> threshold = VecMask<T>{} + static_cast<int32_t>(dr.threshold);  // < 2^16: exact
  const T kept = static_cast<T>(dr.keep_scale);
  for (int64_t e0 = begin; e0 < end; e0 += kDrawsPerPhiloxStep) {
    // lanes never cross a 2^32 boundary of the block index: block0 is a multiple of kLanes
    const uint64_t block0 = static_cast<uint64_t>(e0) / kDrawsPerCall;
    philox_draws(dr, 0, block0 >> 32, block0, draws);
    const int n = static_cast<int>(std::min<int64_t>(end - e0, kDrawsPerPhiloxStep));
    int c = 0;
    for (; c + kLanes <= n; c += kLanes) {
      u16xL d;
      std::memcpy(&d, draws + c, sizeof(d));
      const Vec<T> z = __builtin_convertvector(d, VecMask<T>) >= threshold ? splat(kept) : Vec<T>{};
      store(out + e0 + c, residual ? load(x + e0 + c) * z + load(residual + e0 + c) : load(x + e0 + c) * z);
    }
    for (; c < n; ++c) {
      const T z = draws[c] >= dr.threshold ? kept : T(0);
      out[e0 + c] = residual ? x[e0 + c] * z + residual[e0 + c] : x[e0 + c] * z;
    }
  }
}

namespace {
struct Kernels {
  template <typename T>
  static void dropout_add(const Dropout& dr, const T* x, const T* residual, int64_t begin, int64_t end, T* out) {
    dropout_add_range(dr, x, residual, begin, end, out);
  }
};
}  // namespace

}  // namespace FASTGPT_ISA
}  // namespace fastgpt
