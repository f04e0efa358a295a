"""The op `fastgpt::dropout_add`: residual dropout fused with the residual add, schema, fake and
autograd (kernels: csrc/dropout_add.cpp on CPU, kernels/dropout_add.py on CUDA).

The lecture drops the output of each block's attention projection and MLP before adding it to the
residual stream (`x + dropout(proj(...))`): with `nn.Dropout` that is a bernoulli draw, a mask
tensor, a multiply and an add, and the mask is kept for the backward. Here
dropout_add(x, residual, p, seed) = residual + x·keep·keep_scale in one pass, the keep bit of element
n a pure function of the seed and n (`mask.residual_keep_mask`); the backward op,
`fastgpt::dropout_add_backward`, regenerates it.
"""
import torch

from fastgpt.ops.library import LIBRARY, define

# Computed in the promoted dtype of x and residual.
dropout_add = define("dropout_add(Tensor x, Tensor residual, float dropout_p, Tensor seed) -> Tensor",
                     launcher=("dropout_add", "dropout_add"))
# The gradient for x: grad·keep·keep_scale, the forward's keep bits regenerated from the seed.
dropout_add_backward = define("dropout_add_backward(Tensor grad, float dropout_p, Tensor seed) -> Tensor",
                              launcher=("dropout_add", "dropout_add_backward"))


@torch.library.register_fake(dropout_add, lib=LIBRARY)
def _(x, residual, dropout_p, seed):
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype))


@torch.library.register_fake(dropout_add_backward, lib=LIBRARY)
def _(grad, dropout_p, seed):
    return grad.new_empty(grad.shape)


def _setup_context(ctx, inputs, output):
    x, residual, dropout_p, seed = inputs
    ctx.save_for_backward(seed)
    ctx.dropout_p, ctx.x_dtype, ctx.residual_dtype = dropout_p, x.dtype, residual.dtype


def _backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    dx = dropout_add_backward(grad, ctx.dropout_p, seed).to(ctx.x_dtype)
    return dx, grad.to(ctx.residual_dtype), None, None


torch.library.register_autograd(dropout_add, _backward, setup_context=_setup_context, lib=LIBRARY)
