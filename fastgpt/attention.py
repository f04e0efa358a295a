"""Causal self-attention: the one dispatch point for every backend.

`causal_attention(q, k, v, dropout_p, backend)` takes q, k, v shaped (B, H, T, D), applies the
causal mask and the 1/sqrt(D) scale of the lecture, drops attention weights with probability
`dropout_p`, and returns (B, H, T, D). Backends:

- ``torch``: the lecture's maths in plain PyTorch (masked softmax, `F.dropout`). The reference,
  and the fallback whenever a fused path cannot run.
- ``cpp``: the fused CPU kernel of the C++ extension (`fastgpt._C`).
- ``triton``: the fused Triton kernel on CUDA.

The fused backends are one registered op, ``fastgpt::causal_attention``, with a kernel per device
and this file's reference as its default body. Their dropout is a pure function of a seed and
the element's (batch, head, row, column): Philox-4x32-10 as in Triton's ``tl.randint``, so the
backward regenerates the mask instead of storing it, and CPU and GPU runs share the same mask.
"""
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("torch", "cpp", "triton")

# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def reference_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                        keep_mask: Optional[Tensor] = None) -> Tensor:
    """The lecture's attention. With `keep_mask` (bool, broadcastable to (B, H, T, T)) dropout
    uses that mask instead of drawing one from torch's generator."""
    T, D = q.shape[-2], q.shape[-1]
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
    if keep_mask is not None and dropout_p > 0:
        att = att * keep_mask / (1.0 - dropout_p)
    elif dropout_p > 0:
        att = F.dropout(att, dropout_p, training=True)
    return att @ v  # (B, H, T, D)


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


def _torch_keep_mask(seed: int, B: int, H: int, T: int, p: float,
                     device: torch.device | str = "cpu") -> Tensor:
    offset = torch.arange(B * H * T * T, dtype=torch.int64, device=device)  # ((b·H + h)·T + i)·T + j
    return (philox_uint32(seed, offset) >= dropout_threshold(p)).view(B, H, T, T)


# Each fused backend adds its own generator of the same mask here (the kernel's debug entry point).
_KEEP_MASK_FNS: dict[str, Callable[..., Tensor]] = {"torch": _torch_keep_mask}


def dropout_keep_mask(seed: int, B: int, H: int, T: int, p: float, backend: str = "torch") -> Tensor:
    """The bool (B, H, T, T) keep-mask that `backend`'s kernel uses for this seed and shape.
    Entry (b, h, i, j) is kept iff philox_uint32(seed, ((b·H + h)·T + i)·T + j) >= p·2**32;
    kept weights are scaled by 1/(1 - p). Every backend must give the same mask."""
    if backend not in _KEEP_MASK_FNS:
        raise ValueError(f"no dropout mask for backend {backend!r}: "
                         f"available are {sorted(_KEEP_MASK_FNS)}")
    return _KEEP_MASK_FNS[backend](seed, B, H, T, p)


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
    keep = _torch_keep_mask(int(seed), B, H, T, dropout_p, q.device)
    return keep / (1.0 - dropout_p)


@torch.library.custom_op("fastgpt::causal_attention", mutates_args=())
def causal_attention_op(q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
                        seed: Tensor) -> tuple[Tensor, Tensor]:
    """Returns (out (B, H, T, D) in q's dtype, logsumexp (B, H, T) in the accumulate dtype)."""
    s = _scores(q, k)
    lse = s.logsumexp(dim=-1)
    p = (s - lse.unsqueeze(-1)).exp() * _op_keep_scale(q, dropout_p, seed)
    return (p @ v.to(s.dtype)).to(q.dtype), lse


@causal_attention_op.register_fake
def _(q, k, v, dropout_p, seed):
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=accumulate_dtype(q.dtype))


