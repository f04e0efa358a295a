"""The `triton` backend: the FlashAttention-2 Triton kernels (`fastgpt.kernels.flash_attention`,
from kernels/) registered as the CUDA kernels of the `fastgpt::causal_attention` ops.

Autograd, the fake and torch.compile come from the op itself (`op.py`). Triton is optional:
without it nothing is registered and `unsupported` says why the backend is off. With
TRITON_INTERPRET=1 set before fastgpt is imported, the launchers run on CPU tensors in Triton's
interpreter (how the tests check the kernels' logic without a GPU); the op's CPU key stays the
C++ kernels', so the dispatch point never sends CPU tensors here.
"""
from typing import Optional

import torch
from torch import Tensor

from fastgpt.attention import op

try:
    from fastgpt.kernels import flash_attention as kernels
    _IMPORT_ERROR: Optional[str] = None
except ImportError as error:  # no triton for this platform, or a broken install
    kernels = None
    _IMPORT_ERROR = f"Triton is not installed ({error}); `pip install triton` on Linux with a CUDA GPU"


def unsupported(device_type: str, dtype: torch.dtype, head_size: int) -> Optional[str]:
    """Why the Triton kernels cannot run on these inputs, or None when they can."""
    if kernels is None:
        return _IMPORT_ERROR
    if device_type != "cuda":
        return f"the Triton kernels run on CUDA tensors, not {device_type}"
    if dtype not in kernels.SUPPORTED_DTYPES:
        return f"dtype {dtype} is not one of {', '.join(str(d) for d in kernels.SUPPORTED_DTYPES)}"
    if head_size > kernels.MAX_HEAD_SIZE:
        return f"head size {head_size} is above the largest supported, {kernels.MAX_HEAD_SIZE}"
    return None


def keep_mask(seed: int, B: int, H: int, T: int, p: float) -> Tensor:
    """The bool (B, H, T, T) keep-mask the Triton kernels use, made by a Triton kernel on CUDA (or
    on the CPU in Triton's interpreter)."""
    if kernels is None:
        raise RuntimeError(_IMPORT_ERROR)
    device = "cpu" if kernels.INTERPRETED else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the Triton dropout mask needs a CUDA GPU (or TRITON_INTERPRET=1 set "
                           "before fastgpt is imported, to run the kernel in Triton's interpreter)")
    return kernels.keep_mask(seed, B, H, T, p, device)


if kernels is not None:
    op.register_kernels("cuda", kernels.flash_attention_forward, kernels.flash_attention_backward,
                        kernels.flash_attention_forward_qkv, kernels.flash_attention_backward_qkv)
