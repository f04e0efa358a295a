"""The fused kernels as test parameters, shared by the op tests (test_attention.py,
test_dropout_add.py): the fused backends, the `fused` fixture that runs a test on one backend's
kernels, and `cpp_instruction_set`, which runs a test on each copy of the C++ kernels.

The fused backends are the registered ops with a device's kernels: `cpp` (the C++ kernels, CPU) and
`triton` (the Triton kernels: compiled on CUDA; without a GPU, run in Triton's interpreter on CPU
tensors, registered as the ops' CPU kernels for the test by the `fused` fixture, through the code
that registers them for CUDA). A test module takes the fixtures by importing them.
"""
import pytest
import torch

from fastgpt.ops import cpu, cuda
from triton_cpu import INTERPRETED, ON_CUDA, triton_kernels_on_cpu

DEVICE = "cuda" if ON_CUDA else "cpu"
FUSED = ("cpp", "triton")
# A fused backend as a test parameter: the Triton kernels are the CUDA ones (the `cuda` marker).
FUSED_PARAMS = [pytest.param(b, marks=pytest.mark.cuda) if b == "triton" else b for b in FUSED]


def why_not(backend: str) -> str | None:
    """Why the tests cannot run `backend`'s kernels here (None when they can)."""
    if backend == "cpp":
        return cpu.unsupported("cpu", torch.float32, 8)
    if cuda.missing is not None:
        return cuda.missing
    if not (ON_CUDA or INTERPRETED):
        return "no CUDA GPU, and TRITON_INTERPRET=1 was not set before fastgpt was imported"
    return None


def device_of(backend: str) -> str:
    """The device of the tensors a test gives `backend`'s kernels."""
    return "cpu" if backend == "cpp" else DEVICE


@pytest.fixture(params=FUSED_PARAMS)
def fused(request):
    """A fused backend's name, with its kernels registered for the device its tests use."""
    backend = request.param
    reason = why_not(backend)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    if backend == "triton" and not ON_CUDA:
        with triton_kernels_on_cpu():  # the ops' CPU key belongs to the C++ kernels, for this test to Triton's
            yield backend
    else:
        yield backend


@pytest.fixture(params=["baseline", "avx2+fma", "avx512"])
def cpp_instruction_set(request):
    """Runs a test with each copy of the C++ kernels this CPU can run."""
    if why_not("cpp"):
        pytest.skip(why_not("cpp"))
    best = cpu.instruction_set()
    try:
        cpu.set_instruction_set(request.param)
    except RuntimeError:
        pytest.skip(f"this CPU does not run {request.param}")
    yield request.param
    cpu.set_instruction_set(best)
