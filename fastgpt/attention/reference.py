"""The reference: the lecture's causal attention in plain PyTorch, and the dropout keep-mask that
every fused kernel reproduces bit for bit.

This is the only plain-PyTorch attention in fastgpt: the `torch` backend, the fallback of the
dispatch point, the model's decoding step and the oracle of every test.

Dropout on the attention weights is a pure function of a seed and the element's position: one
Philox-4x32 call gives the 16-bit draws of 8 neighbouring weights of a row (layout and rounds
below; Triton's `tl.philox` gives the same bits), kept iff >= round(p·2**16), and kept weights are
scaled by 1/(1 - p_eff). A backward pass regenerates the mask instead of storing it, and CPU and GPU
runs draw the same mask.
"""
import math
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                        keep_mask: Optional[Tensor] = None) -> Tensor:
    """softmax(q kᵀ / sqrt(D) + causal mask) v for q (..., Tq, D) and k, v (..., Tk, D), Tq <= Tk:
    the queries are the last Tq of the Tk positions (Tq = 1 is one decoding step). Dropout drops
    weights with probability `dropout_p`: by `keep_mask` (bool, broadcastable to (..., Tq, Tk)) when
    given (scaled by `dropout_keep_scale`, the mask's exact drop rate), else with F.dropout from
    torch's generator, as the lecture does."""
    *batch, Tq, D = q.shape
    Tk = k.shape[-2]
    # One fused pass makes the scaled, masked scores: scale and mask cost no (T, T) pass of their own,
    # forward or backward (the lecture multiplies and masked_fills the (T, T) weights separately).
    future = torch.full((Tq, Tk), float("-inf"), dtype=q.dtype, device=q.device).triu(1 + Tk - Tq)
    att = torch.baddbmm(future, q.reshape(-1, Tq, D), k.reshape(-1, Tk, D).transpose(1, 2),
                        alpha=1.0 / math.sqrt(D)).view(*batch, Tq, Tk).softmax(dim=-1)
    if keep_mask is not None and dropout_p > 0:
        att = att * keep_mask * dropout_keep_scale(dropout_p)
    elif dropout_p > 0:
        att = F.dropout(att, dropout_p, training=True)
    return att @ v  # (..., Tq, D)


# ---------------------------------------------------------------------------------------------
# Counter-based dropout: one Philox-4x32 call per 8 attention weights
# ---------------------------------------------------------------------------------------------
#
# Element (b, h, i, j) of the (B, H, T, T) weights belongs to column block j // 8. Philox-4x32 with
# key (seed lo, seed hi) and counter (j // 8, i, b·H + h lo, b·H + h hi) gives 128 bits; the 8
# elements of the block take its 16-bit halves in order (word 0 low, word 0 high, word 1 low, ...)
# and an element is kept iff its draw >= round(p·2**16). Any tile of any kernel regenerates its
# part from its own coordinates, in forward and backward, so the mask is never stored. Kept weights
# are scaled by 1/(1 - p_eff), p_eff = threshold/2**16 the exact drop rate, so the output stays
# unbiased (p_eff is within 2**-17 of p).
#
# Rounds: Salmon et al. (Random123, SC'11) found Philox-4x32 Crush-resistant (all of TestU01's
# BigCrush passes) from 7 rounds and recommend 10 as a safety margin for general use;
# FlashAttention-2 uses 7 for its dropout. A dropout mask needs statistical quality, not
# cryptographic strength, and tests/test_dropout_mask.py checks the rate and the independence of
# neighbouring seeds, rows, heads and blocks: 7 rounds, 30 % less work than 10.

PHILOX_ROUNDS = 7
DRAWS_PER_CALL = 8  # 16-bit draws in one 128-bit Philox output: the column block's width
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_MASK32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of a·b for a uint32 constant `a` and uint32 values `b` held in
    int64, split in 16-bit halves so that no product overflows int64."""
    low = a * (b & 0xFFFF)
    mid = a * (b >> 16) + (low >> 16)
    return mid >> 16, ((mid & 0xFFFF) << 16) | (low & 0xFFFF)


def philox4x32(seed: int, counter: tuple[Tensor, Tensor, Tensor, Tensor],
               rounds: int = PHILOX_ROUNDS) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox-4x32-`rounds` with key (seed lo, seed hi) of the counter words (int64 tensors holding
    uint32 values, broadcastable); returns the four output words, as int64 values in [0, 2**32)."""
    c0, c1, c2, c3 = torch.broadcast_tensors(*counter)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & _MASK32, (k1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def dropout_threshold(p: float) -> int:
    """An element is kept when its 16-bit draw is >= this (capped so that some draw is kept)."""
    return min(round(p * 65536), 65535)


def dropout_keep_scale(p: float) -> float:
    """What kept weights are multiplied by: 1/(1 - p_eff), p_eff the mask's exact drop rate."""
    return 65536 / (65536 - dropout_threshold(p))


def keep_mask(seed: int, B: int, H: int, T: int, p: float,
              device: torch.device | str = "cpu") -> Tensor:
    """The bool (B, H, T, T) keep-mask of `seed` (layout above)."""
    blocks = -(-T // DRAWS_PER_CALL)
    arange = partial(torch.arange, dtype=torch.int64, device=device)
    bh = arange(B * H).view(B, H, 1, 1)
    words = philox4x32(seed, (arange(blocks).view(1, 1, 1, blocks), arange(T).view(1, 1, T, 1),
                              bh & _MASK32, bh >> 32))
    draws = torch.stack([half for word in words for half in (word & 0xFFFF, word >> 16)], dim=-1)
    return (draws.view(B, H, T, blocks * DRAWS_PER_CALL)[..., :T] >= dropout_threshold(p))
