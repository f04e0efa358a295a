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


# The kernels write into buffers of the layout each op returns: (B, H, T, D) for causal_attention,
# (B, T, H, D) = (B, T, C) for causal_attention_qkv, whose gradient is one (B, T, 3, H, D) tensor.

def _forward(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, seed: Tensor):
    out = torch.empty(q.shape, dtype=q.dtype)
    return out, _C.forward(q, k, v, out, dropout_p, int(seed))


def _backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
              dropout_p: float, seed: Tensor):
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype) for _ in range(3))
    _C.backward(grad_out, q, k, v, out, lse, dq, dk, dv, dropout_p, int(seed))
    return dq, dk, dv


def _forward_qkv(qkv: Tensor, n_head: int, dropout_p: float, seed: Tensor):
    B, T, C3 = qkv.shape
    out = torch.empty(B, T, C3 // 3, dtype=qkv.dtype)
    return out, _C.forward(*op.split_heads(qkv, n_head), op.heads(out, n_head), dropout_p, int(seed))


def _backward_qkv(grad_out: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, n_head: int, dropout_p: float,
                  seed: Tensor):
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype)
    _C.backward(op.heads(grad_out, n_head), *op.split_heads(qkv, n_head), op.heads(out, n_head), lse,
                *op.split_heads(dqkv, n_head), dropout_p, int(seed))
    return dqkv


# (seed, B, H, T, p) -> the bool (B, H, T, T) keep-mask the C++ kernels draw
keep_mask = None if _C is None else _C.keep_mask

if _C is not None:
    op.register_kernels("cpu", _forward, _backward, _forward_qkv, _backward_qkv)
