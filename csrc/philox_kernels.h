// The dropout draws of every kernel, vectorised: kLanes Philox-4x32 calls at once, one per 64-bit
// lane. Compiled into each instruction-set copy (FASTGPT_ISA) by the kernel headers that include it,
// hence no include guard and nothing from ATen.

namespace fastgpt {
namespace FASTGPT_ISA {

// Philox works on 32-bit words; each is held in the low half of a 64-bit lane, so that one
// unsigned 32x32 -> 64-bit multiply per lane (pmuludq) gives both words of a product. The upper
// halves of the lanes may hold garbage: the multiply and the final packing read only low halves.

// The 64-bit products lo32(a)·b, lane by lane.
inline u64xL mul_low_words(u64xL a, uint32_t b) {
#if FASTGPT_AVX512_INTRINSICS
  static_assert(sizeof(u64xL) == sizeof(__m512i), "one AVX-512 register per vector");
  __m512i x;
  std::memcpy(&x, &a, sizeof(a));
  x = _mm512_maskz_mul_epu32(0xFF, x, _mm512_set1_epi64(b));  // maskz: GCC 12 warns on the unmasked form
  std::memcpy(&a, &x, sizeof(a));
  return a;
#elif FASTGPT_AVX2_INTRINSICS
  static_assert(sizeof(u64xL) == 2 * sizeof(__m256i), "two AVX2 registers per vector");
  const __m256i bv = _mm256_set1_epi64x(b);
  __m256i half[2];
  std::memcpy(half, &a, sizeof(a));
  half[0] = _mm256_mul_epu32(half[0], bv);
  half[1] = _mm256_mul_epu32(half[1], bv);
  std::memcpy(&a, half, sizeof(a));
  return a;
#else
  return (a & 0xFFFFFFFFu) * static_cast<uint64_t>(b);
#endif
}

constexpr int kDrawsPerPhiloxStep = kLanes * kDrawsPerCall;  // kLanes column blocks at once

// The 16-bit dropout draws of columns 8·block0 .. 8·block0 + kDrawsPerPhiloxStep - 1 of row `row`
// of head bh = b·H + h: one Philox call per lane, lane u on column block block0 + u.
inline void philox_draws(const Dropout& dr, uint64_t bh, uint64_t row, uint64_t block0, uint16_t* draws) {
  static_assert(kLanes == 8, "one column block per lane");
  const u64xL lanes = {0, 1, 2, 3, 4, 5, 6, 7};
  u64xL c0 = (lanes + block0) & 0xFFFFFFFFu, c1 = u64xL{} + (row & 0xFFFFFFFFu);
  u64xL c2 = u64xL{} + (bh & 0xFFFFFFFFu), c3 = u64xL{} + (bh >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const u64xL product_b = mul_low_words(c2, kPhiloxRoundB), product_a = mul_low_words(c0, kPhiloxRoundA);
    c0 = (product_b >> 32) ^ c1 ^ dr.key0[r];
    c2 = (product_a >> 32) ^ c3 ^ dr.key1[r];
    c1 = product_b;
    c3 = product_a;
  }
  // Block u's output in memory order: words 0, 1 then 2, 3, i.e. its eight draws in column order.
  const u64xL words01 = (c0 & 0xFFFFFFFFu) | (c1 << 32), words23 = (c2 & 0xFFFFFFFFu) | (c3 << 32);
  const u64xL first = __builtin_shufflevector(words01, words23, 0, 8, 1, 9, 2, 10, 3, 11);
  const u64xL second = __builtin_shufflevector(words01, words23, 4, 12, 5, 13, 6, 14, 7, 15);
  std::memcpy(draws, &first, sizeof(first));
  std::memcpy(draws + kDrawsPerPhiloxStep / 2, &second, sizeof(second));
}

}  // namespace FASTGPT_ISA
}  // namespace fastgpt
