"""The registered ops `fastgpt::causal_attention` and `fastgpt::causal_attention_qkv`: schemas,
fakes and autograd.

One op, one schema, a kernel per device, in the pytorch/extension-cpp way: the C++ kernels are the
op's CPU kernels (`cpu.py`), the Triton launchers its CUDA kernels (`triton.py`). The op has no
default body: the dispatch point (`fastgpt.attention`) sends it only inputs a registered kernel
takes, and anything else fails loudly instead of running a silent fallback.

The forward returns the output and the row logsumexp of the scaled, masked scores; the backward is
a second op, `fastgpt::causal_attention_backward`, that recomputes the probabilities from q, k and
the logsumexp (FlashAttention-2). Dropout is the reference's counter-based mask (`reference.py`),
regenerated from the seed in the backward.

`causal_attention_qkv` is the same attention on the model's own layout: it takes the fused qkv
projection (B, T, 3C) = (B, T, 3, H, D) as the Linear makes it and returns (B, T, C) = (B, T, H, D),
which the output projection reads as is; its backward returns one (B, T, 3C) gradient. The kernels
read and write these layouts in place, so a training step has no transpose, contiguous or cat copy.
"""
import torch
from torch import Tensor

LIBRARY = torch.library.Library("fastgpt", "DEF")
FORWARD = "fastgpt::causal_attention"
BACKWARD = "fastgpt::causal_attention_backward"
FORWARD_QKV = "fastgpt::causal_attention_qkv"
BACKWARD_QKV = "fastgpt::causal_attention_qkv_backward"

LIBRARY.define("causal_attention(Tensor q, Tensor k, Tensor v, float dropout_p, Tensor seed) "
               "-> (Tensor, Tensor)")
LIBRARY.define("causal_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
               "Tensor lse, float dropout_p, Tensor seed) -> (Tensor, Tensor, Tensor)")
LIBRARY.define("causal_attention_qkv(Tensor qkv, int n_head, float dropout_p, Tensor seed) -> (Tensor, Tensor)")
LIBRARY.define("causal_attention_qkv_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, int n_head, "
               "float dropout_p, Tensor seed) -> Tensor")


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
                     seed: Tensor) -> tuple[Tensor, Tensor]:
    """(out (B, H, T, D) in q's dtype, logsumexp (B, H, T) in the accumulate dtype)."""
    return torch.ops.fastgpt.causal_attention(q, k, v, dropout_p, seed)


def causal_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                              lse: Tensor, dropout_p: float, seed: Tensor
                              ) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv), recomputing the probabilities from q, k and the saved logsumexp."""
    return torch.ops.fastgpt.causal_attention_backward(grad_out, q, k, v, out, lse, dropout_p, seed)


def causal_attention_qkv(qkv: Tensor, n_head: int, dropout_p: float, seed: Tensor) -> tuple[Tensor, Tensor]:
    """(out (B, T, C) in qkv's dtype, logsumexp (B, H, T) in the accumulate dtype)."""
    return torch.ops.fastgpt.causal_attention_qkv(qkv, n_head, dropout_p, seed)


def causal_attention_qkv_backward(grad_out: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, n_head: int,
                                  dropout_p: float, seed: Tensor) -> Tensor:
    """The gradient of qkv (B, T, 3C), recomputing the probabilities from the saved logsumexp."""
    return torch.ops.fastgpt.causal_attention_qkv_backward(grad_out, qkv, out, lse, n_head, dropout_p, seed)


def split_heads(qkv: Tensor, n_head: int) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B, H, T, D) as views of a packed (B, T, 3C) tensor."""
    B, T, C3 = qkv.shape
    q, k, v = qkv.unflatten(-1, (3, n_head, C3 // (3 * n_head))).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def heads(y: Tensor, n_head: int) -> Tensor:
    """(B, H, T, D) view of a (B, T, C) tensor whose heads sit side by side."""
    return y.unflatten(-1, (n_head, y.shape[-1] // n_head)).transpose(1, 2)


def merge_heads(y: Tensor) -> Tensor:
    """(B, H, T, D) -> (B, T, C), heads side by side (a copy unless y is such a view already)."""
    B, H, T, D = y.shape
    return y.transpose(1, 2).reshape(B, T, H * D)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels compute in float32, or float64 for float64 inputs (gradcheck); the logsumexp they
    save has this dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def draw_seed() -> Tensor:
    """A dropout seed from torch's default generator, so torch.manual_seed fixes it. A tensor, not
    an int, so that torch.compile keeps it in the graph instead of breaking on .item()."""
    return torch.randint(2**62, (), dtype=torch.int64)


# The fakes give contiguous outputs, as the kernels do: torch.empty_like would copy the strides of a
# transposed q, and torch.compile would then drop the `.contiguous()` the model needs before `.view`.
@torch.library.register_fake(FORWARD, lib=LIBRARY)
def _(q, k, v, dropout_p, seed):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=accumulate_dtype(q.dtype))


@torch.library.register_fake(BACKWARD, lib=LIBRARY)
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


torch.library.register_autograd(FORWARD, _backward, setup_context=_setup_context, lib=LIBRARY)


@torch.library.register_fake(FORWARD_QKV, lib=LIBRARY)
def _(qkv, n_head, dropout_p, seed):
    B, T, C3 = qkv.shape
    return qkv.new_empty(B, T, C3 // 3), qkv.new_empty(B, n_head, T, dtype=accumulate_dtype(qkv.dtype))


@torch.library.register_fake(BACKWARD_QKV, lib=LIBRARY)
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


torch.library.register_autograd(FORWARD_QKV, _backward_qkv, setup_context=_setup_context_qkv, lib=LIBRARY)


def register_kernels(device_type: str, forward, backward, forward_qkv, backward_qkv, lib=LIBRARY) -> None:
    """Make the functions (with the ops' signatures) the kernels of causal_attention, its backward,
    causal_attention_qkv and its backward for `device_type`. With another `lib` the registration
    lasts as long as that library (tests use this)."""
    for name, kernel in ((FORWARD, forward), (BACKWARD, backward), (FORWARD_QKV, forward_qkv),
                         (BACKWARD_QKV, backward_qkv)):
        torch.library.register_kernel(name, device_type, kernel, lib=lib)
