"""A prepared dataset (`python -m fastgpt.prepare`): token ids on disk, read through np.memmap, so a
corpus larger than memory is never loaded whole.

A dataset directory holds
  train.bin, val.bin   the token ids of the first 90 % / last 10 % of the text's characters, as
                       little-endian uint16 (uint32 when the vocabulary has more than 65536 tokens)
  meta.json            format, version, tokenizer (its state_dict), vocab_size, dtype, the source
                       file's path, size and sha256, and per split the number of tokens and
                       characters (for bits per character)

Opening a dataset checks it, so that a damaged or mixed-up one is refused before training rather
than failing when a batch happens to touch a bad id: meta.json parses and agrees with itself, both
.bin files are there with the size its token counts and dtype give, and every id is within the
vocabulary (one pass over the ids; its cost per GB is in docs/data.md).
"""
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastgpt.errors import UserError
from fastgpt.files import atomic_write
from fastgpt.data.tokenizer import tokenizer_from_state_dict

FORMAT = "fastgpt-dataset"
VERSION = 1
META = "meta.json"
SPLITS = ("train", "val")
# Ids per np.max when a dataset is opened (64 MB of uint16): the check's memory stays flat.
CHECK_CHUNK = 1 << 25


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id of the vocabulary."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def split_path(directory: str | os.PathLike, split: str) -> Path:
    return Path(directory) / f"{split}.bin"


def write_meta(directory: str | os.PathLike, meta: dict) -> None:
    """meta.json, written atomically: it is what makes a directory a dataset, so it appears last
    and whole."""
    with atomic_write(Path(directory) / META) as f:
        f.write(json.dumps({"format": FORMAT, "version": VERSION, **meta}, indent=1).encode("utf-8"))


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _remedy(directory: Path) -> str:
    return f"prepare the dataset again with `python -m fastgpt.prepare --data TEXT --out {directory}`"


def read_meta(directory: str | os.PathLike) -> dict:
    """meta.json of a dataset directory, checked against its .bin files; a UserError otherwise."""
    directory = Path(directory)
    path = directory / META
    if not path.is_file():
        raise UserError(f"{directory} is not a prepared dataset (no {META}); {_remedy(directory)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        _check(meta["format"] == FORMAT and meta["version"] == VERSION, "not a version 1 dataset")
        tokenizer = tokenizer_from_state_dict(meta["tokenizer"])
        _check(tokenizer.vocab_size == meta["vocab_size"], "vocab_size disagrees with the tokenizer")
        _check(np.dtype(meta["dtype"]) == ids_dtype(meta["vocab_size"]), "wrong dtype for the vocabulary")
        counts = [meta[s][count] for s in SPLITS for count in ("tokens", "chars")]
        _check(all(isinstance(n, int) and n >= 0 for n in counts), "token or character counts")
    except Exception as e:  # whatever a damaged file makes json, tokenizers or numpy raise
        raise UserError(f"{path} is corrupt or not a fastgpt dataset ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); {_remedy(directory)}") from None
    for split in SPLITS:
        bin_path = split_path(directory, split)
        expected = meta[split]["tokens"] * np.dtype(meta["dtype"]).itemsize
        size = bin_path.stat().st_size if bin_path.is_file() else None
        if size != expected:
            found = "is missing" if size is None else f"has {size} bytes"
            raise UserError(f"{bin_path} {found} but {META} says {meta[split]['tokens']} "
                            f"{meta['dtype']} tokens ({expected} bytes); {_remedy(directory)}")
    return meta


def check_ids(path: Path, ids: np.ndarray, vocab_size: int) -> None:
    """Every id below vocab_size, checked in chunks of CHECK_CHUNK ids."""
    for start in range(0, len(ids), CHECK_CHUNK):
        top = int(ids[start:start + CHECK_CHUNK].max())
        if top >= vocab_size:
            raise UserError(f"{path} holds token id {top}, outside the {vocab_size}-token vocabulary "
                            f"of its {META} (damaged, or from another dataset); "
                            f"{_remedy(path.parent)}")


def bits_per_char(loss: float, chars_per_token: float) -> float:
    """A mean cross-entropy in nats per token as bits per character of the text, comparable across
    tokenizers: loss / (chars per token) / ln 2."""
    return loss / chars_per_token / math.log(2)


class MemmapDataset:
    """The splits of a prepared dataset as uint16/uint32 tensors over np.memmap (pages are read
    when a batch touches them), and the tokenizer they were encoded with."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.meta = read_meta(directory)
        self.tokenizer = tokenizer_from_state_dict(self.meta["tokenizer"])
        self.splits = {split: self._map(split) for split in SPLITS}

    def _map(self, split: str) -> Tensor:
        if self.meta[split]["tokens"] == 0:  # np.memmap cannot map an empty file
            return torch.empty(0, dtype=torch.int64)
        path = split_path(self.directory, split)
        # Copy-on-write, so the array is writable for torch.from_numpy; nothing ever writes it.
        ids = np.memmap(path, dtype=self.meta["dtype"], mode="c")
        check_ids(path, ids, self.meta["vocab_size"])
        return torch.from_numpy(ids)

    def check_block_size(self, block_size: int) -> None:
        for split in SPLITS:
            if len(self.splits[split]) < block_size + 1:
                raise UserError(f"the {split} split of {self.directory} has {len(self.splits[split])} "
                                f"tokens, fewer than block_size + 1 = {block_size + 1}; pass a "
                                f"smaller --block-size or prepare a longer text")

    def chars_per_token(self, split: str) -> float:
        return self.meta[split]["chars"] / max(1, self.meta[split]["tokens"])
