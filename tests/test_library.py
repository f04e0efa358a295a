"""The op list and the dispatcher agree: every op is defined once, by `fastgpt.ops.library.define`,
and has a CPU kernel wherever fastgpt._C is built (its CUDA kernels: test_cuda_registrations.py)."""
import torch

from clitools import needs_cpp
from fastgpt import ops


def fastgpt_ops_in_the_dispatcher() -> set[str]:
    return {name for name in torch._C._dispatch_get_all_op_names() if name.startswith("fastgpt::")}


def test_the_op_list_is_every_op_defined():
    assert set(ops.OPS) == fastgpt_ops_in_the_dispatcher()


@needs_cpp
def test_every_op_has_a_cpu_kernel():
    missing = [op for op in ops.OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU")]
    assert not missing, f"no CPU kernel registered in csrc/ for {missing}"
