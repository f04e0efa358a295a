"""The text to train on: read in pieces, scanned (vocabulary, size, hash) and encoded to ids.

The default corpus is tiny Shakespeare, the lecture's text (public domain), shipped inside the
package gzip-compressed, so training needs no download; any other UTF-8 text comes with --data.
"""
import codecs
import gzip
import hashlib
import os
import sys
import time
import zlib
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from fastgpt.data.dataset import ids_dtype
from fastgpt.errors import UserError
from fastgpt.data.tokenizer import CharTokenizer

CORPUS_FILE = "tinyshakespeare.txt.gz"  # package data beside this module
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"  # of the text
# A file is read in pieces of 1 MiB: decoding one takes at most ~25 MB, whatever the size of the file.
CHUNK_BYTES = 1 << 20
MAX_CODE_POINT = 0x10FFFF
PROGRESS_AFTER = 2.0  # seconds of reading before a bar appears


# ---------------------------------------------------------------------------------------------
# The text
# ---------------------------------------------------------------------------------------------


def shakespeare_bytes() -> bytes:
    """Tiny Shakespeare's UTF-8 bytes from the package data, checked against its sha256 (a damaged
    install must not train on a damaged text)."""
    packaged = resources.files("fastgpt.data") / CORPUS_FILE
    try:
        raw = gzip.decompress(packaged.read_bytes())
    except (OSError, EOFError, zlib.error):  # missing, truncated, corrupted
        raw = b""
    if hashlib.sha256(raw).hexdigest() != CORPUS_SHA256:
        raise UserError(f"the packaged corpus {packaged} is missing or damaged; reinstall fastgpt-char "
                        f"or pass a UTF-8 text file with --data PATH")
    return raw


def shakespeare() -> str:
    return shakespeare_bytes().decode("utf-8")


class TextSource:
    """A UTF-8 text read in pieces of CHUNK_BYTES, as often as needed: a file given by a flag
    (`option`, named in its errors), or bytes already in memory (the packaged corpus)."""

    def __init__(self, name: str, size: int, read: Callable[[], Iterator[bytes]], option: str):
        self.name, self.size, self._read, self.option = name, size, read, option

    @classmethod
    def file(cls, path: str | os.PathLike, option: str = "--data") -> "TextSource":
        path = Path(path)
        fix = f"pass a UTF-8 text file with {option}"
        if not path.exists():
            raise UserError(f"data file {path} does not exist; {fix}")
        if not path.is_file():
            raise UserError(f"data path {path} is not a file; {fix}")
        size = path.stat().st_size
        if size == 0:
            raise UserError(f"data file {path} is empty; {fix}")

        def read() -> Iterator[bytes]:
            try:
                with open(path, "rb") as f:
                    while piece := f.read(CHUNK_BYTES):
                        yield piece
            except OSError as e:
                raise UserError(f"cannot read data file {path} ({e.strerror}); {fix}") from None
        return cls(str(path), size, read, option)

    @classmethod
    def packaged(cls) -> "TextSource":
        raw = shakespeare_bytes()
        return cls("tiny Shakespeare", len(raw), lambda: iter((raw,)), "--data")

    def code_points(self, *observers: Callable[[bytes], None]) -> Iterator[bytes | np.ndarray]:
        """The text's code points, a piece at a time: a piece of ASCII as its bytes (no decoding;
        each byte is its code point), others as a uint32 array; a character cut between two pieces
        is decoded whole, in the later one.
        Each observer sees every raw piece (the hash, the progress bar)."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0  # of the piece being decoded, in the file
        for piece in self._read():
            for observe in observers:
                observe(piece)
            held = len(decoder.getstate()[0])  # bytes of a character the last piece cut
            if not held and piece.isascii():
                yield piece
            else:
                text = self._decode(decoder, piece, offset - held)
                yield np.frombuffer(text.encode("utf-32-le"), "<u4")
            offset += len(piece)
        self._decode(decoder, b"", offset - len(decoder.getstate()[0]), final=True)

    def _decode(self, decoder, piece: bytes, start: int, final: bool = False) -> str:
        try:
            return decoder.decode(piece, final=final)
        except UnicodeDecodeError as e:
            raise UserError(f"data file {self.name} is not UTF-8 text (invalid byte at offset "
                            f"{start + e.start}); convert it to UTF-8 or pass another file with "
                            f"{self.option}") from None


# ---------------------------------------------------------------------------------------------
# Encoding with the character tokenizer, in bounded memory
# ---------------------------------------------------------------------------------------------


class Scan(NamedTuple):
    chars: str  # the distinct characters, sorted (the char vocabulary)
    n_chars: int
    sha256: str  # of the UTF-8 bytes: the checkpoint's data_sha256


def scan(source: TextSource, progress: Optional["ReadProgress"] = None) -> Scan:
    """One pass over the text: its vocabulary, length and hash, in the memory of one piece."""
    seen = np.zeros(MAX_CODE_POINT + 1, dtype=bool)
    ascii_seen = b""
    digest, n_chars = hashlib.sha256(), 0
    observers = (digest.update,) if progress is None else (digest.update, progress.update)
    for code_points in source.code_points(*observers):
        if isinstance(code_points, bytes):
            ascii_seen = with_new_bytes(ascii_seen, code_points)
        else:
            counts = np.bincount(code_points)
            seen[:len(counts)] |= counts > 0
        n_chars += len(code_points)
    seen[list(ascii_seen)] = True
    return Scan("".join(map(chr, np.flatnonzero(seen))), n_chars, digest.hexdigest())


def with_new_bytes(seen: bytes, piece: bytes) -> bytes:
    """`seen` and the byte values of `piece` it lacks. bytes.translate deletes the known ones at
    memory speed; what is left is new, looked at a few thousand bytes at a time."""
    while rest := piece.translate(None, seen):
        seen += bytes(set(rest[:4096]))
        piece = rest
    return seen


def encode_chars(source: TextSource, tokenizer: Optional[CharTokenizer] = None,
                 sha256: Optional[str] = None, show_progress: bool = False
                 ) -> tuple[Tensor, CharTokenizer, str]:
    """(ids, tokenizer, sha256) of a text of any size: two streaming passes, the second writing
    one id per character (uint8 for up to 256 characters, else uint16 or uint32) into an array
    checked to fit in memory first. A resumed run passes the vocabulary and the hash it keeps."""
    check_ids_fit(source, source.size // 4, 1, exact=False)  # a UTF-8 character is 1 to 4 bytes
    progress = ReadProgress(source, show_progress)
    found = scan(source, progress)
    if sha256 not in (None, found.sha256):
        raise UserError(f"{source.name} differs from the data the checkpoint was trained on; resume "
                        f"with the same {source.option} the run started with")
    if tokenizer is None:
        tokenizer = CharTokenizer(found.chars)
    missing = [ch for ch in found.chars if ch not in tokenizer.stoi]
    if missing:
        raise UserError(f"the data has characters outside the checkpoint's vocabulary "
                        f"({''.join(missing[:20])!r}); resume with the data the run started with")
    dtype = np.dtype(np.uint8) if tokenizer.vocab_size <= 256 else ids_dtype(tokenizer.vocab_size)
    check_ids_fit(source, found.n_chars, dtype.itemsize, exact=True)
    table = tokenizer.id_table(dtype)
    # an ASCII piece's ids by bytes.translate (several times numpy's gather) where ids are bytes
    byte_table = bytes(table[:256]).ljust(256, b"\0") if dtype == np.uint8 else None
    ids, start = np.empty(found.n_chars, dtype), 0
    for code_points in source.code_points(progress.update):
        end = start + len(code_points)
        if isinstance(code_points, bytes):
            ids[start:end] = (np.frombuffer(code_points.translate(byte_table), np.uint8) if byte_table
                              else table[np.frombuffer(code_points, np.uint8)])
        else:
            ids[start:end] = table[code_points]
        start = end
    progress.close()
    return torch.from_numpy(ids), tokenizer, found.sha256


def available_memory() -> Optional[int]:
    """Bytes the machine can still give this process without swapping, where the OS says."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return None


