"""Training data: the text, its 90 % / 10 % train/val split, and random batches of windows.

The default corpus is tiny Shakespeare, looked up as `tinyshakespeare.txt` in the data directory
($FASTGPT_DATA_DIR, else ~/.cache/fastgpt) and downloaded there on first use from the lecture's
address, checked against its sha256 and written atomically. Any UTF-8 text works with --data.
"""
import hashlib
import math
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from fastgpt.cli import UserError
from fastgpt.files import atomic_write

CORPUS_NAME = "tinyshakespeare.txt"
CORPUS_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# Environment variables: where the corpus lives, and where it is downloaded from (tests, mirrors).
DATA_DIR_ENV = "FASTGPT_DATA_DIR"
CORPUS_URL_ENV = "FASTGPT_CORPUS_URL"
TRAIN_FRACTION = 0.9


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """$FASTGPT_DATA_DIR, else the user cache directory ($XDG_CACHE_HOME or ~/.cache)/fastgpt."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fastgpt"


def default_corpus(url: Optional[str] = None) -> Path:
    """The path of tiny Shakespeare in the data directory, downloaded there if it is not yet."""
    path = data_dir() / CORPUS_NAME
    if not path.is_file():
        download(url or os.environ.get(CORPUS_URL_ENV) or CORPUS_URL, path, CORPUS_SHA256)
    return path


def download(url: str, path: Path, sha256: str) -> None:
    """Fetch `url` into `path` if its content has this sha256; otherwise leave `path` untouched."""
    print(f"downloading {url} -> {path}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            content = response.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot download the tiny Shakespeare corpus from {url} ({reason}); "
                        f"pass a UTF-8 text file with --data PATH") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != sha256:
        raise UserError(f"the file downloaded from {url} has sha256 {digest}, not {sha256}; "
                        f"nothing was saved: try again later or pass a text file with --data PATH")
    try:
        with atomic_write(path) as f:
            f.write(content)
    except OSError as e:
        raise UserError(f"cannot save the corpus in {path.parent} ({e.strerror}); set {DATA_DIR_ENV} "
                        f"to a writable directory or pass --data PATH") from None


def read_text(path: str | os.PathLike, option: str = "--data") -> str:
    """The text of a UTF-8 file, or a UserError saying what is wrong with it (`option` is the flag
    that named it)."""
    path = Path(path)
    fix = f"pass a UTF-8 text file with {option}"
    if not path.exists():
        raise UserError(f"data file {path} does not exist; {fix}")
    if not path.is_file():
        raise UserError(f"data path {path} is not a file; {fix}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read data file {path} ({e.strerror}); {fix}") from None
    if not raw:
        raise UserError(f"data file {path} is empty; {fix}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path} is not UTF-8 text (invalid byte at offset {e.start}); "
                        f"convert it to UTF-8 or pass another file with {option}") from None


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Split and batches
# ---------------------------------------------------------------------------------------------


def split(ids: Tensor, block_size: int, train_fraction: float = TRAIN_FRACTION) -> dict[str, Tensor]:
    """The first 90 % of the token ids for training, the rest for validation (as the lecture).
    Each split must hold at least one window of block_size + 1 tokens (input and target)."""
    n_train = int(train_fraction * len(ids))
    splits = {"train": ids[:n_train], "val": ids[n_train:]}
    if min(len(s) for s in splits.values()) < block_size + 1:
        # val, the smaller split, has n - floor(0.9 n) tokens: block_size + 1 once n > 10 block_size
        needed = math.floor(block_size / (1 - train_fraction)) + 1
        raise UserError(f"the text has {len(ids)} tokens, too short for block_size {block_size}: "
                        f"each split needs block_size + 1 tokens, so the text needs at least "
                        f"{needed}; use a longer text or a smaller --block-size")
    return splits


class RandomBatches:
    """Random windows of the train and val splits, drawn from a seeded generator.

    Training batches come from one generator whose state goes into every checkpoint, so a resumed
    run draws the same batches; evaluation batches come from a generator seeded afresh at each
    evaluation, so every evaluation scores the same windows and never moves the training draws.

    Data-parallel runs: every process draws the starts of the whole global batch (world_size ×
    batch_size windows) from the same seeded stream and keeps the share of its rank, so the
    processes see different windows, reproducibly, and together exactly those that one process
    with the global batch would see. Splits may hold any integer dtype (uint16 memory maps).
    """

    def __init__(self, splits: dict[str, Tensor], block_size: int, batch_size: int, seed: int,
                 device: torch.device, rank: int = 0, world_size: int = 1):
        self.splits = splits
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, split: str, generator: Optional[torch.Generator] = None,
              whole: bool = False) -> tuple[Tensor, Tensor]:
        """(x, y), each (batch_size, block_size) on the device, y is x shifted by one token: this
        process's share of the global batch, or with `whole` all world_size × batch_size rows."""
        data = self.splits[split]
        starts = torch.randint(len(data) - self.block_size, (self.world_size * self.batch_size,),
                               generator=generator or self.generator)
        if not whole:
            starts = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        positions = starts[:, None] + torch.arange(self.block_size)  # (rows, block_size)
        x, y = data[positions].long(), data[positions + 1].long()
        if self.device.type == "cuda":
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)

    def eval_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + 1)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
