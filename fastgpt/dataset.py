"""A prepared dataset (`python -m fastgpt.prepare`): token ids on disk, read through np.memmap, so a
corpus larger than memory is never loaded whole.

A dataset directory holds
  train.bin, val.bin   the token ids of the first 90 % / last 10 % of the text's characters, as
                       little-endian uint16 (uint32 when the vocabulary has more than 65536 tokens)
  meta.json            format, version, tokenizer (its state_dict), vocab_size, dtype, the source
                       file's path, size and sha256, and per split the number of tokens and
                       characters (for bits per character)
"""
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastgpt.errors import UserError
from fastgpt.tokenizer import tokenizer_from_state_dict

FORMAT = "fastgpt-dataset"
VERSION = 1
META = "meta.json"
SPLITS = ("train", "val")


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id of the vocabulary."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def split_path(directory: str | os.PathLike, split: str) -> Path:
    return Path(directory) / f"{split}.bin"


def write_meta(directory: str | os.PathLike, meta: dict) -> None:
    """meta.json, written atomically (temporary file + rename): it is what makes a directory a
    dataset, so it appears last and whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{META}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a dataset is for every reader
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "version": VERSION, **meta}, f, indent=1)
        os.replace(tmp, Path(directory) / META)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def read_meta(directory: str | os.PathLike) -> dict:
    """meta.json of a dataset directory, checked against its .bin files; a UserError otherwise."""
    directory = Path(directory)
    path = directory / META
    remedy = f"prepare the dataset again with `python -m fastgpt.prepare --data TEXT --out {directory}`"
    if not path.is_file():
        raise UserError(f"{directory} is not a prepared dataset (no {META}); {remedy}")
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
                        f"{str(e).splitlines()[0] if str(e) else ''}); {remedy}") from None
    for split in SPLITS:
        bin_path = split_path(directory, split)
        expected = meta[split]["tokens"] * np.dtype(meta["dtype"]).itemsize
        size = bin_path.stat().st_size if bin_path.is_file() else None
        if size != expected:
            found = "is missing" if size is None else f"has {size} bytes"
            raise UserError(f"{bin_path} {found} but {META} says {meta[split]['tokens']} "
                            f"{meta['dtype']} tokens ({expected} bytes); {remedy}")
    return meta


class MemmapDataset:
    """The splits of a prepared dataset, memory-mapped, and the tokenizer they were encoded with."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.meta = read_meta(directory)
        self.tokenizer = tokenizer_from_state_dict(self.meta["tokenizer"])
        self.data = {split: np.memmap(split_path(directory, split), dtype=self.meta["dtype"], mode="r")
                     if self.meta[split]["tokens"] else np.empty(0, self.meta["dtype"])
                     for split in SPLITS}

    def check_block_size(self, block_size: int) -> None:
        for split in SPLITS:
            if len(self.data[split]) < block_size + 1:
                raise UserError(f"the {split} split of {self.directory} has {len(self.data[split])} "
                                f"tokens, fewer than block_size + 1 = {block_size + 1}; pass a "
                                f"smaller --block-size or prepare a longer text")

    def windows(self, split: str, starts: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
        """Inputs x and targets y (len(starts), block_size) int64 from the windows at `starts`."""
        data = self.data[split]
        rows = np.stack([data[i:i + block_size + 1] for i in starts.tolist()]).astype(np.int64)
        w = torch.from_numpy(rows)  # (B, block_size + 1)
        return w[:, :-1], w[:, 1:]

    def random_starts(self, split: str, n: int, block_size: int, generator: torch.Generator) -> Tensor:
        """`n` window starts drawn uniformly, as the lecture's get_batch draws them."""
        return torch.randint(len(self.data[split]) - block_size, (n,), generator=generator)

    def bits_per_char(self, split: str, loss: float) -> float:
        """A mean cross-entropy in nats per token as bits per character of the text, comparable
        across tokenizers: loss · tokens / chars / ln 2."""
        return loss * self.meta[split]["tokens"] / self.meta[split]["chars"] / math.log(2)
