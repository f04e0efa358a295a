"""Tokenize a text file of any size into a memory-mapped dataset (see fastgpt.data.dataset):

    python -m fastgpt.prepare --data PATH --tokenizer char|bpe [--vocab-size N] --out DIR

The text is streamed in pieces of CHUNK_CHARS characters (read in text mode, so a multi-byte
character is never cut; newlines kept as they are, as `--data` reads them);
memory stays bounded by the piece size, the character vocabulary and BPE's word counts, never by
the file. Passes over the file: the character count, vocabulary and sha256 (fastgpt.data.text.scan); BPE
training on the train split (bpe only); encoding both splits into train.bin / val.bin. The split
is by characters, the first 90 % train, as in the in-memory path.
"""
import argparse
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fastgpt.data.batches import TRAIN_FRACTION

from fastgpt.data.text import TextSource, scan
from fastgpt.data.dataset import META, SPLITS, ids_dtype, split_path, write_meta
from fastgpt.cli import run_cli
from fastgpt.errors import UserError
from fastgpt.files import atomic_write, check_not_users, check_out_dir, claim_out_dir
from fastgpt.data.tokenizer import BPETokenizer, CharTokenizer

# Small pieces keep memory flat: HF tokenizers' per-call buffers grow with the piece (a 1M-character
# piece costs hundreds of MB in encode and train), and 64K characters is as fast.
CHUNK_CHARS = 1 << 16
DEFAULT_BPE_VOCAB = 512
# A BPE piece with no word boundary grows to this many chunks before it is cut regardless.
MAX_PIECE_CHUNKS = 64
MAX_VOCAB = 2**32  # ids are stored as uint32 at most
# What prepare writes into --out; meta.json last (fastgpt.data.dataset.write_meta): a directory without
# it is an unfinished dataset, which a rerun of the command replaces.
FILES = (*(f"{split}.bin" for split in SPLITS), META)


def read_chunks(path: Path, chunk_chars: int) -> Iterator[str]:
    """The file's text in pieces of at most `chunk_chars` characters."""
    try:
        with open(path, encoding="utf-8", newline="") as f:  # newlines untouched, as --data reads them
            while chunk := f.read(chunk_chars):
                yield chunk
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason}); convert it to UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); pass a readable UTF-8 file with "
                        f"--data") from None


def read_range(path: Path, start: int, stop: int, chunk_chars: int) -> Iterator[str]:
    """Characters [start, stop) of the file, in pieces of at most `chunk_chars`."""
    pos = 0
    for chunk in read_chunks(path, chunk_chars):
        lo, hi = max(start - pos, 0), min(stop - pos, len(chunk))
        if lo < hi:
            yield chunk[lo:hi]
        pos += len(chunk)
        if pos >= stop:
            return


def last_word_boundary(text: str) -> int:
    """The last index i where a non-space character is followed by a space or newline, else 0.
    No pre-token of the byte-level BPE (GPT-2's pattern) spans such a point, so text cut there
    encodes to the same ids in two pieces as in one."""
    for i in range(len(text) - 1, 0, -1):
        if text[i] in " \n" and not text[i - 1].isspace():
            return i
    return 0


def word_aligned(pieces: Iterable[str], max_chars: int) -> Iterator[str]:
    """The same text re-cut at word boundaries. A stretch of more than `max_chars` characters
    without one is cut where it is: its ids may then differ from whole-text encoding at that cut,
    but they still decode to the same text."""
    carry = ""
    for piece in pieces:
        text = carry + piece
        cut = last_word_boundary(text) or (len(text) if len(text) >= max_chars else 0)
        carry = text[cut:]
        if cut:
            yield text[:cut]
    if carry:
        yield carry


def write_ids(path: Path, arrays: Iterable[np.ndarray], size: int = 0) -> int:
    """Write id arrays, one after the other, into `path`, atomically (a kill or a full disk leaves
    no partial file); the number of ids written. `size`: the bytes expected, when known."""
    n = 0
    with atomic_write(path, size) as f:
        for ids in arrays:
            f.write(ids.tobytes())  # not tofile: its error on a full disk has no errno
            n += len(ids)
    return n


