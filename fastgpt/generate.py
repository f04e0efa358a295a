"""Sampling from a GPT with a key/value cache.

The prompt (its last block_size tokens) goes through the model once, through the usual attention
dispatch point, filling a `KVCache`; each new token is then one position: its query attends to the
cached keys and values, so a token costs one position's work instead of the whole context's. The
cache is preallocated for block_size positions and written in place. On CPU a one-position step is
one call of the C++ extension (fastgpt.decode), with the model's weights or, with dtype "bfloat16"
or "int8", narrower copies of them.

Position embeddings are absolute and learned, so a context longer than block_size cannot just
keep growing. Two ways past it:
  window="exact"  the lecture's behaviour: every token sees the last block_size tokens at positions
                  0..block_size-1. Each step past block_size re-fills the cache with that cropped
                  window in one pass (full-context work per token, as the lecture, on the fast path).
  window="slide"  an approximation: when the cache is full, re-fill it with the last
                  block_size/2 + 1 tokens only, then decode one position at a time again: a full
                  pass once every block_size/2 tokens, and a context that shrinks to
                  block_size/2 + 1 tokens and grows back to block_size (the lecture's is always
                  the last block_size).

Randomness: with seed=None draws use torch's global generator exactly as the lecture's loop does
(`torch.multinomial` over the batch), so `torch.manual_seed(s)` then `generate` gives the lecture's
characters. With seed=s, sequence i of the batch draws from its own `torch.Generator` seeded s + i:
a batch of N samples equals N one-sample runs with seeds s, s+1, ..., s+N-1.
"""
import math
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgpt.errors import UserError
from fastgpt.decode import DTYPES, cached_steps

WINDOWS = ("exact", "slide")
# Below this the logits divided by the temperature can overflow float32 (inf - inf in the softmax
# gives NaN probabilities); sampling that cold is greedy decoding anyway.
MIN_TEMPERATURE = 1e-3


def check_options(vocab_size: int, max_new_tokens: int, temperature: float, top_k: Optional[int],
                  top_p: Optional[float], greedy: bool, window: str, dtype: Optional[str] = None) -> None:
    """ValueError naming the first option out of range; the message starts with the option's name."""
    if max_new_tokens < 0:
        raise ValueError(f"max-new-tokens must not be negative, got {max_new_tokens}")
    if not greedy and not MIN_TEMPERATURE <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number of at least {MIN_TEMPERATURE} to "
                         f"sample, got {temperature}; use greedy decoding (--greedy) for the most "
                         f"likely token")
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ValueError(f"top-k must be between 1 and the vocabulary size {vocab_size}, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top-p must be in (0, 1], got {top_p}")
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} or None (the model's), got {dtype!r}")


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> Tensor:
    """logits (B, V) scaled by 1/temperature, keeping the top_k largest, then the smallest set of
    most likely tokens whose probability reaches top_p (nucleus); the rest become -inf."""
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # (B, V): probability of the likelier tokens
        drop = (mass_before >= top_p).scatter(-1, order, mass_before >= top_p)  # back to token order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: Tensor, generators: Optional[list[torch.Generator]]) -> Tensor:
    """One token (B,) per row from softmax(logits (B, V)): with torch's global generator, as the
    lecture, or row i with generators[i]."""
    probs = F.softmax(logits, dim=-1)
    if generators is None:
        return torch.multinomial(probs, num_samples=1)[:, 0]
    return torch.cat([torch.multinomial(p, num_samples=1, generator=g)
                      for p, g in zip(probs, generators)])


def refill(model, cache, step, tokens: Tensor, window: str) -> Tensor:
    """Logits (B, V) for the position after `tokens` (B, T) when the cache is full: the cache is
    filled again, in one call of `step`, with the last tokens that the window keeps."""
    block_size = model.config.block_size
    keep = block_size if window == "exact" else block_size // 2 + 1
    cache.clear()
    return step(tokens[:, -keep:])


def generate_tokens(model, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, *, top_p: Optional[float] = None,
                    greedy: bool = False, seed: Optional[int] = None,
                    window: str = "exact", dtype: Optional[str] = None) -> Iterator[Tensor]:
    """An iterator over `max_new_tokens` tokens (B,) following idx (B, T), each yielded as soon as
    it is drawn. greedy takes the most likely token (temperature, top_k, top_p then play no part).
    dtype "bfloat16" or "int8" stores the weights narrower for the one-position steps (see
    fastgpt.decode). The options are checked here, before the first token."""
    check_options(model.config.vocab_size, max_new_tokens, temperature, top_k, top_p, greedy, window,
                  dtype)
    if model.training:
        raise ValueError("sampling runs without dropout: call model.eval() first")
    generators = None
    if seed is not None:
        generators = [torch.Generator(idx.device).manual_seed(seed + i) for i in range(idx.size(0))]
    cache = model.kv_cache(idx.size(0))
    with torch.no_grad():
        step = cached_steps(model, cache, dtype)
    return _draw_tokens(model, idx, max_new_tokens, greedy, generators, window,
                        dict(temperature=temperature, top_k=top_k, top_p=top_p), cache, step)


@torch.no_grad()
def _draw_tokens(model, idx, max_new_tokens, greedy, generators, window, filters, cache, step):
    B, T = idx.shape
    block_size = model.config.block_size
    tokens = idx.new_empty(B, T + max_new_tokens)  # the prompt and every token drawn so far
    tokens[:, :T] = idx
    for t in range(T, T + max_new_tokens):
        if t == T:
            logits = model(idx[:, -block_size:], cache=cache)[0][:, -1]  # (B, V)
        elif cache.length < block_size:
            logits = step(token)
        else:
            logits = refill(model, cache, step, tokens[:, :t], window)
        if not torch.isfinite(logits).all():
            raise UserError(f"the model's outputs after {t} tokens are not finite (its weights "
                            f"overflow float32): the checkpoint's run diverged or the file is "
                            f"damaged; sample from another checkpoint")
        token = logits.argmax(dim=-1) if greedy else draw(filter_logits(logits, **filters), generators)
        tokens[:, t] = token
        yield token
