"""The registered op `fastgpt::causal_attention` and its counter-based dropout.

One op, one schema, a kernel per device: this file defines the op with the reference as its
default body, its fake (meta) implementation for torch.compile, and its autograd (the backward is a
second op, `fastgpt::causal_attention_backward`, that recomputes the probabilities from q, k and
the saved logsumexp). The fused backends register their kernels for their device keys
(`causal_attention_op.register_kernel("cpu")`, `"cuda"`) in their own modules.

Dropout is a pure function of a seed and the element's (batch, head, row, column): Philox-4x32-10
exactly as Triton's `tl.randint`, so every backward regenerates the mask instead of storing it, and
CPU and GPU runs share the same mask.
"""
import math

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Counter-based dropout: Philox-4x32-10, bit for bit what Triton's tl.randint(seed, offset) gives
# ---------------------------------------------------------------------------------------------

_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_MASK32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of a·b for a uint32 constant `a` and uint32 values `b` held in
    int64, split in 16-bit halves so that no product overflows int64."""
    low = a * (b & 0xFFFF)
    mid = a * (b >> 16) + (low >> 16)
    return mid >> 16, ((mid & 0xFFFF) << 16) | (low & 0xFFFF)


def philox_uint32(seed: int, offset: Tensor) -> Tensor:
    """First word of Philox-4x32-10 with key (seed lo, seed hi) and counter (offset lo, offset hi,
    0, 0), as int64 values in [0, 2**32). `offset` is an int64 tensor."""
    c0, c1 = offset & _MASK32, (offset >> 32) & _MASK32
    c2 = torch.zeros_like(offset)
    c3 = torch.zeros_like(offset)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mulhilo32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & _MASK32, (k1 + _PHILOX_KEY_B) & _MASK32
    return c0


def dropout_threshold(p: float) -> int:
    """An element is kept when its Philox word is >= this; a word is uniform on [0, 2**32)."""
    return int(p * 4294967296.0)


def torch_keep_mask(seed: int, B: int, H: int, T: int, p: float,
                     device: torch.device | str = "cpu") -> Tensor:
    offset = torch.arange(B * H * T * T, dtype=torch.int64, device=device)  # ((b·H + h)·T + i)·T + j
    return (philox_uint32(seed, offset) >= dropout_threshold(p)).view(B, H, T, T)


def draw_seed() -> Tensor:
    """A dropout seed from torch's default generator, so torch.manual_seed fixes it. A tensor, not
    an int, so that torch.compile keeps it in the graph instead of breaking on .item()."""
    return torch.randint(2**62, (), dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# The registered op: fastgpt::causal_attention. Default body: the reference with the Philox mask.
# Fused backends register a kernel for their device key (register_kernel("cpu"/"cuda")).
# ---------------------------------------------------------------------------------------------


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Fused kernels compute in float32, or float64 for float64 inputs (gradcheck); the logsumexp
    they save has this dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scores(q: Tensor, k: Tensor) -> Tensor:
    T, acc = q.shape[-2], accumulate_dtype(q.dtype)
    s = (q.to(acc) @ k.to(acc).transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return s.masked_fill(future, float("-inf"))  # (B, H, T, T) in the accumulate dtype


def _op_keep_scale(q: Tensor, dropout_p: float, seed: Tensor) -> Tensor | float:
    """Dropout as a multiplier on the probabilities: the keep-mask over (1 - p), or 1."""
    if dropout_p == 0:
        return 1.0
    B, H, T, _ = q.shape
    keep = torch_keep_mask(int(seed), B, H, T, dropout_p, q.device)
    return keep.to(accumulate_dtype(q.dtype)) / (1.0 - dropout_p)  # float64 stays float64


def reference_forward(q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
                      seed: Tensor) -> tuple[Tensor, Tensor]:
    """The op's default body, also what a device kernel falls back to for inputs it cannot take."""
    s = _scores(q, k)
    lse = s.logsumexp(dim=-1)
    p = (s - lse.unsqueeze(-1)).exp() * _op_keep_scale(q, dropout_p, seed)
    return (p @ v.to(s.dtype)).to(q.dtype), lse


@torch.library.custom_op("fastgpt::causal_attention", mutates_args=())
def causal_attention_op(q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
                        seed: Tensor) -> tuple[Tensor, Tensor]:
    """Returns (out (B, H, T, D) in q's dtype, logsumexp (B, H, T) in the accumulate dtype)."""
    return reference_forward(q, k, v, dropout_p, seed)


# The fakes give contiguous outputs, as the kernels do: torch.empty_like would copy the strides of a
# transposed q, and torch.compile would then drop the `.contiguous()` the model needs before `.view`.
@causal_attention_op.register_fake
def _(q, k, v, dropout_p, seed):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=accumulate_dtype(q.dtype))


def reference_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       dropout_p: float, seed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The backward op's default body, also what a device kernel falls back to."""
    prob = (_scores(q, k) - lse.unsqueeze(-1)).exp()  # (B, H, T, T)
    acc = prob.dtype
    keep_scale = _op_keep_scale(q, dropout_p, seed)
    do = grad_out.to(acc)
    dv = (prob * keep_scale).transpose(-2, -1) @ do
    dprob = (do @ v.to(acc).transpose(-2, -1)) * keep_scale
    delta = (do * out.to(acc)).sum(dim=-1, keepdim=True)  # rowsum(dO ∘ O) = rowsum(P ∘ dP)
    ds = prob * (dprob - delta) * (1.0 / math.sqrt(q.shape[-1]))
    dq, dk = ds @ k.to(acc), ds.transpose(-2, -1) @ q.to(acc)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@torch.library.custom_op("fastgpt::causal_attention_backward", mutates_args=())
def causal_attention_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                                 lse: Tensor, dropout_p: float,
                                 seed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (dq, dk, dv), recomputing the probabilities from q, k and the saved logsumexp."""
    return reference_backward(grad_out, q, k, v, out, lse, dropout_p, seed)


@causal_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, dropout_p, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seed)
    ctx.dropout_p = dropout_p


def _backward(ctx, grad_out, grad_lse, backward_op=causal_attention_backward_op):
    """`backward_op` is the backward op, or a launcher with its signature (the Triton kernels run
    in the interpreter on CPU tensors, see fastgpt.triton_attention)."""
    q, k, v, out, lse, seed = ctx.saved_tensors
    dq, dk, dv = backward_op(grad_out.contiguous(), q, k, v, out, lse, ctx.dropout_p, seed)
    return dq, dk, dv, None, None


causal_attention_op.register_autograd(_backward, setup_context=_setup_context)
