"""Causal self-attention: the one dispatch point for every backend.

`causal_attention(q, k, v, dropout_p, backend)` takes q, k, v shaped (B, H, T, D), applies the
causal mask and the 1/sqrt(D) scale of the lecture, drops attention weights with probability
`dropout_p`, and returns (B, H, T, D). Backends:

- ``torch``: the lecture's maths in plain PyTorch (masked softmax, `F.dropout`). The reference,
  and the fallback whenever a fused path cannot run.
- ``cpp``: the fused CPU kernel of the C++ extension (`fastgpt._C`).
- ``triton``: the fused Triton kernel on CUDA (`fastgpt.triton_attention`; on CPU tensors only in
  Triton's interpreter, with TRITON_INTERPRET=1 set before fastgpt is imported).
- ``sdpa``: `torch.nn.functional.scaled_dot_product_attention`, PyTorch's own kernel; a baseline
  for benchmarks (it draws its own dropout mask, so it takes no `seed`).

The fused backends are one registered op, ``fastgpt::causal_attention`` (`fastgpt.attention_op`),
with a kernel per device. Their dropout is a pure function of a seed and the element's position
(Philox, see `dropout_keep_mask`), so CPU and GPU runs share the same mask.
"""
import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgpt import cpp_attention, triton_attention
from fastgpt.attention_op import causal_attention_op, draw_seed, torch_keep_mask

BACKENDS = ("torch", "cpp", "triton", "sdpa")

# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def reference_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                        keep_mask: Optional[Tensor] = None) -> Tensor:
    """The lecture's attention. With `keep_mask` (bool, broadcastable to (B, H, T, T)) dropout
    uses that mask instead of drawing one from torch's generator."""
    *batch, T, D = q.shape
    # One fused pass makes the scaled, masked scores: scale and mask cost no (T, T) pass of their own,
    # forward or backward (the lecture multiplies and masked_fills the (T, T) weights separately).
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    att = torch.baddbmm(future, q.reshape(-1, T, D), k.reshape(-1, T, D).transpose(1, 2),
                        alpha=1.0 / math.sqrt(D)).view(*batch, T, T).softmax(dim=-1)  # (B, H, T, T)
    if keep_mask is not None and dropout_p > 0:
        att = att * keep_mask / (1.0 - dropout_p)
    elif dropout_p > 0:
        att = F.dropout(att, dropout_p, training=True)
    return att @ v  # (B, H, T, D)


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
        keep = torch_keep_mask(int(seed), B, H, T, dropout_p, q.device)
    return reference_attention(q, k, v, dropout_p, keep)


_UNUSED_SEED = torch.zeros((), dtype=torch.int64)  # p = 0 draws no mask: no tensor per call


def _fused_attend(q, k, v, dropout_p, seed, op=causal_attention_op):
    """`op` is the registered op, or a backend's stand-in with its signature and outputs."""
    if seed is None:
        seed = draw_seed() if dropout_p > 0 else _UNUSED_SEED
    return op(q, k, v, dropout_p, seed)[0]


def _sdpa_attend(q, k, v, dropout_p, seed):
    if seed is not None and dropout_p > 0:
        raise ValueError("the sdpa backend draws its own dropout mask and takes no seed")
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


_BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", lambda device_type, dtype, head_size: None, _torch_attend),
    "cpp": Backend("cpp", cpp_attention.unsupported, _fused_attend),
    "triton": Backend("triton", triton_attention.unsupported,
                      partial(_fused_attend, op=triton_attention.causal_attention)),
    "sdpa": Backend("sdpa", lambda device_type, dtype, head_size: None, _sdpa_attend),
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


# Each backend's generator of the dropout mask its kernel uses (the kernels' debug entry points).
_KEEP_MASK_FNS: dict[str, Callable[..., Tensor]] = {"torch": torch_keep_mask,
                                                    "cpp": cpp_attention.keep_mask,
                                                    "triton": triton_attention.keep_mask}


def dropout_keep_mask(seed: int, B: int, H: int, T: int, p: float, backend: str = "torch") -> Tensor:
    """The bool (B, H, T, T) keep-mask that `backend`'s kernel uses for this seed and shape.
    Entry (b, h, i, j) is kept iff philox_uint32(seed, ((b·H + h)·T + i)·T + j) >= p·2**32;
    kept weights are scaled by 1/(1 - p). Every backend gives the same mask."""
    if backend not in _KEEP_MASK_FNS:
        raise ValueError(f"no dropout mask for backend {backend!r}: "
                         f"available are {sorted(_KEEP_MASK_FNS)}")
    return _KEEP_MASK_FNS[backend](seed, B, H, T, p)
