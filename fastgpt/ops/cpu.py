"""The CPU kernels of every op: the C++ extension fastgpt._C (csrc/).

Importing the extension registers its kernels for every op in `library.OPS` (TORCH_LIBRARY_IMPL in
csrc/<op>.cpp), with the outputs allocated in C++: the dispatcher calls them with no Python in between.
This module is the one place that imports it; without it (not built, or a broken build) nothing is
registered and `missing` says why.
"""
import platform
from typing import Optional

import torch
from torch import Tensor

from fastgpt.ops.attention import attention_keep_mask

try:
    from fastgpt import _C as extension
    missing: Optional[str] = None
except ImportError as error:
    extension = None
    missing = f"the C++ extension fastgpt._C is not built ({error}); reinstall with " \
              f"`pip install --no-build-isolation .`"

ATTENTION_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
ATTENTION_HEAD_SIZES = (8, 16, 32, 64, 128)


def unsupported(device_type: str, dtype: torch.dtype, head_size: int) -> Optional[str]:
    """Why the C++ attention kernels cannot run on these inputs, or None when they can."""
    if missing is not None:
        return missing
    if device_type != "cpu":
        return f"the C++ kernels run on CPU tensors, not {device_type}"
    if dtype not in ATTENTION_DTYPES:
        return f"dtype {dtype} is not one of {', '.join(str(d) for d in ATTENTION_DTYPES)}"
    if head_size not in ATTENTION_HEAD_SIZES:
        return f"head size {head_size} is not one of {', '.join(map(str, ATTENTION_HEAD_SIZES))}"
    return None


def instruction_set() -> Optional[str]:
    """The instruction set the kernels use on this CPU (None without the extension)."""
    return None if extension is None else extension.instruction_set()


def build_summary() -> str:
    """How the C++ kernels were built and which copy runs, for `fastgpt info`."""
    if extension is None:
        return f"not built ({missing})"
    built = extension.build_info()
    threads = "OpenMP" if built["openmp"] else "serial (built without OpenMP)"
    copies = ", ".join(built["copies"])
    why = ""
    if len(built["copies"]) == 1:
        why = (" (the AVX2 and AVX-512 copies are compiled by GCC or clang on x86-64)"
               if platform.machine().lower() in ("x86_64", "amd64") else " (the portable copy)")
    return f"{threads}, {instruction_set()} in use of {copies}{why}; built by {built['compiler'].strip()}"


def set_instruction_set(name: str) -> None:
    """Run the kernels compiled for `name` (baseline, avx2+fma, avx512), at most this CPU's best."""
    extension.set_instruction_set(name)


def keep_mask(seed: int, B: int, H: int, T: int, p: float) -> Tensor:
    """The bool (B, H, T, T) attention keep-mask the C++ kernels draw: the op
    fastgpt::attention_keep_mask on the CPU."""
    if extension is None:
        raise RuntimeError(missing)
    return attention_keep_mask(torch.tensor(seed, dtype=torch.int64), B, H, T, p)
