// fastgpt._C, the Python module: importing it registers the CPU kernels of every fastgpt op
// (TORCH_LIBRARY_IMPL in csrc/<op>.cpp: attention, dropout_add, decode; fastgpt/ops/cpu.py is the one
// importer) and binds what is not an op: the instruction-set choice and how it was built.
#include <torch/extension.h>

#include <string>

#include "extension.h"
#include "isa.h"

namespace fastgpt {
namespace {

// Which instruction set the kernels run with on this CPU.
std::string instruction_set() { return kIsaNames[static_cast<int>(isa_in_use().load())]; }

// Runs the kernels with a lower instruction set than the best (to compare the copies).
void set_instruction_set(const std::string& name) {
  for (int level = 0; level <= static_cast<int>(best_isa()); ++level)
    if (name == kIsaNames[level]) return isa_in_use().store(static_cast<IsaLevel>(level));
  TORCH_CHECK(false, "fastgpt._C: instruction set '", name, "' is not one this CPU runs (best: ",
              kIsaNames[static_cast<int>(best_isa())], ")");
}

// How this module was built: the compiler, OpenMP (at::parallel_for is parallel only with it) and
// the instruction-set copies compiled (isa_copies.h).
pybind11::dict build_info() {
  pybind11::dict info;
#if defined(__apple_build_version__)
  info["compiler"] = std::string("Apple clang ") + __clang_version__;
#elif defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("GCC ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = "MSVC " + std::to_string(_MSC_FULL_VER);
#else
  info["compiler"] = "unknown";
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  pybind11::list copies;
  copies.append(kIsaNames[static_cast<int>(IsaLevel::baseline)]);
#ifdef FASTGPT_HAVE_X86_COPIES
  copies.append(kIsaNames[static_cast<int>(IsaLevel::avx2)]);
  copies.append(kIsaNames[static_cast<int>(IsaLevel::avx512)]);
#endif
  info["copies"] = copies;
  return info;
}

}  // namespace
}  // namespace fastgpt

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgpt's CPU kernels: every op's CPU kernel is registered on import; the instruction-set choice";
  m.def("instruction_set", &fastgpt::instruction_set, "the instruction set the kernels use on this CPU");
  m.def("set_instruction_set", &fastgpt::set_instruction_set,
        "run the kernels compiled for this instruction set (baseline, avx2+fma, avx512), at most the CPU's best");
  m.def("build_info", &fastgpt::build_info, "{compiler, openmp, copies}: how this module was built");
}
