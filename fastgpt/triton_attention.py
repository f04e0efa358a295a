"""The Triton backend: FlashAttention-2 kernels (`fastgpt.kernels.flash_attention`) as the CUDA
kernels of the registered op `fastgpt::causal_attention` and of its backward op.

Registration is `custom_op.register_kernel("cuda")`: autograd, `register_fake` and torch.compile
come from the op itself (`fastgpt.attention_op`), and on a machine without a GPU nothing here is
ever traced or compiled. Triton is optional: without it the backend reports why and stays off.

CPU tensors: the op's CPU key belongs to the C++ kernel, so the op can never reach these kernels
for CPU tensors. Under TRITON_INTERPRET=1 (set before fastgpt is imported: Triton reads it when the
kernels are decorated) the backend runs them in Triton's interpreter instead, through
`_InterpretedAttention`, an autograd.Function that reuses the op's own setup_context and backward
with the Triton backward launcher. That is how CI tests the kernels' logic without a GPU.
"""
from typing import Optional

import torch
from torch import Tensor

from fastgpt import attention_op
from fastgpt.attention_op import causal_attention_backward_op, causal_attention_op

try:
    from fastgpt.kernels import flash_attention as kernels
    _MISSING: Optional[str] = None
except ImportError as error:  # no triton for this platform, or a broken install
    kernels = None
    _MISSING = f"Triton is not installed ({error}); `pip install triton` on Linux with a CUDA GPU"


def unsupported(device_type: str, dtype: torch.dtype, head_size: int) -> Optional[str]:
    """Why the Triton kernels cannot run on these inputs, or None when they can."""
    if kernels is None:
        return _MISSING
    on_cpu_interpreter = device_type == "cpu" and kernels.INTERPRETED
    if device_type != "cuda" and not on_cpu_interpreter:
        return ("it needs a CUDA GPU (or TRITON_INTERPRET=1 set before fastgpt is imported, to run "
                "the kernels slowly on CPU in Triton's interpreter)")
    if dtype not in kernels.SUPPORTED_DTYPES:
        return f"it supports float16, bfloat16 and float32, not {dtype}"
    if on_cpu_interpreter and dtype == torch.bfloat16:
        return "Triton's interpreter computes bfloat16 dot products wrongly (triton 3.9)"
    if head_size > kernels.MAX_HEAD_SIZE:
        return f"it supports head sizes up to {kernels.MAX_HEAD_SIZE}, not {head_size}"
    return None


class _InterpretedAttention(torch.autograd.Function):
    """The op's forward and backward on CPU tensors in Triton's interpreter. setup_context and
    backward are the op's own (attention_op), handed the Triton backward launcher."""

    @staticmethod
    def forward(q, k, v, dropout_p, seed):
        return kernels.flash_attention_forward(q, k, v, dropout_p, seed)

    setup_context = staticmethod(attention_op._setup_context)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        return attention_op._backward(ctx, grad_out, grad_lse,
                                      backward_op=kernels.flash_attention_backward)


# The interpreter is plain Python that torch.compile must not trace: compiled graphs call it as is.
@torch.compiler.disable
def _interpreted_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
                           seed: Tensor) -> tuple[Tensor, Tensor]:
    return _InterpretedAttention.apply(q, k, v, dropout_p, seed)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
                     seed: Tensor) -> tuple[Tensor, Tensor]:
    """The op, whose CUDA kernel is Triton's; CPU tensors (interpreter only, see `unsupported`)
    go to the kernels directly. Returns (out, logsumexp) like the op."""
    if q.device.type == "cpu":
        return _interpreted_attention(q, k, v, dropout_p, seed)
    return causal_attention_op(q, k, v, dropout_p, seed)


def keep_mask(seed: int, B: int, H: int, T: int, p: float) -> Tensor:
    """The bool (B, H, T, T) keep-mask the Triton kernels use, made by a Triton kernel on the
    device they run on (CUDA, or CPU in the interpreter)."""
    device_type = "cpu" if kernels is not None and kernels.INTERPRETED else "cuda"
    reason = unsupported(device_type, torch.float32, 8)
    if reason is not None:
        raise RuntimeError(f"the Triton dropout mask cannot be made here: {reason}")
    return kernels.keep_mask(seed, B, H, T, p, device_type)


if kernels is not None:
    causal_attention_op.register_kernel("cuda")(kernels.flash_attention_forward)
    causal_attention_backward_op.register_kernel("cuda")(kernels.flash_attention_backward)
