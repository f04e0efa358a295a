"""The ops `fastgpt::causal_attention` and `fastgpt::causal_attention_qkv`: schemas, fakes and
autograd (kernels: csrc/attention.cpp on CPU, kernels/attention.py on CUDA).

The forward returns the output and the row logsumexp of the scaled, masked scores; the backward is
a second op, `fastgpt::causal_attention_backward`, that recomputes the probabilities from q, k and
the logsumexp (FlashAttention-2). Dropout is the attention mask of `mask.py`, regenerated from the
seed in the backward.

`causal_attention_qkv` is the same attention on the model's own layout (`layout.py`): it takes the
fused qkv projection (B, T, 3C) and returns (B, T, C), which the output projection reads as is; its
backward returns one (B, T, 3C) gradient.

`attention_keep_mask` makes the dropout mask itself, the one the kernels regenerate (no autograd:
a bool tensor), for tests and for comparing devices.
"""
import torch

from fastgpt.ops.library import LIBRARY, define

# (out (B, H, T, D) in q's dtype, logsumexp (B, H, T) in the accumulate dtype)
causal_attention = define(
    "causal_attention(Tensor q, Tensor k, Tensor v, float dropout_p, Tensor seed) -> (Tensor, Tensor)",
    launcher=("attention", "flash_attention_forward"))
# (dq, dk, dv), recomputing the probabilities from q, k and the saved logsumexp
causal_attention_backward = define(
    "causal_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "float dropout_p, Tensor seed) -> (Tensor, Tensor, Tensor)",
    launcher=("attention", "flash_attention_backward"))
# (out (B, T, C) in qkv's dtype, logsumexp (B, H, T) in the accumulate dtype)
causal_attention_qkv = define(
    "causal_attention_qkv(Tensor qkv, int n_head, float dropout_p, Tensor seed) -> (Tensor, Tensor)",
    launcher=("attention", "flash_attention_forward_qkv"))
# the gradient of qkv (B, T, 3C), recomputing the probabilities from the saved logsumexp
causal_attention_qkv_backward = define(
    "causal_attention_qkv_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, int n_head, "
    "float dropout_p, Tensor seed) -> Tensor",
    launcher=("attention", "flash_attention_backward_qkv"))
# The bool (B, H, T, T) keep-mask the kernels draw for this seed and shape (`mask.attention_keep_mask`),
# made on the seed's device: what `fastgpt.attention.dropout_keep_mask` shows of a fused backend.
attention_keep_mask = define(
    "attention_keep_mask(Tensor seed, int B, int H, int T, float dropout_p) -> Tensor",
    launcher=("attention", "keep_mask"))


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels compute in float32, or float64 for float64 inputs (gradcheck); the logsumexp they
    save has this dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# The fakes give contiguous outputs, as the kernels do: torch.empty_like would copy the strides of a
# transposed q, and torch.compile would then drop the `.contiguous()` the model needs before `.view`.
@torch.library.register_fake(causal_attention, lib=LIBRARY)
def _(q, k, v, dropout_p, seed):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=accumulate_dtype(q.dtype))


@torch.library.register_fake(causal_attention_backward, lib=LIBRARY)
def _(grad_out, q, k, v, out, lse, dropout_p, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seed)
    ctx.dropout_p = dropout_p


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, seed = ctx.saved_tensors
    dq, dk, dv = causal_attention_backward(grad_out.contiguous(), q, k, v, out, lse, ctx.dropout_p,
                                           seed)
    return dq, dk, dv, None, None


torch.library.register_autograd(causal_attention, _backward, setup_context=_setup_context, lib=LIBRARY)


@torch.library.register_fake(causal_attention_qkv, lib=LIBRARY)
def _(qkv, n_head, dropout_p, seed):
    B, T, C3 = qkv.shape
    return qkv.new_empty(B, T, C3 // 3), qkv.new_empty(B, n_head, T, dtype=accumulate_dtype(qkv.dtype))


@torch.library.register_fake(causal_attention_qkv_backward, lib=LIBRARY)
def _(grad_out, qkv, out, lse, n_head, dropout_p, seed):
    return qkv.new_empty(qkv.shape)


def _setup_context_qkv(ctx, inputs, output):
    qkv, n_head, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse, seed)
    ctx.n_head, ctx.dropout_p = n_head, dropout_p


def _backward_qkv(ctx, grad_out, grad_lse):
    qkv, out, lse, seed = ctx.saved_tensors
    dqkv = causal_attention_qkv_backward(grad_out.contiguous(), qkv, out, lse, ctx.n_head, ctx.dropout_p, seed)
    return dqkv, None, None, None


torch.library.register_autograd(causal_attention_qkv, _backward_qkv, setup_context=_setup_context_qkv, lib=LIBRARY)


@torch.library.register_fake(attention_keep_mask, lib=LIBRARY)
def _(seed, B, H, T, dropout_p):
    return seed.new_empty(B, H, T, T, dtype=torch.bool)
