"""Fused residual dropout in Triton: out = x·keep·keep_scale (+ residual), one pass, with the keep
bits of `fastgpt.ops.mask.residual_keep_mask` (element n takes draw n % 8 of the Philox call at
counter (n // 8 lo, n // 8 hi, 0, 0)). `fastgpt.ops.cuda` registers the launchers as the CUDA
kernels of the ops `fastgpt::dropout_add` and `fastgpt::dropout_add_backward`. Any float dtype,
computed in fp32."""
import torch
import triton
import triton.language as tl

from fastgpt.kernels.philox import philox_draws
from fastgpt.ops.mask import dropout_keep_scale, dropout_threshold

BLOCK = 1024  # elements per program, a multiple of 8


@triton.jit(do_not_specialize=["seed", "threshold"])
def _dropout_add_kernel(X, RESIDUAL, OUT, n_elements, seed, threshold, keep_scale,
                        HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    blocks = start // 8 + tl.arange(0, BLOCK // 8)[None, :]  # (1, BLOCK // 8)
    zero = tl.zeros([1, BLOCK // 8], dtype=tl.uint32)
    draws = philox_draws(seed, (blocks & 0xFFFFFFFF).to(tl.uint32), (blocks >> 32).to(tl.uint32),
                         zero, zero)
    keep = tl.reshape(draws, (BLOCK,)) >= threshold.to(tl.uint32)
    inside = offsets < n_elements
    x = tl.load(X + offsets, mask=inside, other=0.0).to(tl.float32)
    out = tl.where(keep, x * keep_scale, 0.0)
    if HAS_RESIDUAL:
        out += tl.load(RESIDUAL + offsets, mask=inside, other=0.0).to(tl.float32)
    tl.store(OUT + offsets, out.to(OUT.dtype.element_ty), mask=inside)


def dropout_add(x: torch.Tensor, residual: torch.Tensor, dropout_p: float, seed: torch.Tensor) -> torch.Tensor:
    """fastgpt::dropout_add: x·keep·keep_scale + residual, in the promoted dtype of x and residual."""
    return _dropped(x, residual, dropout_p, seed)


def dropout_add_backward(grad: torch.Tensor, dropout_p: float, seed: torch.Tensor) -> torch.Tensor:
    """fastgpt::dropout_add_backward: grad·keep·keep_scale, the forward's keep bits."""
    return _dropped(grad, None, dropout_p, seed)


def _dropped(x: torch.Tensor, residual: torch.Tensor | None, dropout_p: float, seed: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    x = x.contiguous()
    residual = None if residual is None else residual.contiguous()
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    n = x.numel()
    _dropout_add_kernel[(triton.cdiv(n, BLOCK),)](
        x, x if residual is None else residual, out, n, int(seed), dropout_threshold(dropout_p),
        dropout_keep_scale(dropout_p), HAS_RESIDUAL=residual is not None, BLOCK=BLOCK)
    return out
