"""Bad input to `python -m fastgpt.train`: exit code 2, one line naming the problem and the fix, no
traceback, and nothing already in out_dir touched. Run as a user runs it, in a subprocess."""
import pytest
import torch

from clitools import SMALL_TEXT, TINY_RUN, assert_user_error, run_module, snapshot
from fastgpt import checkpoint
from fastgpt.train import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run: its out_dir and its data file."""
    root = tmp_path_factory.mktemp("run")
    text = root / "input.txt"
    text.write_text(SMALL_TEXT)
    main([*TINY_RUN, "--data", str(text), "--out-dir", str(root / "out"), "--max-iters", "2"])
    return root / "out", text


def write(path, content: bytes):
    path.write_bytes(content)
    return path


NEW_RUN_CASES = {
    "missing data": (lambda d: ["--data", d / "nope.txt"], ["nope.txt does not exist", "--data"]),
    "empty data": (lambda d: ["--data", write(d / "e.txt", b"")], ["is empty", "--data"]),
    "non-UTF-8 data": (lambda d: ["--data", write(d / "l.txt", "naïve\n".encode("latin-1") * 500)],
                       ["not UTF-8", "--data"]),
    "data is a directory": (lambda d: ["--data", d], ["is not a file"]),
    "text too short": (lambda d: ["--data", write(d / "s.txt", b"abcdefgh" * 20)],
                       ["160 tokens, too short for block_size 16", "--block-size"]),
    "n_embd not divisible": (lambda d: ["--n-embd", "15"], ["--n-embd must be a multiple of n_head (2), got 15"]),
    "zero layers": (lambda d: ["--n-layer", "0"], ["--n-layer must be positive, got 0"]),
    "negative block": (lambda d: ["--block-size", "-4"], ["--block-size must be positive, got -4"]),
    "zero batch": (lambda d: ["--batch-size", "0"], ["--batch-size must be positive"]),
    "zero heads": (lambda d: ["--n-head", "0"], ["--n-head must be positive"]),
    "dropout 1": (lambda d: ["--dropout", "1.0"], ["--dropout must be in [0, 1), got 1.0"]),
    "negative dropout": (lambda d: ["--dropout", "-0.1"], ["--dropout must be in [0, 1)"]),
    "zero max iters": (lambda d: ["--max-iters", "0"], ["--max-iters must be positive"]),
    "unknown device": (lambda d: ["--device", "tpu7"], ["--device 'tpu7' is not a device"]),
}


@pytest.mark.parametrize("case", NEW_RUN_CASES)
def test_new_run_bad_input(tmp_path, case):
    flags, fragments = NEW_RUN_CASES[case]
    data = write(tmp_path / "input.txt", SMALL_TEXT.encode())
    out_dir = tmp_path / "out"
    result = run_module("fastgpt.train", *TINY_RUN, "--data", data, "--out-dir", out_dir,
                        *flags(tmp_path), cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert not out_dir.exists()


def test_new_run_never_overwrites_a_run(tmp_path, run_dir):
    out_dir, text = run_dir
    before = snapshot(out_dir)
    result = run_module("fastgpt.train", *TINY_RUN, "--data", text, "--out-dir", out_dir, cwd=tmp_path)
    assert_user_error(result, "already holds a run", "--resume", "--out-dir")
    assert snapshot(out_dir) == before


RESUME_CASES = {
    "contradicting n_head": (["--n-head", "4"], ["--n-head 4 contradicts", "n_head = 2"]),
    "contradicting block_size": (["--block-size", "32"], ["--block-size 32 contradicts", "block_size = 16"]),
    "contradicting preset": (["--preset", "gpu"], ["contradicts the checkpoint"]),
    "nothing left to train": (["--max-iters", "2"], ["already trained 2 iterations", "--max-iters"]),
    "other data": (["--data", "OTHER"], ["differs from the data", "same --data"]),
    "missing data": (["--data", "MISSING"], ["does not exist"]),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_bad_input(tmp_path, run_dir, case):
    out_dir, _ = run_dir
    flags, fragments = RESUME_CASES[case]
    other = write(tmp_path / "other.txt", SMALL_TEXT.replace("be", "eb").encode())
    flags = [{"OTHER": other, "MISSING": tmp_path / "missing.txt"}.get(f, f) for f in flags]
    before = snapshot(out_dir)
    result = run_module("fastgpt.train", "--resume", "--out-dir", out_dir, "--max-iters", "4",
                        *flags, cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert snapshot(out_dir) == before


def broken_checkpoints(run_dir):
    content = (run_dir / checkpoint.LAST).read_bytes()
    return {"truncated": content[: len(content) // 3], "empty": b"", "text": b"not a checkpoint"}


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "foreign", "no last.pt"])
def test_resume_from_a_broken_checkpoint(tmp_path, run_dir, kind):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if kind == "foreign":
        torch.save({"state_dict": {"w": torch.ones(2)}}, out_dir / checkpoint.LAST)
    elif kind != "no last.pt":
        write(out_dir / checkpoint.LAST, broken_checkpoints(run_dir[0])[kind])
    before = snapshot(out_dir)
    result = run_module("fastgpt.train", "--resume", "--out-dir", out_dir, "--max-iters", "4", cwd=tmp_path)
    fragment = {"foreign": "not a fastgpt checkpoint", "no last.pt": "does not exist"}.get(
        kind, "truncated or not a torch file")
    assert_user_error(result, fragment)
    assert snapshot(out_dir) == before
