"""Residual dropout fused with the residual add: `dropout_add(x, residual, p)` = residual + dropout(x)
in one pass, forward and backward, as the registered op `fastgpt::dropout_add`.

The lecture drops the output of each block's attention projection and MLP before adding it to the
residual stream (`x + dropout(proj(...))`): with `nn.Dropout` that is a bernoulli draw, a mask
tensor, a multiply and an add, and the mask is kept for the backward. Here the keep bit of element n
is a pure function of a seed and n, from the same cheap counter-based RNG as the attention dropout
(fastgpt.attention.reference: one Philox-4x32 call per 8 elements, kept iff the 16-bit draw >=
round(p·2**16), scaled by 1/(1 - p_eff)); the backward regenerates it. Kernels: C++ on CPU
(fastgpt._C.dropout_add), Triton on CUDA (fastgpt.kernels.dropout_add); the op's default body,
the reference, runs anywhere else.
"""
from functools import partial
from typing import Optional

import torch
from torch import Tensor

from fastgpt.attention.op import draw_seed
from fastgpt.attention.reference import DRAWS_PER_CALL, dropout_keep_scale, dropout_threshold, philox4x32

try:
    from fastgpt import _C
except ImportError:  # the reference runs instead; fastgpt.info says why the extension is missing
    _C = None
try:
    from fastgpt.kernels import dropout_add as triton_kernels
except ImportError:
    triton_kernels = None

_MASK32 = 0xFFFFFFFF


def keep_mask(seed: int, n: int, p: float, device: torch.device | str = "cpu") -> Tensor:
    """The bool keep bits of the first n elements of a flattened tensor: element n takes draw n % 8
    of the Philox call at counter (n // 8 lo, n // 8 hi, 0, 0)."""
    blocks = torch.arange(-(-n // DRAWS_PER_CALL), dtype=torch.int64, device=device)
    zero = torch.zeros_like(blocks)
    words = philox4x32(seed, (blocks & _MASK32, blocks >> 32, zero, zero))
    draws = torch.stack([half for word in words for half in (word & 0xFFFF, word >> 16)], dim=-1)
    return draws.flatten()[:n] >= dropout_threshold(p)


def _dropped(x: Tensor, dropout_p: float, seed: Tensor) -> Tensor:
    keep = keep_mask(int(seed), x.numel(), dropout_p, x.device).view(x.shape)
    return x * keep * dropout_keep_scale(dropout_p)


@torch.library.custom_op("fastgpt::dropout_add", mutates_args=())
def dropout_add_op(x: Tensor, residual: Tensor, dropout_p: float, seed: Tensor) -> Tensor:
    """residual + x·keep·keep_scale, in the promoted dtype of x and residual."""
    return residual + _dropped(x, dropout_p, seed)


@dropout_add_op.register_fake
def _(x, residual, dropout_p, seed):
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype))


@torch.library.custom_op("fastgpt::dropout_add_backward", mutates_args=())
def dropout_add_backward_op(grad: Tensor, dropout_p: float, seed: Tensor) -> Tensor:
    """The gradient for x: grad·keep·keep_scale, the forward's keep bits regenerated from the seed."""
    return _dropped(grad, dropout_p, seed)


@dropout_add_backward_op.register_fake
def _(grad, dropout_p, seed):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, residual, dropout_p, seed = inputs
    ctx.save_for_backward(seed)
    ctx.dropout_p, ctx.x_dtype, ctx.residual_dtype = dropout_p, x.dtype, residual.dtype


def _backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    dx = dropout_add_backward_op(grad, ctx.dropout_p, seed).to(ctx.x_dtype)
    return dx, grad.to(ctx.residual_dtype), None, None


dropout_add_op.register_autograd(_backward, setup_context=_setup_context)

if _C is not None:
    @dropout_add_op.register_kernel("cpu")
    def _(x, residual, dropout_p, seed):
        return _C.dropout_add(x, residual, dropout_p, int(seed))

    @dropout_add_backward_op.register_kernel("cpu")
    def _(grad, dropout_p, seed):
        return _C.dropout_add(grad, None, dropout_p, int(seed))

if triton_kernels is not None:
    dropout_add_op.register_kernel("cuda")(triton_kernels.dropout_add)
    dropout_add_backward_op.register_kernel("cuda")(partial(triton_kernels.dropout_add, residual=None))


def dropout_add(x: Tensor, residual: Tensor, dropout_p: float, seed: Optional[Tensor | int] = None) -> Tensor:
    """residual + dropout(x, dropout_p): each call draws its seed from torch's generator unless given
    one (so torch.manual_seed fixes the masks); p = 0 is a plain add."""
    if dropout_p == 0:
        return residual + x
    if seed is None:
        seed = draw_seed()
    elif isinstance(seed, int):
        seed = torch.tensor(seed, dtype=torch.int64)
    return dropout_add_op(x, residual, dropout_p, seed)
