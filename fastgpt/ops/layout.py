"""Views between the model's packed layout and the (B, H, T, D) heads the kernels see.

The fused qkv projection makes (B, T, 3C) = (B, T, 3, H, D); the output projection reads (B, T, C) =
(B, T, H, D), heads side by side. The kernels read and write these layouts in place through views,
so a training step has no transpose, contiguous or cat copy.
"""
from torch import Tensor


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
