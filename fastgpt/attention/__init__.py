"""The one dispatch point: which kernels run the model's fused ops, attention and residual dropout.

`causal_attention(q, k, v, dropout_p, backend)` takes q, k, v shaped (B, H, T, D), applies the
causal mask and the 1/sqrt(D) scale of the lecture, drops attention weights with probability
`dropout_p`, and returns (B, H, T, D). Backends:

- ``torch``: the lecture's maths in plain PyTorch (`reference.py`). The reference, and what runs
  whenever a fused path cannot.
- ``cpp``: the fused CPU kernels of the C++ extension (csrc/, `fastgpt.ops.cpu`).
- ``triton``: the fused Triton kernels on CUDA (kernels/, `fastgpt.ops.cuda`).
- ``sdpa``: `torch.nn.functional.scaled_dot_product_attention`, PyTorch's own kernel; a baseline
  for benchmarks (it draws its own dropout mask, so it takes no `seed`).

The fused backends call the ops of `fastgpt.ops`, whose kernel the tensor's device picks. Their
dropout is a pure function of a seed and the element's position (see `dropout_keep_mask`), so CPU
and GPU runs share the same mask. `dropout_add` (the residual dropout) runs the op
fastgpt::dropout_add wherever the device has its kernel, and the reference, with the same mask,
where it has none (`residual_dropout_status` says which).

To add a backend: see "Adding a backend" in ARCHITECTURE.md.
"""
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgpt import ops
from fastgpt.attention.reference import reference_attention, reference_dropout_add
from fastgpt.ops import cpu, cuda
from fastgpt.ops.layout import merge_heads, split_heads
from fastgpt.ops.mask import attention_keep_mask, draw_seed

__all__ = ["BACKENDS", "causal_attention", "causal_attention_qkv", "dropout_add", "dropout_keep_mask",
           "backend_status", "residual_dropout_status", "explain", "resolve", "resolve_backend",
           "reference_attention"]


@dataclass(frozen=True)
class Backend:
    # Why this backend cannot run on (device type, dtype, head size), or None when it can.
    unsupported: Callable[[str, torch.dtype, int], Optional[str]]
    # (q, k, v, dropout_p, seed or None) -> out
    attend: Callable[[Tensor, Tensor, Tensor, float, Optional[Tensor]], Tensor]
    # the same on the packed layout: (qkv (B, T, 3C), n_head, dropout_p, seed or None) -> (B, T, C)
    attend_qkv: Callable[[Tensor, int, float, Optional[Tensor]], Tensor]
    # (seed, B, H, T, p) -> the bool keep-mask its kernels draw; None: it draws no mask of its own
    keep_mask: Optional[Callable[[int, int, int, int, float], Tensor]] = None
    # Why `auto` passes it over on this device type although it can run, or None
    slower: Callable[[str], Optional[str]] = lambda device_type: None


def _always(device_type: str, dtype: torch.dtype, head_size: int) -> None:
    return None


def _torch_attend(q, k, v, dropout_p, seed):
    keep = None
    if seed is not None and dropout_p > 0:
        B, H, T, _ = q.shape
        keep = attention_keep_mask(int(seed), B, H, T, dropout_p, q.device)
    return reference_attention(q, k, v, dropout_p, keep)


def _seed_tensor(seed: Optional[Tensor | int]) -> Optional[Tensor]:
    """A seed as the ops take it: a 0-dim int64 tensor (None stays None)."""
    return torch.tensor(seed, dtype=torch.int64) if isinstance(seed, int) else seed


_UNUSED_SEED = torch.zeros((), dtype=torch.int64)  # p = 0 draws no mask: no tensor per call


def _fused_attend(q, k, v, dropout_p, seed):
    if seed is None:
        seed = draw_seed() if dropout_p > 0 else _UNUSED_SEED
    return ops.causal_attention(q, k, v, dropout_p, seed)[0]


