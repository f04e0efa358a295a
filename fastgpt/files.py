"""How fastgpt writes files: atomically, with the user's umask, and only into an output directory
that it may write.

The output directory rule (train --out-dir, prepare --out, convert --out):
- the directory is new, or it is fastgpt's: it holds the marker LOCK (every tool writes it before
  anything else), or one of the tool's `proof` files (runs written before the marker existed);
  in any other directory a file with the name of one the tool writes is a user's file, and the
  tool refuses, naming it, instead of replacing it;
- one process at a time: the tool holds an exclusive lock (flock) on LOCK while it writes; the
  OS releases it when the process ends, however it ends; a second process is refused, naming the
  holder;
- temporary files (`.NAME.*.tmp`) that a killed process left are removed when a tool next claims
  the directory. Which finished files make a directory resumable is each tool's rule.

A disk that fills up during a write is one line (DiskFull) naming the file, the space it needs and
the space free; an atomic write then leaves the old file and no temporary one.
"""
import errno
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from fastgpt.errors import UserError

LOCK = ".fastgpt.lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DiskFull(UserError):
    """No space left to write `path`: it needs at least `needed` bytes. The message ends in `then`,
    what the tool that wrote it lets the user do once there is space."""

    def __init__(self, path: Path, needed: int, then: str = "run the command again"):
        self.path, self.needed = Path(path), needed
        free = shutil.disk_usage(self.path.parent).free
        more = f"{_size(needed - free)} more" if needed > free else "some space"  # needed: a lower bound
        super().__init__(f"the disk is full: writing {path} needs at least {_size(needed)} and "
                         f"{_size(free)} is free there; free {more} and {then}")


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 10**5 else f"{n / 1e6:,.1f} MB"


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` comes from a full disk (or quota), also when a library raised another
    exception over it (torch.save raises a RuntimeError whose context is the OSError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def atomic_write(path: str | os.PathLike, size: int = 0) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into. It is a temporary file in the same
    directory, fsynced and renamed over `path` when the block ends; if the block raises the
    temporary file goes and `path` keeps its old content (if the process dies, the next
    `claim_out_dir` of the directory removes it). A full disk is a DiskFull, needing `size`
    (what the caller expects to write), or what was written and what the file replaces if more."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if is_disk_full(e):  # not even room for an empty file
            raise DiskFull(path, size) from None
        raise
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; a file is the umask's, as open's
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(e):
            replaced = path.stat().st_size if path.exists() else 0
            raise DiskFull(path, max(size, written, replaced)) from None
        raise


def check_out_dir(directory: Path, option: str) -> None:
    """A UserError unless `directory` is a directory this process can write, or can be made one.
    Reads only: a tool calls it at start-up, before any work."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{option} {directory} is a file, not a directory; pass a directory")
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {directory} cannot be made: {existing} is a file; pass another "
                        f"{option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {directory}: no permission to write in {existing}; pass a "
                        f"directory you can write")


def is_fastgpt_dir(directory: Path, proof: Iterable[str] = ()) -> bool:
    return any((directory / name).exists() for name in (LOCK, *proof))


def check_not_users(directory: Path, option: str, writes: Iterable[str], proof: Iterable[str] = ()) -> None:
    """A UserError naming a file the tool would replace in a directory fastgpt did not write."""
    if is_fastgpt_dir(directory, proof):
        return
    for name in writes:
        if (directory / name).exists():
            raise UserError(f"{directory / name} is in the way: {directory} was not written by "
                            f"fastgpt, so its files are not replaced; move the file or pass "
                            f"another {option}")


@contextmanager
def claim_out_dir(directory: Path, option: str, tool: str, writes: Iterable[str],
                  proof: Iterable[str] = ()) -> Iterator[None]:
    """Hold `directory` for writing: checked (check_out_dir, check_not_users), made, locked
    against other fastgpt processes (released when the block ends or the process dies), and
    cleared of the temporary files a killed process left. Inside the block the tool re-checks
    what it found before, now that no other process can change it."""
    writes = tuple(writes)
    check_out_dir(directory, option)
    check_not_users(directory, option, writes, proof)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot write in {option} {directory} ({e.strerror}); pass a directory "
                        f"you can write") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise UserError(f"{directory} is in use by another fastgpt process ({holder}); wait "
                            f"for it to end or pass another {option}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, fastgpt {tool}\n".encode(), 0)
        for leftover in directory.glob(".*.tmp"):
            if any(leftover.name.startswith(f".{name}.") for name in writes):
                leftover.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the lock
