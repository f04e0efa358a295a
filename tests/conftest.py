import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when it decorates its kernels, i.e. when fastgpt is first imported,
# so it is set here, before any test module imports fastgpt: without a GPU the Triton kernels then
# run in Triton's interpreter on CPU tensors (tests/test_attention.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
