"""The registered op `fastgpt::causal_attention`: schema, fake and autograd.

One op, one schema, a kernel per device, in the pytorch/extension-cpp way: the C++ kernels are the
op's CPU kernels (`cpu.py`), the Triton launchers its CUDA kernels (`triton.py`). The op has no
default body: the dispatch point (`fastgpt.attention`) sends it only inputs a registered kernel
takes, and anything else fails loudly instead of running a silent fallback.

The forward returns the output and the row logsumexp of the scaled, masked scores; the backward is
a second op, `fastgpt::causal_attention_backward`, that recomputes the probabilities from q, k and
the logsumexp (FlashAttention-2). Dropout is the reference's counter-based mask (`reference.py`),
regenerated from the seed in the backward.
"""
import torch
from torch import Tensor

LIBRARY = torch.library.Library("fastgpt", "DEF")
FORWARD = "fastgpt::causal_attention"
BACKWARD = "fastgpt::causal_attention_backward"

LIBRARY.define("causal_attention(Tensor q, Tensor k, Tensor v, float dropout_p, Tensor seed) "
               "-> (Tensor, Tensor)")
LIBRARY.define("causal_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
               "Tensor lse, float dropout_p, Tensor seed) -> (Tensor, Tensor, Tensor)")


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
                     seed: Tensor) -> tuple[Tensor, Tensor]:
    """(out (B, H, T, D) in q's dtype, logsumexp (B, H, T) in the accumulate dtype)."""
    return torch.ops.fastgpt.causal_attention(q, k, v, dropout_p, seed)


def causal_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                              lse: Tensor, dropout_p: float, seed: Tensor
                              ) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv), recomputing the probabilities from q, k and the saved logsumexp."""
    return torch.ops.fastgpt.causal_attention_backward(grad_out, q, k, v, out, lse, dropout_p, seed)


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


def register_kernels(device_type: str, forward, backward, lib=LIBRARY) -> None:
    """Make `forward` and `backward` (with the ops' signatures) the ops' kernels for `device_type`.
    With another `lib` the registration lasts as long as that library (tests use this)."""
    torch.library.register_kernel(FORWARD, device_type, forward, lib=lib)
    torch.library.register_kernel(BACKWARD, device_type, backward, lib=lib)
