"""Helpers for tests of the command-line entry points, run as a user runs them: a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

# Small text for runs that do not need the real corpus: 4,300 characters, 26 distinct.
SMALL_TEXT = "To be, or not to be: that is the question.\n" * 100

# A model and run small enough for a test: a few steps, a few evaluation batches, on the CPU.
TINY_RUN = ["--preset", "cpu", "--device", "cpu", "--attention", "torch", "--n-embd", "16",
            "--n-head", "2", "--n-layer", "1", "--block-size", "16", "--batch-size", "4",
            "--eval-interval", "2", "--eval-iters", "2", "--sample-chars", "20"]


def run_module(module: str, *args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` with one intra-op thread (fast on a shared machine)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2 and exactly one line on stderr, `error: ...`, holding every fragment."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` and its bytes, to show that nothing changed."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
