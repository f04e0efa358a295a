"""Dropout draws for the Triton kernels: the counter-based RNG of `fastgpt.ops.mask` (one Philox-4x32
call gives the 16-bit draws of 8 neighbouring elements), bit for bit."""
import triton
import triton.language as tl

from fastgpt.ops.mask import PHILOX_ROUNDS as _ROUNDS

PHILOX_ROUNDS = tl.constexpr(_ROUNDS)


@triton.jit
def philox_draws(seed, c0, c1, c2, c3):
    """The draws of the Philox calls at counters (c0, c1, c2, c3) (uint32 tensors (R, N)), as
    (R, 8·N) int: call (r, n) gives elements 8n .. 8n + 7 of row r, its 16-bit halves in order
    (word 0 low, word 0 high, word 1 low, ...)."""
    x0, x1, x2, x3 = tl.philox(seed, c0, c1, c2, c3, PHILOX_ROUNDS)
    words = tl.join(tl.join(x0, x2), tl.join(x1, x3))  # [..., i, s] is word 2i + s
    draws = tl.join(words & 0xFFFF, words >> 16)  # [..., i, s, half] is draw 4i + 2s + half
    return tl.reshape(draws, (c0.shape[0], c0.shape[1] * 8))
