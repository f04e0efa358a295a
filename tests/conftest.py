import os
from pathlib import Path

import pytest
import torch

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
