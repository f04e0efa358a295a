"""The `cpp` backend: the fused CPU kernels of the C++ extension `fastgpt._C` (csrc/), registered as
the CPU kernels of the `fastgpt::causal_attention` ops. Without the extension nothing is registered
and `unsupported` says why the backend is off."""
from typing import Optional

import torch
from torch import Tensor

from fastgpt.attention import op

try:
    from fastgpt import _C
    _IMPORT_ERROR: Optional[str] = None
except ImportError as error:  # built without the extension (or a broken build): the backend is off
    _C = None
    _IMPORT_ERROR = f"the C++ extension fastgpt._C is not built ({error}); reinstall with " \
                    f"`pip install --no-build-isolation .`"

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
HEAD_SIZES = (8, 16, 32, 64, 128)


def unsupported(device_type: str, dtype: torch.dtype, head_size: int) -> Optional[str]:
    """Why the C++ kernels cannot run on these inputs, or None when they can."""
    if _C is None:
        return _IMPORT_ERROR
    if device_type != "cpu":
        return f"the C++ kernels run on CPU tensors, not {device_type}"
    if dtype not in DTYPES:
        return f"dtype {dtype} is not one of {', '.join(str(d) for d in DTYPES)}"
    if head_size not in HEAD_SIZES:
        return f"head size {head_size} is not one of {', '.join(map(str, HEAD_SIZES))}"
    return None


def instruction_set() -> Optional[str]:
    """The instruction set the kernels use on this CPU (None without the extension)."""
    return None if _C is None else _C.instruction_set()


def _forward(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, seed: Tensor):
    return tuple(_C.forward(q, k, v, dropout_p, int(seed)))


def _backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
              dropout_p: float, seed: Tensor):
    return tuple(_C.backward(grad_out, q, k, v, out, lse, dropout_p, int(seed)))


# (seed, B, H, T, p) -> the bool (B, H, T, T) keep-mask the C++ kernels draw
keep_mask = None if _C is None else _C.keep_mask

if _C is not None:
    op.register_kernels("cpu", _forward, _backward)
