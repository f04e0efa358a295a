"""The references: the lecture's causal attention and residual dropout in plain PyTorch.

This is the only plain-PyTorch attention in fastgpt: the `torch` backend, the fallback of the
dispatch point, the model's decoding step and the oracle of every test. Where they drop with a
seed, both draw the masks of `fastgpt.ops.mask`, the ones every fused kernel reproduces bit for bit.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgpt.ops.mask import dropout_keep_scale, residual_keep_mask


def reference_weights(q: Tensor, k: Tensor) -> Tensor:
    """softmax(q kᵀ / sqrt(D) + causal mask) (..., Tq, Tk) for q (..., Tq, D) and k (..., Tk, D),
    Tq <= Tk: the attention weights, before dropout. The queries are the last Tq of the Tk positions
    (Tq = 1 is one decoding step)."""
    *batch, Tq, D = q.shape
    Tk = k.shape[-2]
    # One fused pass makes the scaled, masked scores: scale and mask cost no (T, T) pass of their own,
    # forward or backward (the lecture multiplies and masked_fills the (T, T) weights separately).
    future = torch.full((Tq, Tk), float("-inf"), dtype=q.dtype, device=q.device).triu(1 + Tk - Tq)
    return torch.baddbmm(future, q.reshape(-1, Tq, D), k.reshape(-1, Tk, D).transpose(1, 2),
                         alpha=1.0 / math.sqrt(D)).view(*batch, Tq, Tk).softmax(dim=-1)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                        keep_mask: Optional[Tensor] = None) -> Tensor:
    """reference_weights(q, k) v for q (..., Tq, D) and k, v (..., Tk, D), Tq <= Tk. Dropout drops
    weights with probability `dropout_p`: by `keep_mask` (bool, broadcastable to (..., Tq, Tk)) when
    given (scaled by `mask.dropout_keep_scale`, the mask's exact drop rate), else with F.dropout from
    torch's generator, as the lecture does."""
    att = reference_weights(q, k)
    if keep_mask is not None and dropout_p > 0:
        att = att * keep_mask * dropout_keep_scale(dropout_p)
    elif dropout_p > 0:
        att = F.dropout(att, dropout_p, training=True)
    return att @ v  # (..., Tq, D)


def reference_dropout_add(x: Tensor, residual: Tensor, dropout_p: float, seed: int) -> Tensor:
    """residual + dropout(x) with the residual keep mask of `seed`, in the promoted dtype: what
    fastgpt::dropout_add computes."""
    keep = residual_keep_mask(seed, x.numel(), dropout_p, x.device).view(x.shape)
    return residual + x * keep * dropout_keep_scale(dropout_p)
