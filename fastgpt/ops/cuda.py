"""The CUDA kernels of every op: the Triton launchers of kernels/ (installed as fastgpt.kernels).

`LAUNCHERS` names each op's launcher; `register` makes them the ops' kernels for a device type. On
import they are registered for CUDA, but Triton itself is imported at the first call of a launcher,
so a command on a machine without CUDA never imports it. Under TRITON_INTERPRET=1 the tests register
these same launchers for CPU tensors (Triton's interpreter) through `register`.
"""
import functools
import importlib
import importlib.util
from typing import Callable, Optional

import torch
from torch import Tensor

from fastgpt.ops.library import LIBRARY, OPS

# op -> (module of fastgpt.kernels, launcher), each launcher with its op's schema
LAUNCHERS = {
    "fastgpt::causal_attention": ("attention", "flash_attention_forward"),
    "fastgpt::causal_attention_backward": ("attention", "flash_attention_backward"),
    "fastgpt::causal_attention_qkv": ("attention", "flash_attention_forward_qkv"),
    "fastgpt::causal_attention_qkv_backward": ("attention", "flash_attention_backward_qkv"),
    "fastgpt::dropout_add": ("dropout_add", "dropout_add"),
    "fastgpt::dropout_add_backward": ("dropout_add", "dropout_add_backward"),
}
assert set(LAUNCHERS) == set(OPS), "every op has a CUDA kernel"

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


def launcher(op: str) -> Callable:
    """`op`'s launcher, importing its kernels at the first call (looked up once, not per call)."""
    module, name = LAUNCHERS[op]

    def launch(*args):
        return _launch_function(module, name)(*args)

    launch.__name__ = name
    return launch


def register(device_type: str = "cuda", lib: torch.library.Library = LIBRARY) -> None:
    """Make the launchers every op's kernels for `device_type` (for as long as `lib` lives)."""
    for op in OPS:
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
    """The bool (B, H, T, T) attention keep-mask the Triton kernels draw, made by a Triton kernel on
    CUDA (or on the CPU in Triton's interpreter)."""
    attention = kernels("attention")
    device = "cpu" if attention.INTERPRETED else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the Triton dropout mask needs a CUDA GPU (or TRITON_INTERPRET=1 set "
                           "before fastgpt is imported, to run the kernel in Triton's interpreter)")
    return attention.keep_mask(seed, B, H, T, p, device)


if missing is None:
    register()
