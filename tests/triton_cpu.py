"""The Triton kernels on CPU tensors, without a GPU: Triton's interpreter (TRITON_INTERPRET=1, set by
conftest.py), with the launchers registered as the ops' CPU kernels by `fastgpt.ops.cuda.register`,
the code that registers them for CUDA."""
import warnings
from contextlib import contextmanager

import torch

from fastgpt.ops import cuda

ON_CUDA = torch.cuda.is_available()
INTERPRETED = cuda.missing is None and cuda.kernels("attention").INTERPRETED


@contextmanager
def triton_kernels_on_cpu():
    """Inside, every fastgpt op runs its Triton kernel on CPU tensors (in Triton's interpreter) in
    place of its C++ kernel."""
    assert INTERPRETED, "Triton's interpreter needs TRITON_INTERPRET=1 before the kernels are imported"
    library = torch.library.Library("fastgpt", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "overriding a previously registered kernel"
        cuda.register("cpu", library)
    try:
        yield
    finally:
        library._destroy()
