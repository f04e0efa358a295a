"""Tokenizers: the lecture's characters, and a byte-level BPE for larger corpora.

Both have the same interface: `encode(str) -> list[int]`, `decode(ids) -> str`, `vocab_size`,
`unknown(text)` (what `encode` would reject), and `state_dict()` of plain data (saved inside every
checkpoint and dataset, loadable with torch.load(weights_only=True)), read back by
`tokenizer_from_state_dict`.
"""
from typing import Iterable, Iterator

import numpy as np


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.itos = sorted(set(chars))
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def unknown(self, text: str) -> list[str]:
        """The characters of `text` outside the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self.stoi))

    def encode(self, text: str) -> list[int]:
        missing = self.unknown(text)
        if missing:
            raise KeyError(f"characters not in the vocabulary: {''.join(missing)!r}")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def id_table(self, dtype: np.dtype) -> np.ndarray:
        """The vectorised encode: ids indexed by code point, `table[code_points]`."""
        table = np.zeros(max(map(ord, self.itos)) + 1, dtype=dtype)
        table[[ord(ch) for ch in self.itos]] = np.arange(self.vocab_size)
        return table

    def state_dict(self) -> dict:
        """Plain data (safe for torch.load(weights_only=True)), saved inside every checkpoint."""
        return {"kind": self.kind, "chars": "".join(self.itos)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "CharTokenizer":
        return cls(state["chars"])


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) from HF `tokenizers`: every string encodes, and decoding the ids
    gives the string back exactly. Its state is the tokenizer's own JSON."""
    kind = "bpe"

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer
        self.tokenizer_json = tokenizer_json
        try:
            self._tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise ValueError(f"not a tokenizers JSON ({e})") from None

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> "BPETokenizer":
        """Learn merges from an iterator of text pieces (never the whole corpus at once) until the
        vocabulary has `vocab_size` tokens (at least the 256 bytes)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer.to_str())

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def unknown(self, text: str) -> list[str]:
        return []  # bytes are the alphabet: nothing is out of vocabulary

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode(list(ids))

    def state_dict(self) -> dict:
        return {"kind": self.kind, "json": self.tokenizer_json}

    @classmethod
    def from_state_dict(cls, state: dict) -> "BPETokenizer":
        return cls(state["json"])


def tokenizer_from_state_dict(state: dict):
    """Rebuild the tokenizer a checkpoint or dataset saved."""
    kinds = {CharTokenizer.kind: CharTokenizer, BPETokenizer.kind: BPETokenizer}
    if state.get("kind") not in kinds:
        raise ValueError(f"unknown tokenizer kind {state.get('kind')!r}")
    return kinds[state["kind"]].from_state_dict(state)
