"""Whole commands, timed as the processes a user starts, beside a bare `python -c "import torch"` in
the same run: what a command costs on top of importing torch.

    pytest bench/bench_startup.py --benchmark-columns=median,rounds --benchmark-json=startup.json

- `python -m fastgpt.sample`: 500 characters (the default) from a `cpu`-preset checkpoint;
- `fastgpt info`;
- `python -m fastgpt.train --help`.

Each runs in a fresh directory outside the checkout, so the installed package is what runs, with
torch's thread count from bench/conftest.py (OMP_NUM_THREADS). `extra_info["over_import_torch_s"]`
is the median minus the median of `import torch` (run first). Benchmark ids end with the command.
"""
import os
import shutil
import subprocess
import sys

import pytest

from bench.conftest import THREADS

COMMANDS = {
    "import-torch": [sys.executable, "-c", "import torch"],
    "sample-500": [sys.executable, "-m", "fastgpt.sample"],
    "info": [shutil.which("fastgpt") or "fastgpt", "info"],
    "train-help": [sys.executable, "-m", "fastgpt.train", "--help"],
}
_medians: dict[str, float] = {}


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A directory holding out/best.pt of the `cpu` preset (a few steps: its size is what counts)."""
    directory = tmp_path_factory.mktemp("user")
    subprocess.run([sys.executable, "-m", "fastgpt.train", "--preset", "cpu", "--max-iters", "2",
                    "--eval-interval", "2", "--eval-iters", "1", "--sample-chars", "0"],
                   cwd=directory, check=True, capture_output=True, env=_env())
    return directory


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(THREADS)}


def _run(argv, cwd):
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command(benchmark, user_dir, command):
    benchmark.group = "start-up"
    _run(COMMANDS[command], user_dir)  # warm the page cache
    benchmark.pedantic(_run, args=(COMMANDS[command], user_dir), rounds=7, iterations=1)
    _medians[command] = benchmark.stats.stats.median
    if command != "import-torch" and "import-torch" in _medians:
        benchmark.extra_info["over_import_torch_s"] = _medians[command] - _medians["import-torch"]
