// Compiles the kernel header named by FASTGPT_KERNELS three times: for the baseline x86-64/ARM
// target (namespace fastgpt::baseline) and, with GCC or clang on x86-64, for AVX2 + FMA
// (fastgpt::avx2) and AVX-512 (fastgpt::avx512); with_isa calls the copy of the instruction set in
// use (isa.h): a
// portable build that is still fast, with no host-specific build flag. Include it once per .cpp
// file, after the torch headers and with FASTGPT_KERNELS defined as a quoted header name that
// defines the struct Kernels of each copy.
#pragma once

#include "attention_common.h"
#include "isa.h"

// The kernels pass kLanes-wide vectors between inline functions only; GCC's note that such
// arguments would change the ABI of an out-of-line call does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#define FASTGPT_ISA baseline
#define FASTGPT_AVX2_INTRINSICS 0
#define FASTGPT_AVX512_INTRINSICS 0
#include FASTGPT_KERNELS
#undef FASTGPT_AVX512_INTRINSICS
#undef FASTGPT_AVX2_INTRINSICS
#undef FASTGPT_ISA

#ifdef FASTGPT_HAVE_X86_COPIES
#include <immintrin.h>
// GCC sets a target for every function that follows; clang applies the same target attribute to
// every function (lambdas included) declared inside its push/pop.
#ifdef __clang__
#define FASTGPT_TARGET_BEGIN(features) \
  _Pragma(FASTGPT_STRINGIFY(clang attribute push(__attribute__((target(features))), apply_to = function)))
#define FASTGPT_TARGET_END _Pragma("clang attribute pop")
#else
#define FASTGPT_TARGET_BEGIN(features) _Pragma("GCC push_options") _Pragma(FASTGPT_STRINGIFY(GCC target(features)))
#define FASTGPT_TARGET_END _Pragma("GCC pop_options")
#endif
#define FASTGPT_STRINGIFY(x) #x

FASTGPT_TARGET_BEGIN("avx2,fma")
#define FASTGPT_ISA avx2
#define FASTGPT_AVX2_INTRINSICS 1
#define FASTGPT_AVX512_INTRINSICS 0
#include FASTGPT_KERNELS
#undef FASTGPT_AVX512_INTRINSICS
#undef FASTGPT_AVX2_INTRINSICS
#undef FASTGPT_ISA
FASTGPT_TARGET_END

// AVX-512 (F, BW, DQ, VL): Philox runs on one 512-bit register of eight 64-bit lanes, and the
// 256-bit float vectors get 32 registers, masked moves and three-way logic (vpternlog).
FASTGPT_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#define FASTGPT_ISA avx512
#define FASTGPT_AVX2_INTRINSICS 1
#define FASTGPT_AVX512_INTRINSICS 1
#include FASTGPT_KERNELS
#undef FASTGPT_AVX512_INTRINSICS
#undef FASTGPT_AVX2_INTRINSICS
#undef FASTGPT_ISA
FASTGPT_TARGET_END
#endif

namespace fastgpt {
namespace {  // each .cpp file has its own Kernels, and so its own with_isa

// Runs f(Kernels{}) with the copy of FASTGPT_KERNELS compiled for the instruction set in use.
template <typename F>
void with_isa(F&& f) {
#ifdef FASTGPT_HAVE_X86_COPIES
  switch (isa_in_use().load()) {
    case IsaLevel::avx512: return f(avx512::Kernels{});
    case IsaLevel::avx2: return f(avx2::Kernels{});
    case IsaLevel::baseline: break;
  }
#endif
  f(baseline::Kernels{});
}

}  // namespace
}  // namespace fastgpt
