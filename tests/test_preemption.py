"""A run stopped by its platform keeps its work (issue 22): SIGTERM and SIGINT stop a run after its
step with a checkpoint of that step, from which --resume continues bit for bit, also under
torchrun; a full disk is one line that leaves the previous checkpoint and no temporary file; a
damaged prepared dataset is refused when it is opened. The signals are real ones, sent to real
processes (a subprocess, or this one); the guarantees are listed in docs/training.md."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from clitools import SMALL_TEXT, TINY_RUN, assert_refused, run_tool
from fastgpt import checkpoint, prepare, train
from fastgpt.training import metrics
from fastgpt.errors import UserError
from fastgpt.data.dataset import MemmapDataset

# Evaluations at 0, 20 and 40 only, a log line every step (the tests wait for one).
RUN = [*TINY_RUN, "--sample-chars", "0", "--eval-interval", "20", "--log-interval", "1",
       "--max-iters", "40"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # bit-for-bit needs one thread count for every run


def command(data, out_dir, *flags) -> list[str]:
    return [sys.executable, "-m", "fastgpt.train", *RUN, "--data", str(data), "--out-dir",
            str(out_dir), *flags]


def losses(out_dir: Path) -> dict[int, tuple[float, float]]:
    return {row["iter"]: (row["train_loss"], row["val_loss"])
            for row in metrics.read_metrics(out_dir / metrics.METRICS)}


def assert_same_state(a: Path, b: Path) -> None:
    """last.pt of both runs: the same step, weights, optimizer state and random state, bit for bit."""
    ca, cb = (checkpoint.load_checkpoint(d / checkpoint.LAST) for d in (a, b))
    assert ca["iter"] == cb["iter"]
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for i, state in ca["optimizer"]["state"].items():
        for name in state:
            assert torch.equal(state[name], cb["optimizer"]["state"][i][name]), (i, name)
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    assert torch.equal(ca["rng"]["batches"]["generator"], cb["rng"]["batches"]["generator"])


def no_temporary_files(out_dir: Path) -> bool:
    return not list(out_dir.glob(".*.tmp"))


def signal_after_step(process: subprocess.Popen, step: int, sig: int) -> float:
    """Send `sig` once the run has logged `step` (its stdout); the time it was sent."""
    for line in process.stdout:
        if line.startswith(f"step {step}/"):
            process.send_signal(sig)
            return time.monotonic()
    raise AssertionError(f"the run ended before step {step}: {process.wait()}")


# --- 1. SIGTERM and SIGINT stop a run cleanly, keeping its work ---------------------------------


def test_sigterm_saves_the_step_and_resume_continues_bit_for_bit(tmp_path, data):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    subprocess.run(command(data, whole), env=ENV, check=True, capture_output=True)
    process = subprocess.Popen(command(data, stopped), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    sent = signal_after_step(process, 3, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10  # a scheduler's grace period is 10 to 30 s
    assert process.returncode == 128 + signal.SIGTERM, err
    step = checkpoint.load_checkpoint(stopped / checkpoint.LAST)["iter"]
    assert 3 <= step < 20  # between two evaluations
    assert err.strip().splitlines() == [
        f"stopped by SIGTERM after step {step} of 40, saved in {stopped / checkpoint.LAST}; resume "
        f"with `python -m fastgpt.train --resume --out-dir {stopped}`"]
    assert no_temporary_files(stopped)
    resumed = subprocess.run([sys.executable, "-m", "fastgpt.train", "--resume", "--out-dir",
                              str(stopped)], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(stopped) == losses(whole) and list(losses(whole)) == [0, 20, 40]
    assert_same_state(whole, stopped)


def send_self(sig: int) -> None:
    os.kill(os.getpid(), sig)  # a real signal: Python runs the handler at once, in this thread


def test_a_second_signal_during_the_save_changes_nothing(tmp_path, data, capsys, monkeypatch):
    """SIGINT after step 5 (sent by the process to itself, so the step is known); during the save
    that follows, SIGINT and SIGTERM again, as Ctrl-C under torchrun delivers. The save finishes,
    and the resumed run equals an uninterrupted one."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    flags = [*RUN, "--data", data]
    before = signal.getsignal(signal.SIGINT)
    assert run_tool("train", *flags, "--out-dir", whole, capsys=capsys)[0] == 0
    real_step, real_save, steps = train.train_step, checkpoint.torch.save, []

    def step_then_signal(*args, **kw):
        loss = real_step(*args, **kw)
        steps.append(1)
        if len(steps) == 5:
            send_self(signal.SIGINT)
        return loss

    def save_interrupted_twice(obj, f):
        if len(steps) >= 5:  # the save of the stop, not an evaluation's
            f.write(b"half a checkpoint")
            f.flush()
            send_self(signal.SIGINT)
            send_self(signal.SIGTERM)
            f.seek(0)
            f.truncate()
        real_save(obj, f)

    monkeypatch.setattr(train, "train_step", step_then_signal)
    monkeypatch.setattr(checkpoint.torch, "save", save_interrupted_twice)
    code, err = run_tool("train", *flags, "--out-dir", stopped, capsys=capsys)
    monkeypatch.undo()
    assert code == 128 + signal.SIGINT and "stopped by SIGINT after step 5 of 40" in err, err
    assert checkpoint.load_checkpoint(stopped / checkpoint.LAST)["iter"] == 5
    assert no_temporary_files(stopped)
    assert signal.getsignal(signal.SIGINT) is before  # the run restored the handlers
    assert run_tool("train", "--resume", "--out-dir", stopped, capsys=capsys)[0] == 0
    assert losses(stopped) == losses(whole)
    assert_same_state(whole, stopped)


