// The instruction sets the kernels are compiled for (isa_copies.h) and the one they run with: the
// best this CPU has, unless set_instruction_set chose a lower one.
#pragma once

#include <atomic>

// x86-64 with GCC or clang compiles the AVX2 and AVX-512 copies (target attributes); MSVC and
// other targets (aarch64) compile the portable copy only.
#if defined(__x86_64__) && defined(__GNUC__)
#define FASTGPT_HAVE_X86_COPIES 1
#endif

namespace fastgpt {

enum class IsaLevel { baseline, avx2, avx512 };
inline const char* const kIsaNames[] = {"baseline", "avx2+fma", "avx512"};

inline IsaLevel best_isa() {
#ifdef FASTGPT_HAVE_X86_COPIES
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return IsaLevel::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return IsaLevel::avx2;
#endif
  return IsaLevel::baseline;
}

// The copy every kernel runs: the best this CPU has, unless set_instruction_set chose a lower one.
// One variable for the whole extension (an inline function's static is shared by every .cpp).
inline std::atomic<IsaLevel>& isa_in_use() {
  static std::atomic<IsaLevel> level{best_isa()};
  return level;
}

}  // namespace fastgpt
