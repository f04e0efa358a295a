"""Builds fastgpt: the packages (found, never listed by hand) and the C++ extension fastgpt._C.

Install with `pip install --no-build-isolation .` so that it builds against the torch already
installed (an isolated build would download another torch). FASTGPT_DEBUG=1 builds with -O0 -g.
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

# fastgpt/ and its subpackages, and the Triton kernels of kernels/ installed as fastgpt.kernels.
packages = find_packages(include=["fastgpt", "fastgpt.*"])
packages += ["fastgpt.kernels"] + [f"fastgpt.kernels.{name}" for name in find_packages("kernels")]

sources = sorted(glob.glob("csrc/*.cpp"))
debug = os.environ.get("FASTGPT_DEBUG") == "1"
# -ffp-contract=fast lets the AVX2 copy of the kernels fuse multiply-adds (ISO C++ mode forbids it).
compile_args = ["-O0", "-g"] if debug else ["-O3", "-ffp-contract=fast"]
# Where torch runs at::parallel_for on OpenMP, the inline loop in its header is parallel only when the
# extension is compiled and linked with -fopenmp too: without it every kernel runs on one core.
# (A torch on its native thread pool needs no flag.)
openmp = ["-fopenmp"] if torch._C.has_openmp else []

setup(
    packages=packages,
    package_dir={"fastgpt.kernels": "kernels"},
    ext_modules=[CppExtension("fastgpt._C", sources, extra_compile_args={"cxx": compile_args + openmp},
                              extra_link_args=openmp)],
    cmdclass={"build_ext": BuildExtension},
)