def check_ids_fit(source: TextSource, n_chars: int, itemsize: int, exact: bool) -> None:
    """A UserError, naming `fastgpt prepare`, when the ids would take more than half the memory
    left: training needs the rest. Checked on the file's size before reading it, then exactly."""
    available = available_memory()
    needed = n_chars * itemsize
    if available is None or needed <= available // 2:
        return
    dataset = f"{Path(source.name).stem}-dataset"
    raise UserError(f"{source.name} has {'' if exact else 'at least '}"
                    f"{n_chars:,} characters, whose ids need {needed / 2**30:,.1f} GiB, more than half "
                    f"of the {available / 2**30:,.1f} GiB of memory available; prepare it once into a "
                    f"memory-mapped dataset with `python -m fastgpt.prepare --data {source.name} --out "
                    f"{dataset}` and train with --dataset {dataset}")


class ReadProgress:
    """What reading a large text shows: a tqdm bar over its bytes on a terminal, once it has taken
    PROGRESS_AFTER seconds; elsewhere (a log file) one line at the end, if it took that long."""

    def __init__(self, source: TextSource, enabled: bool):
        self.source, self.enabled = source, enabled
        self.started = time.perf_counter()
        self.bar = tqdm(total=2 * source.size, desc=f"reading {source.name}", unit="B", unit_scale=True,
                        delay=PROGRESS_AFTER, leave=False,
                        disable=not (enabled and sys.stderr.isatty()))

    def update(self, piece: bytes) -> None:
        self.bar.update(len(piece))

    def close(self) -> None:
        self.bar.close()
        elapsed = time.perf_counter() - self.started
        if self.enabled and self.bar.disable and elapsed > PROGRESS_AFTER:
            print(f"read {self.source.name} ({self.source.size / 1e6:,.0f} MB) in {elapsed:.1f} s",
                  flush=True)
