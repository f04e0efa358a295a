"""Builds the C++ attention extension, fastgpt._C, with torch.utils.cpp_extension.

Install with `pip install --no-build-isolation .` so that it builds against the torch already
installed (an isolated build would download another torch). FASTGPT_DEBUG=1 builds with -O0 -g.
"""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

sources = sorted(glob.glob("csrc/*.cpp"))
debug = os.environ.get("FASTGPT_DEBUG") == "1"
# -ffp-contract=fast lets the AVX2 copy of the kernels fuse multiply-adds (ISO C++ mode forbids it).
extra_compile_args = ["-O0", "-g"] if debug else ["-O3", "-ffp-contract=fast"]

setup(
    ext_modules=[CppExtension("fastgpt._C", sources, extra_compile_args={"cxx": extra_compile_args})]
    if sources else [],
    cmdclass={"build_ext": BuildExtension},
)
