"""The reference: the lecture's causal attention in plain PyTorch, and the dropout keep-mask that
every fused kernel reproduces bit for bit.

This is the only plain-PyTorch attention in fastgpt: the `torch` backend, the fallback of the
dispatch point, the model's decoding step and the oracle of every test.

Dropout on the attention weights is a pure function of a seed and the element's position:
element (b, h, i, j) is kept iff the first word of Philox-4x32-10 with key `seed` and counter
((b·H + h)·T + i)·T + j is >= floor(p·2**32) (exactly Triton's `tl.randint(seed, offset)`), and kept
weights are scaled by 1/(1 - p). A backward pass regenerates the mask instead of storing it, and CPU
and GPU runs draw the same mask.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                        keep_mask: Optional[Tensor] = None) -> Tensor:
    """softmax(q kᵀ / sqrt(D) + causal mask) v for q (..., Tq, D) and k, v (..., Tk, D), Tq <= Tk:
    the queries are the last Tq of the Tk positions (Tq = 1 is one decoding step). Dropout drops
    weights with probability `dropout_p`: by `keep_mask` (bool, broadcastable to (..., Tq, Tk)) when
    given, else with F.dropout from torch's generator, as the lecture does."""
    *batch, Tq, D = q.shape
    Tk = k.shape[-2]
    # One fused pass makes the scaled, masked scores: scale and mask cost no (T, T) pass of their own,
    # forward or backward (the lecture multiplies and masked_fills the (T, T) weights separately).
    future = torch.full((Tq, Tk), float("-inf"), dtype=q.dtype, device=q.device).triu(1 + Tk - Tq)
    att = torch.baddbmm(future, q.reshape(-1, Tq, D), k.reshape(-1, Tk, D).transpose(1, 2),
                        alpha=1.0 / math.sqrt(D)).view(*batch, Tq, Tk).softmax(dim=-1)
    if keep_mask is not None and dropout_p > 0:
        att = att * keep_mask / (1.0 - dropout_p)
    elif dropout_p > 0:
        att = F.dropout(att, dropout_p, training=True)
    return att @ v  # (..., Tq, D)


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


def keep_mask(seed: int, B: int, H: int, T: int, p: float,
              device: torch.device | str = "cpu") -> Tensor:
    """The bool (B, H, T, T) keep-mask of `seed` (see the module's docstring)."""
    offset = torch.arange(B * H * T * T, dtype=torch.int64, device=device)  # ((b·H + h)·T + i)·T + j
    return (philox_uint32(seed, offset) >= dropout_threshold(p)).view(B, H, T, T)
