"""The CUDA kernels of the ops: the Triton launchers of kernels/ (installed as fastgpt.kernels).

Each op names its launcher where it is defined (`library.define`; an op that runs on CPU only names
none); `register` makes them the ops' kernels for a device type. On import they are registered for
CUDA, but Triton itself is imported at the first call of a launcher, so a command on a machine
without CUDA never imports it. Under TRITON_INTERPRET=1 the tests register these same launchers for
CPU tensors (Triton's interpreter) through `register`.
"""
import functools
import importlib
import importlib.util
from typing import Callable, Optional

import torch
from torch import Tensor

from fastgpt.ops.attention import attention_keep_mask
from fastgpt.ops.library import LIBRARY, OPS, Launcher

missing: Optional[str] = None if importlib.util.find_spec("triton") else \
    "Triton is not installed; `pip install triton` on Linux with a CUDA GPU"


def kernels(module: str):
    """The module fastgpt.kernels.<module> (this imports Triton)."""
    if missing is not None:
        raise RuntimeError(missing)
    return importlib.import_module(f"fastgpt.kernels.{module}")


@functools.cache
def _launch_function(module: str, name: str) -> Callable:
    return getattr(kernels(module), name)


def launchers() -> dict[str, Launcher]:
    """Every op with a CUDA kernel, and its launcher."""
    return {op: launcher for op, launcher in OPS.items() if launcher is not None}


def launcher(op: str) -> Callable:
    """`op`'s launcher, importing its kernels at the first call (looked up once, not per call)."""
    module, name = launchers()[op]

    def launch(*args):
        return _launch_function(module, name)(*args)

    launch.__name__ = name
    return launch


def register(device_type: str = "cuda", lib: torch.library.Library = LIBRARY) -> None:
    """Make the launchers the ops' kernels for `device_type` (for as long as `lib` lives)."""
    for op in launchers():
        torch.library.register_kernel(op, device_type, launcher(op), lib=lib)


def unsupported(device_type: str, dtype: torch.dtype, head_size: int) -> Optional[str]:
    """Why the Triton attention kernels cannot run on these inputs, or None when they can."""
    if missing is not None:
        return missing
    if device_type != "cuda":
        return f"the Triton kernels run on CUDA tensors, not {device_type}"
    attention = kernels("attention")
    if dtype not in attention.SUPPORTED_DTYPES:
        return f"dtype {dtype} is not one of {', '.join(str(d) for d in attention.SUPPORTED_DTYPES)}"
    if head_size > attention.MAX_HEAD_SIZE:
        return f"head size {head_size} is above the largest supported, {attention.MAX_HEAD_SIZE}"
    return None


# Triton lowers tl.dot to tensor-core instructions from sm_80 on; below, to FMA loops.
TENSOR_CORE_CAPABILITY = (8, 0)


def slower_than_sdpa(device_type: str) -> Optional[str]:
    """Why `auto` prefers SDPA although the Triton kernels can run here, or None."""
    if device_type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) >= TENSOR_CORE_CAPABILITY:
        return None
    return (f"this GPU is sm_{major}{minor}, below sm_80 Triton's dots have no tensor-core path "
            f"and SDPA is faster; --attention triton still runs")


def keep_mask(seed: int, B: int, H: int, T: int, p: float) -> Tensor:
    """The bool (B, H, T, T) attention keep-mask the Triton kernels draw: the op
    fastgpt::attention_keep_mask on CUDA. In Triton's interpreter (TRITON_INTERPRET=1 set before
    fastgpt is imported) on the CPU instead, where it runs the CPU kernel that is registered: the
    Triton one inside tests/triton_cpu.py's `triton_kernels_on_cpu`."""
    device = "cpu" if kernels("attention").INTERPRETED else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the Triton dropout mask needs a CUDA GPU (or TRITON_INTERPRET=1 set "
                           "before fastgpt is imported, to run the kernel in Triton's interpreter)")
    return attention_keep_mask(torch.tensor(seed, dtype=torch.int64, device=device), B, H, T, p)


if missing is None:
    register()
