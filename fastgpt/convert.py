"""Import a model trained with the lecture's `gpt.py`:

    python -m fastgpt.convert lecture.pt --vocab input.txt --out DIR

`lecture.pt` is `torch.save(model.state_dict(), "lecture.pt")` of the lecture's GPTLanguageModel and
`input.txt` the text it was trained on (its sorted characters are the vocabulary). DIR receives
best.pt, a fastgpt checkpoint for `python -m fastgpt.sample --out-dir DIR` and
`fastgpt.checkpoint.load(DIR)`. Sizes are read from the tensors. The lecture's per-head key, query
and value Linears are stacked into fastgpt's one qkv Linear: the same maths, the same logits.
"""
import argparse
import re
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from fastgpt import checkpoint
from fastgpt.data.text import TextSource, scan
from fastgpt.cli import run_cli
from fastgpt.errors import UserError
from fastgpt.files import check_out_dir, claim_out_dir
from fastgpt.model import GPT, GPTConfig
from fastgpt.data.tokenizer import CharTokenizer

LECTURE_DROPOUT = 0.2  # not stored in a state_dict; the lecture's value


class _Lecture:
    """A lecture state_dict, read one named tensor at a time with the shape it must have."""

    def __init__(self, state: dict[str, Tensor], source: str):
        self.state = state
        self.source = source
        self.used = set()

    def require(self, key: str) -> Tensor:
        if key not in self.state:
            raise UserError(f"{self.source} has no {key}: it is not a state_dict of the lecture's "
                            f"GPTLanguageModel (save one with torch.save(model.state_dict(), path))")
        return self.state[key]

    def matrix_shape(self, key: str) -> tuple[int, int]:
        tensor = self.require(key)
        if tensor.dim() != 2:
            raise UserError(f"{self.source}: {key} has shape {tuple(tensor.shape)}, expected a matrix")
        return tuple(tensor.shape)

    def get(self, key: str, shape: tuple[int, ...]) -> Tensor:
        tensor = self.require(key)
        if tuple(tensor.shape) != shape:
            raise UserError(f"{self.source}: {key} has shape {tuple(tensor.shape)}, expected {shape} "
                            f"from the sizes of its other tensors")
        self.used.add(key)
        return tensor

    def count(self, pattern: str) -> int:
        """How many consecutive indices i from 0 have a key matching pattern.format(i)."""
        n = 0
        while any(re.fullmatch(pattern.format(n), key) for key in self.state):
            n += 1
        return n

    def check_all_used(self) -> None:
        # The causal mask buffer is rebuilt by fastgpt, so it may be present and unused.
        unused = sorted(k for k in self.state if k not in self.used and not k.endswith(".tril"))
        if unused:
            raise UserError(f"{self.source} has tensors the lecture's model does not ({unused[0]}"
                            f"{f' and {len(unused) - 1} more' if len(unused) > 1 else ''}); "
                            f"convert a state_dict of the lecture's GPTLanguageModel")


def lecture_config(state: dict[str, Tensor], source: str = "the state_dict",
                   dropout: float = LECTURE_DROPOUT) -> GPTConfig:
    """The GPTConfig of a lecture state_dict, from its tensors' shapes."""
    lecture = _Lecture(state, source)
    vocab_size, n_embd = lecture.matrix_shape("token_embedding_table.weight")
    block_size, _ = lecture.matrix_shape("position_embedding_table.weight")
    n_layer = lecture.count(r"blocks\.{}\..*")
    n_head = lecture.count(r"blocks\.0\.sa\.heads\.{}\..*")
    if n_layer == 0 or n_head == 0 or n_embd % n_head:
        raise UserError(f"{source} has {n_layer} blocks and {n_head} attention heads for width "
                        f"{n_embd}; convert a state_dict of the lecture's GPTLanguageModel")
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                     n_embd=n_embd, dropout=dropout)