def prepare(data: Path, tokenizer_kind: str, out: Path, vocab_size: int = DEFAULT_BPE_VOCAB,
            chunk_chars: int = CHUNK_CHARS) -> dict:
    """Write train.bin, val.bin and meta.json of `data` into `out`; returns the meta."""
    data, out = Path(data), Path(out)
    source = TextSource.file(data)
    check_out_dir(out, "--out")
    check_finished(out)
    check_not_users(out, "--out", FILES)
    chars, n_chars, sha256 = scan(source)
    if n_chars < 2:
        raise UserError(f"{data} has {n_chars} characters, too few to split into train and val; "
                        f"pass a longer text")
    n_train = int(TRAIN_FRACTION * n_chars)
    bounds = {"train": (0, n_train), "val": (n_train, n_chars)}

    def split_text(split: str) -> Iterator[str]:
        return read_range(data, *bounds[split], chunk_chars)

    if tokenizer_kind == "char":
        tokenizer = CharTokenizer(chars)
        table = tokenizer.id_table(ids_dtype(tokenizer.vocab_size))

        def encode(split):
            return (table[np.frombuffer(text.encode("utf-32-le"), "<u4")] for text in split_text(split))
    else:
        tokenizer = BPETokenizer.train(split_text("train"), vocab_size)
        dtype = ids_dtype(tokenizer.vocab_size)

        def encode(split):
            pieces = word_aligned(split_text(split), MAX_PIECE_CHUNKS * chunk_chars)
            return (np.asarray(tokenizer.encode(piece), dtype=dtype) for piece in pieces)

    with claim_out_dir(out, "--out", "prepare", FILES):
        check_finished(out)
        counts = {}
        for split in SPLITS:
            chars = bounds[split][1] - bounds[split][0]
            # one id per character for char; BPE's count is known only once it is written
            expected = chars * ids_dtype(tokenizer.vocab_size).itemsize if tokenizer_kind == "char" else 0
            counts[split] = {"tokens": write_ids(split_path(out, split), encode(split), expected),
                             "chars": chars}
        meta = {"tokenizer": tokenizer.state_dict(), "vocab_size": tokenizer.vocab_size,
                "dtype": ids_dtype(tokenizer.vocab_size).name,
                "source": {"path": str(data.resolve()), "bytes": data.stat().st_size,
                           "sha256": sha256},
                **counts}
        write_meta(out, meta)
    return meta


def check_finished(out: Path) -> None:
    if (out / META).exists():
        raise UserError(f"{out} already holds a dataset; pass another --out or delete {out} first")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="UTF-8 text file, of any size")
    parser.add_argument("--tokenizer", choices=("char", "bpe"), default="char",
                        help="characters (the lecture) or a byte-level BPE trained on the train split")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help=f"BPE vocabulary size, at least 256 (default {DEFAULT_BPE_VOCAB})")
    parser.add_argument("--out", required=True, help="directory to write train.bin, val.bin, meta.json")
    args = parser.parse_args(argv)
    if args.vocab_size is not None and args.tokenizer != "bpe":
        raise UserError("--vocab-size applies to --tokenizer bpe; the char vocabulary is the text's characters")
    vocab_size = DEFAULT_BPE_VOCAB if args.vocab_size is None else args.vocab_size
    if vocab_size < 256:
        raise UserError(f"--vocab-size {vocab_size} is below the 256 bytes a byte-level BPE starts "
                        f"from; pass 256 or more")
    if vocab_size > MAX_VOCAB:
        raise UserError(f"--vocab-size {vocab_size} is above {MAX_VOCAB}, the most ids a dataset "
                        f"stores; pass a smaller one")
    meta = prepare(Path(args.data), args.tokenizer, Path(args.out), vocab_size)
    print(f"{args.out}: {meta['vocab_size']} {args.tokenizer} tokens ({meta['dtype']}), "
          + ", ".join(f"{s} {meta[s]['tokens']:,} tokens / {meta[s]['chars']:,} chars" for s in SPLITS))


if __name__ == "__main__":
    run_cli(main)