def test_a_signal_during_an_evaluation_stops_after_it(tmp_path, data, capsys, monkeypatch):
    """The evaluation's last.pt already holds the step: no second save, best.pt is the evaluation's."""
    out_dir = tmp_path / "out"
    real_estimate = train.estimate_loss

    def estimate_then_signal(*args, **kw):
        losses = real_estimate(*args, **kw)
        path = out_dir / metrics.METRICS
        if path.exists() and len(metrics.read_metrics(path)) == 1:  # the evaluation at 20
            send_self(signal.SIGTERM)
        return losses

    monkeypatch.setattr(train, "estimate_loss", estimate_then_signal)
    code, err = run_tool("train", *RUN, "--data", data, "--out-dir", out_dir, capsys=capsys)
    assert code == 128 + signal.SIGTERM and "after step 20 of 40" in err, err
    assert list(losses(out_dir)) == [0, 20]
    assert checkpoint.load_checkpoint(out_dir / checkpoint.LAST)["iter"] == 20


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def rank_of(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"RANK=")).split(b"=")[1])


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "fastgpt.train", *map(str, args)]


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="finds torchrun's workers through /proc (Linux)")
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, data):
    """SIGTERM to rank 1 only: rank 0, which got none, stops after the same step and writes the one
    checkpoint, holding both ranks' random state; the resumed run equals an uninterrupted one."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run = [*RUN, "--data", data, "--batch-size", "2"]
    subprocess.run(torchrun(*run, "--out-dir", whole), env=ENV, check=True, capture_output=True)
    process = subprocess.Popen(torchrun(*run, "--out-dir", stopped), env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # rank 0 logs
        if line.startswith("step 3/"):
            rank1 = next(pid for pid in children(process.pid) if rank_of(pid) == 1)
            os.kill(rank1, signal.SIGTERM)
            break
    _, err = process.communicate(timeout=120)
    ckpt = checkpoint.load_checkpoint(stopped / checkpoint.LAST)
    assert 3 <= ckpt["iter"] < 20 and len(ckpt["rng"]["ranks"]) == 2, err[-2000:]
    assert f"stopped by SIGTERM after step {ckpt['iter']} of 40" in err
    assert no_temporary_files(stopped)
    resumed = subprocess.run(torchrun("--resume", "--out-dir", stopped), env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(stopped) == losses(whole)
    assert_same_state(whole, stopped)


# --- 2. A full disk: one line, the previous checkpoint kept, no temporary file -------------------


def no_space(*args, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullFile:
    """A file on a full disk: every write fails."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    write = no_space


