"""The lecture's character tokenizer: the sorted unique characters of the text are the vocabulary."""
from typing import Iterable


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

    def state_dict(self) -> dict:
        """Plain data (safe for torch.load(weights_only=True)), saved inside every checkpoint."""
        return {"kind": self.kind, "chars": "".join(self.itos)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "CharTokenizer":
        return cls(state["chars"])


def tokenizer_from_state_dict(state: dict):
    """Rebuild the tokenizer a checkpoint or dataset saved."""
    kinds = {CharTokenizer.kind: CharTokenizer}
    if state.get("kind") not in kinds:
        raise ValueError(f"unknown tokenizer kind {state.get('kind')!r}")
    return kinds[state["kind"]].from_state_dict(state)