def _fused_attend_qkv(qkv, n_head, dropout_p, seed):
    if seed is None:
        seed = draw_seed() if dropout_p > 0 else _UNUSED_SEED
    return ops.causal_attention_qkv(qkv, n_head, dropout_p, seed)[0]


def _on_heads(attend):
    """A backend without a packed kernel on the packed layout: it attends views of qkv, and its
    (B, H, T, D) output is copied into (B, T, C)."""
    def attend_qkv(qkv, n_head, dropout_p, seed):
        return merge_heads(attend(*split_heads(qkv, n_head), dropout_p, seed))
    return attend_qkv


def _sdpa_attend(q, k, v, dropout_p, seed):
    if seed is not None and dropout_p > 0:
        raise ValueError("the sdpa backend draws its own dropout mask and takes no seed")
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


_BACKENDS: dict[str, Backend] = {
    "torch": Backend(_always, _torch_attend, _on_heads(_torch_attend), attention_keep_mask),
    "cpp": Backend(cpu.unsupported, _fused_attend, _fused_attend_qkv, cpu.keep_mask),
    "triton": Backend(cuda.unsupported, _fused_attend, _fused_attend_qkv, cuda.keep_mask, cuda.slower_than_sdpa),
    "sdpa": Backend(_always, _sdpa_attend, _on_heads(_sdpa_attend)),
}
BACKENDS = tuple(_BACKENDS)

# What `auto` tries, fastest first, by device type; `torch` ends every list. SDPA comes after the
# Triton kernels on CUDA (GPUs below sm_80, no Triton) and is what runs on Apple's MPS.
_AUTO_ORDER = {"cpu": ("cpp",), "cuda": ("triton", "sdpa"), "mps": ("sdpa",)}

_resolved: dict[tuple[str, str, torch.dtype, int], str] = {}


def resolve_backend(backend: str, q: Tensor) -> str:
    """The backend that runs for inputs like `q` (see `resolve`)."""
    return resolve(backend, q.device.type, q.dtype, q.shape[-1])


def resolve(backend: str, device_type: str, dtype: torch.dtype, head_size: int) -> str:
    """The backend that runs for such inputs: `auto` takes the fastest that supports them; an
    explicit backend that cannot run falls back to `torch` with a one-time warning saying why."""
    key = (backend, device_type, dtype, head_size)
    if key not in _resolved:
        _resolved[key] = _resolve(*key)
    return _resolved[key]


def explain(backend: str, device_type: str, dtype: torch.dtype, head_size: int) -> str:
    """The backend that runs for such inputs, and why no faster one does, in a few words."""
    chosen = resolve(backend, device_type, dtype, head_size)
    passed_over = []
    for name in _AUTO_ORDER.get(device_type, ()):
        reason = _passed_over(name, device_type, dtype, head_size)
        if name != chosen and reason is not None:
            passed_over.append(f"not {name}: {reason}")
    if chosen == "cpp":
        passed_over.insert(0, f"C++ kernels for {cpu.instruction_set()}")
    return chosen + (f" ({'; '.join(passed_over)})" if passed_over else "")


def _passed_over(name: str, device_type: str, dtype: torch.dtype, head_size: int) -> Optional[str]:
    """Why `auto` does not take backend `name` for such inputs, or None when it does."""
    backend = _BACKENDS[name]
    return backend.unsupported(device_type, dtype, head_size) or backend.slower(device_type)