@torch.library.custom_op("fastgpt::causal_attention_backward", mutates_args=())
def causal_attention_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                                 lse: Tensor, dropout_p: float,
                                 seed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (dq, dk, dv), recomputing the probabilities from q, k and the saved logsumexp."""
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


@causal_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, dropout_p, seed):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seed)
    ctx.dropout_p = dropout_p


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, seed = ctx.saved_tensors
    dq, dk, dv = causal_attention_backward_op(grad_out.contiguous(), q, k, v, out, lse,
                                              ctx.dropout_p, seed)
    return dq, dk, dv, None, None


causal_attention_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Backends and the dispatch point
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str
    # Why this backend cannot run on (device type, dtype, head size), or None when it can.
    unsupported: Callable[[str, torch.dtype, int], Optional[str]]
    attend: Callable[[Tensor, Tensor, Tensor, float, Optional[Tensor]], Tensor]


def _torch_attend(q, k, v, dropout_p, seed):
    keep = None
    if seed is not None and dropout_p > 0:
        B, H, T, _ = q.shape
        keep = _torch_keep_mask(int(seed), B, H, T, dropout_p, q.device)
    return reference_attention(q, k, v, dropout_p, keep)


def _fused_attend(q, k, v, dropout_p, seed):
    if seed is None:
        seed = draw_seed() if dropout_p > 0 else torch.zeros((), dtype=torch.int64)
    return causal_attention_op(q, k, v, dropout_p, seed)[0]


def _cpp_unsupported(device_type: str, dtype: torch.dtype, head_size: int) -> Optional[str]:
    return "the C++ extension is not part of this build yet"


def _triton_unsupported(device_type: str, dtype: torch.dtype, head_size: int) -> Optional[str]:
    return "the Triton kernel is not part of this build yet"


_BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", lambda device_type, dtype, head_size: None, _torch_attend),
    "cpp": Backend("cpp", _cpp_unsupported, _fused_attend),
    "triton": Backend("triton", _triton_unsupported, _fused_attend),
}

# What `auto` tries, fastest first, by device type; `torch` ends every list.
_AUTO_ORDER = {"cpu": ("cpp",), "cuda": ("triton",)}

_resolved: dict[tuple[str, str, torch.dtype, int], str] = {}


def resolve_backend(backend: str, q: Tensor) -> str:
    """The backend that runs for inputs like `q`: `auto` takes the fastest that supports them; an
    explicit backend that cannot run falls back to `torch` with a one-time warning saying why."""
    key = (backend, q.device.type, q.dtype, q.shape[-1])
    if key not in _resolved:
        _resolved[key] = _resolve(*key)
    return _resolved[key]


def _resolve(backend: str, device_type: str, dtype: torch.dtype, head_size: int) -> str:
    if backend == "auto":
        for name in _AUTO_ORDER.get(device_type, ()):
            if _BACKENDS[name].unsupported(device_type, dtype, head_size) is None:
                return name
        return "torch"
    if backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}: choose auto, {', '.join(BACKENDS)}")
    reason = _BACKENDS[backend].unsupported(device_type, dtype, head_size)
    if reason is not None:
        warnings.warn(f"attention backend {backend!r} cannot run here ({reason}); "
                      f"using the PyTorch reference instead", RuntimeWarning, stacklevel=4)
        return "torch"
    return backend


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                     backend: str = "auto", seed: Optional[Tensor | int] = None) -> Tensor:
    """Causal attention of q, k, v (B, H, T, D) with dropout `dropout_p` on the weights.
    `seed` fixes the dropout mask (see `dropout_keep_mask`); by default each call draws one from
    torch's generator (the `torch` backend then uses `F.dropout`, as the lecture does)."""
    if isinstance(seed, int):
        seed = torch.tensor(seed, dtype=torch.int64)
    return _BACKENDS[resolve_backend(backend, q)].attend(q, k, v, dropout_p, seed)


def backend_status(device_type: str, dtype: torch.dtype = torch.float32,
                   head_size: int = 64) -> dict[str, Optional[str]]:
    """Each backend and why it cannot run for these inputs (None when it can)."""
    return {name: b.unsupported(device_type, dtype, head_size) for name, b in _BACKENDS.items()}
