"""Builds fastgpt: the packages (found, never listed by hand) and the C++ extension fastgpt._C.

Install with `pip install --no-build-isolation .` so that it builds against the torch already
installed (an isolated build would download another torch). The flags follow the compiler in use
(build_flags.py): FASTGPT_DEBUG=1 builds with -O0 -g, FASTGPT_OPENMP=0 without OpenMP. The
extension is optional: a compiler that cannot build it (none at all, MSVC, which lacks the GCC
vector extensions the kernels are written in) leaves an install that runs the PyTorch reference.
"""
import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, get_cxx_compiler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_flags  # noqa: E402  (beside this file)

# fastgpt/ and its subpackages, and the Triton kernels of kernels/ installed as fastgpt.kernels.
packages = find_packages(include=["fastgpt", "fastgpt.*"])
packages += ["fastgpt.kernels"] + [f"fastgpt.kernels.{name}" for name in find_packages("kernels")]

sources = sorted(glob.glob("csrc/*.cpp"))


class BuildWithCompilerFlags(BuildExtension):
    """torch's build_ext, with the flags build_flags chooses for the compiler it holds."""

    def build_extensions(self):
        flags = build_flags.for_compiler(self.compiler, get_cxx_compiler(), os.path.dirname(torch.__file__),
                                         torch._C.has_openmp)
        if flags.warning:
            print(f"warning: {flags.warning}", file=sys.stderr)
        for extension in self.extensions:
            extension.extra_compile_args = {"cxx": flags.compile}
            extension.extra_link_args = flags.link
        try:
            super().build_extensions()
        except Exception as error:  # torch's builder raises whatever its compiler calls raise
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"warning: fastgpt: the C++ extension was not built ({detail}); fastgpt runs the "
                  f"PyTorch reference instead (`fastgpt info` says so)", file=sys.stderr)


setup(
    packages=packages,
    package_dir={"fastgpt.kernels": "kernels"},
    ext_modules=[CppExtension("fastgpt._C", sources)],
    cmdclass={"build_ext": BuildWithCompilerFlags},
)