def gpt_state_dict(state: dict[str, Tensor], config: GPTConfig,
                   source: str = "the state_dict") -> dict[str, Tensor]:
    """fastgpt's GPT state_dict holding the lecture's weights; every key and shape checked."""
    lecture = _Lecture(state, source)
    C, V, H = config.n_embd, config.vocab_size, config.n_head
    out = {"token_embedding.weight": lecture.get("token_embedding_table.weight", (V, C)),
           "position_embedding.weight": lecture.get("position_embedding_table.weight",
                                                    (config.block_size, C))}
    # lecture name in block i -> (fastgpt name in block i, shape)
    block_keys = {"ln1.weight": ("ln1.weight", (C,)), "ln1.bias": ("ln1.bias", (C,)),
                  "ln2.weight": ("ln2.weight", (C,)), "ln2.bias": ("ln2.bias", (C,)),
                  "sa.proj.weight": ("attn.proj.weight", (C, C)),
                  "sa.proj.bias": ("attn.proj.bias", (C,)),
                  "ffwd.net.0.weight": ("mlp.fc.weight", (4 * C, C)),
                  "ffwd.net.0.bias": ("mlp.fc.bias", (4 * C,)),
                  "ffwd.net.2.weight": ("mlp.proj.weight", (C, 4 * C)),
                  "ffwd.net.2.bias": ("mlp.proj.bias", (C,))}
    for i in range(config.n_layer):
        # fastgpt's qkv rows: all heads' queries, then keys, then values, head by head; head h's
        # rows are its Linear's weight (the lecture's Head(x) = x @ W.T for W of shape (C/H, C)).
        qkv = [lecture.get(f"blocks.{i}.sa.heads.{h}.{name}.weight", (C // H, C))
               for name in ("query", "key", "value") for h in range(H)]
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(qkv)  # (3C, C)
        for theirs, (ours, shape) in block_keys.items():
            out[f"blocks.{i}.{ours}"] = lecture.get(f"blocks.{i}.{theirs}", shape)
    for name, shape in {"ln_f.weight": (C,), "ln_f.bias": (C,), "lm_head.weight": (V, C),
                        "lm_head.bias": (V,)}.items():
        out[name] = lecture.get(name, shape)
    lecture.check_all_used()
    return out


def gpt_from_lecture(state: dict[str, Tensor], source: str = "the state_dict",
                     dropout: float = LECTURE_DROPOUT) -> GPT:
    """A fastgpt GPT with the weights of a lecture state_dict (in training mode, as a new module)."""
    config = lecture_config(state, source, dropout)
    model = GPT(config)
    model.load_state_dict(gpt_state_dict(state, config, source))
    return model


def load_lecture_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise UserError(f"no file at {path}; pass the path of a state_dict saved from the lecture's model")
    state = checkpoint.safe_torch_load(path, fix="save the model with torch.save(model.state_dict(), path)")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state_dict; save the model with "
                        f"torch.save(model.state_dict(), path)")
    for key, tensor in state.items():
        # the causal mask buffer (.tril) is not converted, whatever it holds
        problem = None if str(key).endswith(".tril") else tensor_problem(tensor)
        if problem:
            raise UserError(f"{path}: {key} {problem}; convert a state_dict saved from the "
                            f"lecture's trained model")
    return state


def tensor_problem(tensor: Tensor) -> Optional[str]:
    """Why a tensor cannot be a weight of the model, or None."""
    if tensor.layout != torch.strided:
        return f"is a {tensor.layout} tensor, not a dense one"
    if not tensor.is_floating_point():
        return f"holds {tensor.dtype} values, not floating point ones"
    if tensor.numel() == 0:
        return f"is empty (shape {tuple(tensor.shape)})"
    if not torch.isfinite(tensor).all():
        return "holds NaN or infinite values"
    return None


def convert(lecture_path: Path, vocab_path: Path, out_dir: Path) -> Path:
    """Write out_dir/best.pt from the lecture's state_dict and its training text; returns its path.
    best.pt is written atomically and is the only file (with fastgpt.files.LOCK): a killed convert
    leaves no best.pt, and its rerun converts again."""
    target = out_dir / checkpoint.BEST
    check_out_dir(out_dir, "--out")
    check_not_written(target)
    state = load_lecture_state_dict(lecture_path)
    model = gpt_from_lecture(state, str(lecture_path))
    tokenizer = CharTokenizer(scan(TextSource.file(vocab_path, "--vocab")).chars)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"{vocab_path} has {tokenizer.vocab_size} distinct characters but the "
                        f"model's vocabulary has {model.config.vocab_size}; pass the text the "
                        f"model was trained on with --vocab")
    with claim_out_dir(out_dir, "--out", "convert", (checkpoint.BEST,)):
        check_not_written(target)
        checkpoint.save(checkpoint.make(model, tokenizer), target)
    return target


def check_not_written(target: Path) -> None:
    if target.exists():
        raise UserError(f"{target} already exists; pass another --out directory")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Writes DIR/best.pt; refuses to overwrite one.")
    parser.add_argument("state_dict", type=Path, help="state_dict saved from the lecture's GPTLanguageModel")
    parser.add_argument("--vocab", type=Path, required=True,
                        help="the text the model was trained on (its sorted characters are the vocabulary)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the fastgpt checkpoint")
    args = parser.parse_args(argv)
    target = convert(args.state_dict, args.vocab, args.out)
    print(f"wrote {target}")


if __name__ == "__main__":
    run_cli(main)
