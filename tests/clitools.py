"""What the tests share besides fixtures (tests/conftest.py): small runs and texts, the tools run
as a user runs them (a subprocess) or in-process, the one-line error checks, the skip marker of the
C++ kernels."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastgpt import checkpoint, convert, info, prepare, sample, train
from fastgpt.model import GPT, GPTConfig
from fastgpt.data.tokenizer import CharTokenizer
from fastgpt.cli import run_cli
from fastgpt.ops import cpu

# Small text for runs that do not need the real corpus: 4,300 characters, 26 distinct.
SMALL_TEXT = "To be, or not to be: that is the question.\n" * 100

# A model and run small enough for a test: a few steps, a few evaluation batches, on the CPU.
TINY_RUN = ["--preset", "cpu", "--device", "cpu", "--attention", "torch", "--n-embd", "16",
            "--n-head", "2", "--n-layer", "1", "--block-size", "16", "--batch-size", "4",
            "--eval-interval", "2", "--eval-iters", "2", "--sample-chars", "20"]


# Tests of the C++ kernels themselves: skipped, with the reason, where the extension is not built.
needs_cpp = pytest.mark.skipif(cpu.missing is not None, reason="the C++ extension is not built")

FAST_RUN = [*TINY_RUN, "--max-iters", "2", "--sample-chars", "0"]
TOOLS = {"train": train.main, "sample": sample.main, "prepare": prepare.main,
         "convert": convert.main, "info": info.main}


def random_run(out_dir: Path, text: str, dropout: float = 0.0) -> Path:
    """`out_dir` holding best.pt of an untrained tiny GPT (2 layers, 2 heads) with `text`'s
    characters as its vocabulary: what the sampling tools read, without training."""
    tokenizer = CharTokenizer.from_text(text)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2,
                       n_embd=16, dropout=dropout)
    checkpoint.save(checkpoint.make(GPT(config), tokenizer), out_dir / checkpoint.BEST)
    return out_dir


def run_module(module: str, *args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` with one intra-op thread (fast on a shared machine)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def run_tool(tool: str, *args, capsys) -> tuple[int, str]:
    """(exit code, stderr) of `python -m fastgpt.<tool> args`, run in this process. An exception
    other than the one-line UserError propagates, failing the test with its traceback."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: TOOLS[tool]([str(a) for a in args]))
    return exit_info.value.code, capsys.readouterr().err


def assert_refused(code_err: tuple[int, str], *fragments: str) -> str:
    """Exit code 2 and exactly one line on stderr, `error: ...`, holding every fragment."""
    code, err = code_err
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """assert_refused of a tool run as a process."""
    return assert_refused((result.returncode, result.stderr), *fragments)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` and its bytes, to show that nothing changed."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