def _resolve(backend: str, device_type: str, dtype: torch.dtype, head_size: int) -> str:
    if backend == "auto":
        for name in _AUTO_ORDER.get(device_type, ()):
            if _passed_over(name, device_type, dtype, head_size) is None:
                return name
        return "torch"
    if backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}: choose auto, {', '.join(BACKENDS)}")
    reason = _BACKENDS[backend].unsupported(device_type, dtype, head_size)
    if reason is not None:
        warnings.warn(f"attention backend {backend!r} cannot run here ({reason}); "
                      f"using the PyTorch reference instead", RuntimeWarning, stacklevel=5)
        return "torch"
    return backend


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                     backend: str = "auto", seed: Optional[Tensor | int] = None) -> Tensor:
    """Causal attention of q, k, v (B, H, T, D) with dropout `dropout_p` on the weights.
    `seed` fixes the dropout mask (see `dropout_keep_mask`); by default each call draws one from
    torch's generator (the `torch` backend then uses `F.dropout`, as the lecture does)."""
    seed = _seed_tensor(seed)
    return _BACKENDS[resolve_backend(backend, q)].attend(q, k, v, dropout_p, seed)


def causal_attention_qkv(qkv: Tensor, n_head: int, dropout_p: float = 0.0, backend: str = "auto",
                         seed: Optional[Tensor | int] = None) -> Tensor:
    """`causal_attention` on the model's own layout: q, k, v are read from the fused projection qkv
    (B, T, 3C) = (B, T, 3, H, D) and the output is (B, T, C) = (B, T, H, D), heads side by side, as
    the output projection reads it. The fused kernels read and write these layouts in place (the
    backward fills one (B, T, 3C) gradient): no transpose, contiguous or cat copies."""
    seed = _seed_tensor(seed)
    name = resolve(backend, qkv.device.type, qkv.dtype, qkv.shape[-1] // (3 * n_head))
    return _BACKENDS[name].attend_qkv(qkv, n_head, dropout_p, seed)


def backend_status(device_type: str, dtype: torch.dtype = torch.float32,
                   head_size: int = 64) -> dict[str, Optional[str]]:
    """Each backend and why it cannot run for these inputs (None when it can)."""
    return {name: b.unsupported(device_type, dtype, head_size) for name, b in _BACKENDS.items()}


def dropout_keep_mask(seed: int, B: int, H: int, T: int, p: float, backend: str = "torch") -> Tensor:
    """The bool (B, H, T, T) keep-mask that `backend`'s kernels use for this seed and shape: the
    reference's (`fastgpt.ops.mask.attention_keep_mask`) for torch, the op
    fastgpt::attention_keep_mask on the kernels' device for cpp and triton. Entry (b, h, i, j) is kept
    iff its 16-bit draw, the (j % 8)-th 16-bit piece of Philox-4x32-7 at counter (j // 8, i, b·H + h),
    is >= round(p·2**16); kept weights are scaled by dropout_keep_scale(p) = 1/(1 - p_eff). Every
    backend that draws one gives the same mask."""
    make = _BACKENDS[backend].keep_mask if backend in _BACKENDS else None
    if make is None:
        raise ValueError(f"no dropout mask for backend {backend!r}: choose torch, cpp or triton")
    return make(seed, B, H, T, p)


# Where fastgpt::dropout_add has a kernel: the device module's reason when it is off.
_DROPOUT_KERNELS = {"cpu": cpu, "cuda": cuda}


def residual_dropout_status(device_type: str) -> Optional[str]:
    """Why residual dropout runs the reference on this device type (None: the fused op runs)."""
    kernels = _DROPOUT_KERNELS.get(device_type)
    if kernels is None:
        return f"fastgpt has no fused residual dropout for {device_type} tensors"
    return kernels.missing


def dropout_add(x: Tensor, residual: Tensor, dropout_p: float, seed: Optional[Tensor | int] = None) -> Tensor:
    """residual + dropout(x, dropout_p) (the lecture's `x + dropout(proj(...))`), in one pass where
    the device has the fused kernel. Each call draws its seed from torch's generator unless given
    one (so torch.manual_seed fixes the masks); p = 0 is a plain add."""
    if dropout_p == 0:
        return residual + x
    seed = draw_seed() if seed is None else _seed_tensor(seed)
    if residual_dropout_status(x.device.type) is None:
        return ops.dropout_add(x, residual, dropout_p, seed)
    return reference_dropout_add(x, residual, dropout_p, int(seed))
