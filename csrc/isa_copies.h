// Compiles the kernel header named by FASTGPT_KERNELS twice: for the baseline x86-64/ARM target
// (namespace fastgpt::baseline) and, with GCC on x86-64, for AVX2 + FMA (fastgpt::avx2, where
// FASTGPT_HAVE_AVX2 is then defined). cpu_has_avx2() says at run time which copy to call: a portable
// build that is still fast, with no host-specific build flag. Include it once per .cpp file, after
// the torch headers and with FASTGPT_KERNELS defined as a quoted header name.
#pragma once

#include "attention_common.h"

// The kernels pass kLanes-wide vectors between inline functions only; GCC's note that such
// arguments would change the ABI of an out-of-line call does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#define FASTGPT_ISA baseline
#define FASTGPT_AVX2_INTRINSICS 0
#include FASTGPT_KERNELS
#undef FASTGPT_AVX2_INTRINSICS
#undef FASTGPT_ISA

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define FASTGPT_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FASTGPT_ISA avx2
#define FASTGPT_AVX2_INTRINSICS 1
#include FASTGPT_KERNELS
#undef FASTGPT_AVX2_INTRINSICS
#undef FASTGPT_ISA
#pragma GCC pop_options
#endif

namespace fastgpt {

inline bool cpu_has_avx2() {
#ifdef FASTGPT_HAVE_AVX2
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

}  // namespace fastgpt