def fill_the_disk_in_the_second_evaluation(monkeypatch, out_dir: Path, target: str) -> None:
    """Once last.pt exists, writing `target` fails as on a full disk: the OSError (ENOSPC) that
    open's write raises, and for a checkpoint the RuntimeError that torch.save raises over it."""
    from matplotlib.figure import Figure

    def filled() -> bool:
        return (out_dir / checkpoint.LAST).exists()

    real_save, real_open, real_savefig = checkpoint.torch.save, open, Figure.savefig

    def save(obj, f):
        if filled() and list(out_dir.glob(f".{checkpoint.LAST}.*.tmp")):
            f.write(b"part of a checkpoint")
            try:
                no_space()
            except OSError as e:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from e
        real_save(obj, f)

    def append_open(path, mode="r", **kw):
        return FullFile() if filled() and mode == "a" else real_open(path, mode, **kw)

    def savefig(figure, f, **kw):
        if filled():
            f.write(b"\x89PNG part")
            no_space()
        real_savefig(figure, f, **kw)

    if target == checkpoint.LAST:
        monkeypatch.setattr(checkpoint.torch, "save", save)
    elif target == metrics.METRICS:
        monkeypatch.setattr(metrics, "open", append_open, raising=False)  # shadows the builtin
    else:
        monkeypatch.setattr(Figure, "savefig", savefig)


@pytest.mark.parametrize("target", [checkpoint.LAST, metrics.METRICS, metrics.PLOT])
def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, data, capsys,
                                                                    monkeypatch, target):
    out_dir = tmp_path / "out"
    fill_the_disk_in_the_second_evaluation(monkeypatch, out_dir, target)
    code_err = run_tool("train", *RUN, "--data", data, "--out-dir", out_dir, capsys=capsys)
    monkeypatch.undo()
    assert_refused(code_err, "the disk is full", f"writing {out_dir / target} needs at least",
                   "is free there", f"resume with `python -m fastgpt.train --resume --out-dir "
                   f"{out_dir}` (last.pt of step 0 is kept)")
    assert checkpoint.load_checkpoint(out_dir / checkpoint.LAST)["iter"] == 0
    assert no_temporary_files(out_dir)
    assert run_tool("train", "--resume", "--out-dir", out_dir, capsys=capsys)[0] == 0
    assert list(losses(out_dir)) == [0, 20, 40]


def test_a_full_disk_in_prepare_is_one_line(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setattr(prepare, "atomic_write", full_atomic_write(prepare.atomic_write))
    assert_refused(run_tool("prepare", "--data", data, "--out", tmp_path / "ds", capsys=capsys),
                   "the disk is full", f"writing {tmp_path / 'ds' / 'train.bin'} needs at least "
                   f"{len(SMALL_TEXT) * 9 // 10 * 2:,} bytes", "run the command again")
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [".fastgpt.lock"]


def full_atomic_write(real):
    """atomic_write, into a disk that fills up after the first byte."""
    @contextmanager
    def patched(path, size=0):
        with real(path, size) as f:
            f.write(b"\0")
            f.flush()
            yield FullFile()
    return patched


def tmpfs_shell(mount: Path, size: str, script: str) -> subprocess.CompletedProcess:
    """`script` in sh with a tmpfs of `size` mounted on `mount`, in a user and mount namespace of
    its own (no root needed where the kernel allows them; the mount goes with the shell)."""
    mount.mkdir(exist_ok=True)
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           f"mount -t tmpfs -o size={size} tmpfs {mount} && {script}"],
                          env=ENV, capture_output=True, text=True, timeout=120)


