"""The dropout masks of every kernel: a pure function of a seed and the element's position.

One Philox-4x32-7 call gives the 16-bit draws of 8 neighbouring elements; an element is kept iff
its draw >= round(p·2**16), and kept elements are scaled by 1/(1 - p_eff). A backward pass
regenerates the mask instead of storing it, and the C++ kernels (csrc/philox_kernels.h), the Triton
kernels (kernels/philox.py) and the reference draw the same bits, so CPU and GPU runs share masks.
Two layouts: the attention weights (B, H, T, T) and a flat tensor (residual dropout).
"""
from functools import partial

import torch
from torch import Tensor

# Attention weights. Element (b, h, i, j) of the (B, H, T, T) weights belongs to column block j // 8. Philox-4x32 with
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
# cryptographic strength, and tests/test_attention.py checks the rate and the independence of
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


def attention_keep_mask(seed: int, B: int, H: int, T: int, p: float,
                        device: torch.device | str = "cpu") -> Tensor:
    """The bool (B, H, T, T) keep-mask of the attention weights for `seed` (layout above)."""
    blocks = -(-T // DRAWS_PER_CALL)
    arange = partial(torch.arange, dtype=torch.int64, device=device)
    bh = arange(B * H).view(B, H, 1, 1)
    words = philox4x32(seed, (arange(blocks).view(1, 1, 1, blocks), arange(T).view(1, 1, T, 1),
                              bh & _MASK32, bh >> 32))
    return _draws(words).view(B, H, T, blocks * DRAWS_PER_CALL)[..., :T] >= dropout_threshold(p)


def residual_keep_mask(seed: int, n: int, p: float, device: torch.device | str = "cpu") -> Tensor:
    """The bool keep bits of the first n elements of a flattened tensor (residual dropout): element
    n takes draw n % 8 of the Philox call at counter (n // 8 lo, n // 8 hi, 0, 0)."""
    blocks = torch.arange(-(-n // DRAWS_PER_CALL), dtype=torch.int64, device=device)
    zero = torch.zeros_like(blocks)
    words = philox4x32(seed, (blocks & _MASK32, blocks >> 32, zero, zero))
    return _draws(words).flatten()[:n] >= dropout_threshold(p)


def _draws(words: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """The 8 16-bit draws of each Philox call, in order (word 0 low, word 0 high, word 1 low, ...),
    on a new last axis."""
    return torch.stack([half for word in words for half in (word & 0xFFFF, word >> 16)], dim=-1)


def draw_seed() -> Tensor:
    """A dropout seed from torch's default generator, so torch.manual_seed fixes it. A tensor, not
    an int, so that torch.compile keeps it in the graph instead of breaking on .item()."""
    return torch.randint(2**62, (), dtype=torch.int64)
