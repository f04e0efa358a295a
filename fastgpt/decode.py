"""The sampling steps in one call: new positions of each sequence through the whole model, one after
the other, their keys and values appended to the `KVCache`, by the op fastgpt::decode_step
(fastgpt/ops/decode.py; its kernel, csrc/decode.cpp, runs on CPU). One position per drawn token
inside the block; a whole window when the exact window refills the cache past it.

At a few sequences a step reads every weight once for two flops each (~43 MB at the lecture's
GPU size in float32), so memory bandwidth is the limit; the PyTorch modules spend most of a step on
the ~100 operator calls around those reads instead. `dtype` stores the weight matrices narrower for
the steps, fewer bytes per token: "bfloat16" (rounded to nearest) or "int8" (symmetric, one float
scale per output row). Activations, sums, LayerNorm, softmax and the cache stay in the model's dtype.
The prompt runs through the model as it is.

Where the extension cannot run (not built, not a CPU model, a head size that is not a multiple of
8), `cached_steps` runs the model's own forward instead, under torch.autocast for "bfloat16".
"""
import weakref
from contextlib import nullcontext
from typing import Callable, Optional

import torch
from torch import Tensor

from fastgpt.ops import cpu
from fastgpt.ops.decode import decode_step

DTYPES = ("bfloat16", "int8")  # besides None: the model's own weights


def unsupported(model, dtype: Optional[str] = None) -> Optional[str]:
    """Why the C++ step cannot run this model, or None when it can."""
    weight = model.token_embedding.weight
    head_size = model.config.n_embd // model.config.n_head
    if cpu.missing is not None:
        return cpu.missing
    if weight.device.type != "cpu":
        return f"the C++ step runs on CPU, not {weight.device.type}"
    if weight.dtype not in (torch.float32, torch.float64):
        return f"the C++ step runs float32 or float64 models, not {weight.dtype}"
    if dtype is not None and weight.dtype != torch.float32:
        return f"{dtype} weights need a float32 model, not {weight.dtype}"
    if head_size % 8:
        return f"the C++ step needs a head size that is a multiple of 8, not {head_size}"
    return None


def cached_steps(model, cache, dtype: Optional[str] = None) -> Callable[[Tensor], Tensor]:
    """A function from the next tokens (B,) or (B, L) of each sequence, not yet in `cache`, to the
    logits (B, vocab) of the position after the last; it appends their keys and values to the cache."""
    reason = unsupported(model, dtype)
    if reason is None:
        return Decoder(model, cache, dtype)
    if dtype == "int8":
        raise ValueError(f"dtype int8 needs the C++ step, and {reason}; use bfloat16")
    weight = model.token_embedding.weight
    low_precision = dtype == "bfloat16" and weight.dtype != torch.bfloat16
    context = torch.autocast(weight.device.type, torch.bfloat16) if low_precision else nullcontext()

    def step(tokens: Tensor) -> Tensor:
        with context:
            return model(tokens.view(tokens.size(0), -1), cache=cache)[0][:, -1].to(weight.dtype)

    return step


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output row: weight (M, K) ≈ q · scale[:, None], |q| <= 127."""
    scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(weight.dtype).tiny) / 127
    return torch.round(weight / scale[:, None]).to(torch.int8), scale.contiguous()


def pack(model, dtype: Optional[str]) -> dict[str, Tensor | list[Tensor] | None]:
    """The model's tensors as the op fastgpt::decode_step names them (its schema:
    fastgpt/ops/decode.py), weight matrices in `dtype`, with their row scales where it is int8."""

    def matrix(linear) -> tuple[Tensor, Optional[Tensor]]:
        weight = linear.weight.detach()
        if dtype == "bfloat16":
            return weight.to(torch.bfloat16).contiguous(), None
        if dtype == "int8":
            return quantize_int8(weight)
        return weight.contiguous(), None

    def vector(p) -> Tensor:
        return p.detach().contiguous()

    blocks = list(model.blocks)
    assert all(block.attn.qkv.bias is None for block in blocks), "the qkv projection has no bias"
    tensors: dict = {f"{norm}_{p}": [vector(getattr(getattr(block, norm), p)) for block in blocks]
                     for norm in ("ln1", "ln2") for p in ("weight", "bias")}
    for name, linears in (("qkv", [block.attn.qkv for block in blocks]),
                          ("attn_proj", [block.attn.proj for block in blocks]),
                          ("fc", [block.mlp.fc for block in blocks]),
                          ("mlp_proj", [block.mlp.proj for block in blocks])):
        weights, scales = zip(*map(matrix, linears))
        tensors[f"{name}_weight"] = list(weights)
        tensors[f"{name}_scale"] = list(scales) if dtype == "int8" else []
        if name != "qkv":
            tensors[f"{name}_bias"] = [vector(linear.bias) for linear in linears]
    head_weight, head_scale = matrix(model.lm_head)
    return {**tensors, "token_embedding": vector(model.token_embedding.weight),
            "position_embedding": vector(model.position_embedding.weight), "ln_f_weight": vector(model.ln_f.weight),
            "ln_f_bias": vector(model.ln_f.bias), "head_weight": head_weight, "head_scale": head_scale,
            "head_bias": vector(model.lm_head.bias)}


# Packed narrow weights of each model, reused by later generations while every parameter is the
# same tensor at the same version (an optimizer step or a load_state_dict changes one of them).
_packed: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def packed(model, dtype: Optional[str]) -> dict[str, Tensor | list[Tensor] | None]:
    if dtype is None:
        return pack(model, dtype)  # views of the parameters: nothing to keep
    state = tuple((p.data_ptr(), p._version) for p in model.parameters())
    kept = _packed.setdefault(model, {})
    if kept.get(dtype, (None,))[0] != state:
        kept[dtype] = (state, pack(model, dtype))
    return kept[dtype][1]


class Decoder:
    """The model's tensors packed for the op fastgpt::decode_step, bound to one cache; calling it on
    tokens (B,) or (B, L) takes one step per position, in one call."""

    def __init__(self, model, cache, dtype: Optional[str] = None):
        self.cache = cache
        self.n_head = model.config.n_head
        norms = [model.ln_f] + [norm for block in model.blocks for norm in (block.ln1, block.ln2)]
        assert len({norm.eps for norm in norms}) == 1, "one LayerNorm eps for the whole model"
        self.eps = norms[0].eps
        self.tensors = packed(model, dtype)
        self.keys = [layer.keys for layer in cache.layers]
        self.values = [layer.values for layer in cache.layers]

    def __call__(self, tokens: Tensor) -> Tensor:
        pos = self.cache.length
        logits = decode_step(tokens, pos, **self.tensors, keys=self.keys, values=self.values, n_head=self.n_head,
                             eps=self.eps)
        for layer in self.cache.layers:
            layer.length = pos + (tokens.size(1) if tokens.dim() == 2 else 1)
        return logits