def can_mount_tmpfs(tmp_path_factory) -> bool:
    try:
        return tmpfs_shell(tmp_path_factory.mktemp("mnt"), "64k", "true").returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    if shutil.which("unshare") is None or not can_mount_tmpfs(tmp_path_factory):
        pytest.skip("no user namespace to mount a small tmpfs in")
    return tmp_path_factory.mktemp("disk")


@pytest.mark.parametrize("tool", ["prepare", "train"])
def test_a_really_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, small_disk, tool):
    """A real 64 KB file system: prepare's train.bin (77 KB of uint16 ids) does not fit, and
    neither does a new run's first evaluation (best.pt, loss.png, last.pt: 91 KB)."""
    text = tmp_path / "input.txt"
    text.write_text(SMALL_TEXT * 10)
    out = small_disk / "out"
    flags = {"prepare": f"--data {text} --out {out}",
             "train": f"{' '.join(RUN)} --data {text} --out-dir {out}"}[tool]
    result = tmpfs_shell(small_disk, "64k", f"{sys.executable} -m fastgpt.{tool} {flags}; "
                                            f"echo exit $?; ls -A {out}")
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: the disk is full: writing {out}/"), result.stderr
    assert "needs at least" in err[0] and "run the command again" in err[0]
    lines = result.stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("exit "))
    assert lines[end] == "exit 2", result.stdout
    left = lines[end + 1:]
    assert not [name for name in left if name.endswith(".tmp")], left


# --- 3. A prepared dataset is checked when it is opened -----------------------------------------


def test_a_dataset_with_ids_beyond_its_vocabulary_is_refused_before_training(tmp_path, data, capsys):
    dataset = tmp_path / "ds"
    prepare.main(["--data", str(data), "--out", str(dataset)])
    ids = (dataset / "train.bin").read_bytes()
    (dataset / "train.bin").write_bytes(ids[:-2] + (500).to_bytes(2, "little"))  # the last id
    assert_refused(run_tool("train", *RUN, "--dataset", dataset, "--out-dir", tmp_path / "o",
                            capsys=capsys), f"{dataset / 'train.bin'} holds token id 500",
                   "python -m fastgpt.prepare")
    assert not (tmp_path / "o" / checkpoint.LAST).exists()


def test_a_mixed_up_split_is_refused(tmp_path, data):
    """val.bin of a dataset with a larger vocabulary, of the same size."""
    prepare.main(["--data", str(data), "--out", str(tmp_path / "a")])
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    other = tmp_path / "other.txt"
    other.write_text("".join(chr(0x100 + i % 300) for i in range(len(SMALL_TEXT))))
    prepare.main(["--data", str(other), "--out", str(tmp_path / "b")])
    shutil.copy(tmp_path / "b" / "val.bin", tmp_path / "a" / "val.bin")
    assert (tmp_path / "a" / "val.bin").stat().st_size == meta["val"]["tokens"] * 2
    with pytest.raises(UserError, match="val.bin holds token id"):
        MemmapDataset(tmp_path / "a")


def test_every_promise_in_the_docs_names_a_test_that_exists():
    """docs/training.md's list of what a stopped run keeps cites its tests; they must exist."""
    root = Path(__file__).parent
    docs = (root.parent / "docs" / "training.md").read_text()
    promises = docs.split("## What fastgpt promises when a run is stopped")[1].split("\n## ")[0]
    cited = set(re.findall(r"`(test_\w+)`", promises))
    defined = set(re.findall(r"^def (test_\w+)", "".join(p.read_text() for p in root.glob("test_*.py")),
                             re.MULTILINE))
    assert len(cited) >= 10 and cited <= defined, cited - defined
