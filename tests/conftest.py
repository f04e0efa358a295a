import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

# The tests import the installed fastgpt (the package a user gets) with pytest's importlib mode, which
# leaves sys.path alone; the checkout's own helpers (bench/, tests/) are appended after site-packages,
# so the checkout's fastgpt/ never hides the installed one.
ROOT = Path(__file__).resolve().parents[1]
sys.path += [str(ROOT), str(ROOT / "tests")]
# The same for the tools the tests start as processes (`python -m fastgpt.train`, torchrun's
# workers): without it `-m` puts their working directory, often the checkout, first on sys.path.
os.environ["PYTHONSAFEPATH"] = "1"

# Triton reads TRITON_INTERPRET when it decorates its kernels, i.e. when they are first imported,
# so it is set here, before any test imports them: without a GPU the Triton kernels then run in
# Triton's interpreter on CPU tensors (tests/triton_cpu.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The attention tests run in torch's deterministic mode, where cuBLAS refuses to multiply on CUDA
# unless its workspace is fixed before the first CUDA call.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from clitools import FAST_RUN, SMALL_TEXT  # noqa: E402  (tests/ is on sys.path from here on)
from fastgpt import train  # noqa: E402


class FinishedRun(NamedTuple):
    out_dir: Path
    text: Path  # the --data it trained on


@pytest.fixture
def data(tmp_path) -> Path:
    """A small text file to train on."""
    path = tmp_path / "input.txt"
    path.write_text(SMALL_TEXT)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> FinishedRun:
    """A tiny run of two steps on SMALL_TEXT, trained once per test module."""
    root = tmp_path_factory.mktemp("finished")
    (root / "input.txt").write_text(SMALL_TEXT)
    train.main([*FAST_RUN, "--data", str(root / "input.txt"), "--out-dir", str(root / "out")])
    return FinishedRun(root / "out", root / "input.txt")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
