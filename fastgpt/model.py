"""The GPT of Karpathy's "Let's build GPT" lecture, written the nanoGPT way.

Token + position embeddings, `n_layer` pre-LayerNorm blocks of causal multi-head self-attention
(dropout on the attention weights) and a ReLU MLP of width 4·n_embd, residual connections, a
final LayerNorm and a linear head; weights initialised from N(0, 0.02). The lecture keeps one
key/query/value Linear per head; here they are stacked into one Linear, the same maths, and the
dropout of each block's attention and MLP output is fused with its residual add
(`fastgpt.attention.dropout_add`).
Attention goes through `fastgpt.attention.causal_attention`, the one dispatch point for the
torch, C++ and Triton backends.

Sampling keeps a `KVCache`: the prompt goes through the model once (through the same dispatch
point), then each new token is one position whose query attends to the cached keys and values
(see `fastgpt.generate`).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastgpt.attention import causal_attention, causal_attention_qkv, dropout_add, reference_attention
from fastgpt.ops.layout import merge_heads, split_heads
from fastgpt.generate import generate_tokens


class InvalidConfig(ValueError):
    """A GPTConfig field whose value cannot work: `field` names it, `requirement` says what it needs."""

    def __init__(self, field: str, requirement: str):
        super().__init__(f"{field} {requirement}")
        self.field, self.requirement = field, requirement


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    attention: str = "auto"  # a backend of fastgpt.attention: how attention runs, not what

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise InvalidConfig(name, f"must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise InvalidConfig("n_embd", f"must be a multiple of n_head ({self.n_head}), got {self.n_embd}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidConfig("dropout", f"must be in [0, 1), got {self.dropout}")


class LayerCache:
    """One layer's keys and values (B, H, block_size, D), preallocated: appending writes in place."""

    def __init__(self, shape: tuple[int, ...], device, dtype):
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # positions 0..length-1 hold keys and values

    def append(self, k, v):
        """Store k, v (B, H, T, D) of the next T positions; return all positions so far as views."""
        end = self.length + k.size(2)
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]  # (B, H, end, D)


class KVCache:
    """Every layer's keys and values for up to block_size positions of `batch_size` sequences."""

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=None):
        shape = (batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.layers = [LayerCache(shape, device, dtype) for _ in range(config.n_layer)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def clear(self) -> None:
        for layer in self.layers:
            layer.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.backend = config.attention
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x, cache=None):
        qkv = self.qkv(x)  # (B, T, 3C) = (B, T, 3, H, D)
        p = self.dropout if self.training else 0.0
        if cache is None:  # training and evaluation: the kernels read and write this layout as is
            y = causal_attention_qkv(qkv, self.n_head, p, backend=self.backend)  # (B, T, C)
            return self.proj(y)  # dropped by the Block, fused with the residual add
        q, k, v = split_heads(qkv, self.n_head)  # (B, H, T, D) views
        past = cache.length
        k, v = cache.append(k, v)  # (B, H, past + T, D)
        if past == 0:
            y = causal_attention(q, k, v, p, backend=self.backend)
        else:  # decoding: the new positions attend to the cached ones too
            y = reference_attention(q, k, v)
        return self.proj(merge_heads(y))  # heads side by side again: (B, T, C)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)))  # dropped by the Block, fused with the residual add


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
        self.dropout = config.dropout

    def forward(self, x, cache=None):
        p = self.dropout if self.training else 0.0
        x = dropout_add(self.attn(self.ln1(x), cache), x, p)  # x + dropout(attention)
        x = dropout_add(self.mlp(self.ln2(x)), x, p)  # x + dropout(MLP)
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)
        self.apply(self._init_weights)
        # what fastgpt.train and fastgpt.load pair the model with, so that fastgpt.sample can take
        # the model alone; not part of the state_dict (a checkpoint saves the tokenizer itself)
        self.tokenizer = None

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def set_attention(self, backend: str) -> None:
        """Switch every layer to another attention backend (see fastgpt.attention)."""
        self.config.attention = backend
        for block in self.blocks:
            block.attn.backend = backend

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy if targets.
        With a KVCache, idx continues the cached positions, its keys and values join the cache, and
        only the last position's logits are computed (B, 1, vocab): all that sampling reads."""
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        assert start + T <= self.config.block_size, \
            f"sequence of {start + T} exceeds block_size {self.config.block_size}"
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.token_embedding(idx) + self.position_embedding(pos)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])
        if cache is not None:
            x = x[:, -1:]  # (B, 1, C)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss

    def kv_cache(self, batch_size: int) -> KVCache:
        """An empty KVCache for `batch_size` sequences on this model's device, in its dtype."""
        weight = self.token_embedding.weight
        return KVCache(self.config, batch_size, weight.device, weight.dtype)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, **options):
        """The lecture's generate: idx (B, T) extended by `max_new_tokens` sampled tokens, each drawn
        from the last position's logits over the last block_size tokens; (B, T + max_new_tokens).
        With the lecture's arguments and torch's global seed it draws exactly what the lecture's
        loop draws, in one position's work per token (a KV cache). `options` (top_p, greedy, seed,
        window) are those of `fastgpt.generate.generate_tokens`. Runs without dropout."""
        was_training = self.training
        self.eval()
        try:
            tokens = list(generate_tokens(self, idx, max_new_tokens, temperature, top_k, **options))
        finally:
            self.train(was_training)
        return torch.cat([idx, *(token[:, None] for token in tokens)], dim=1)  # (B, T + max_new_tokens)

    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, **options):
        """Like generate, but yields each new token (B,) as soon as it is drawn (for streaming).
        The model must be in eval mode."""
        return generate_tokens(self, idx, max_new_tokens, temperature, top_k, **options)
