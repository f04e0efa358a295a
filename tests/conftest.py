import os
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it decorates its kernels, i.e. when fastgpt is first imported,
# so it is set here, before any test module imports fastgpt: without a GPU the Triton kernels then
# run in Triton's interpreter on CPU tensors (tests/test_attention.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

CORPUS_NAME = "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    """The real tiny-Shakespeare corpus from $FASTGPT_DATA_DIR (CI: ../shared/data); never copied."""
    data_dir = os.environ.get("FASTGPT_DATA_DIR")
    path = Path(data_dir) / CORPUS_NAME if data_dir else None
    if path is None or not path.is_file():
        pytest.skip(f"set FASTGPT_DATA_DIR to a folder holding {CORPUS_NAME} to run this test")
    return path
