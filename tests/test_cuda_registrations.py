"""Every CUDA kernel fastgpt registers, reached through the dispatcher on every run, GPU or not.

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors, registered as the ops'
CPU kernels by `fastgpt.ops.cuda.register`, the code that registers them for CUDA (tests/triton_cpu.py).
Through the dispatcher as a CUDA run calls them: `opcheck` on every op with a CUDA kernel (an op's
definition names its launcher, or none: fastgpt::decode_step runs on CPU only), a training step of
the GPT with dropout 0.2 (forward, backward, AdamW) and generation with the KV cache, each against
the same work on the C++ kernels (the same dropout masks). The last test fails if a registered CUDA kernel
was reached by none of them.
"""
from contextlib import contextmanager, nullcontext
from typing import Optional

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from clitools import needs_cpp
from fastgpt import ops
from fastgpt.ops import cuda
from fastgpt.model import GPT, GPTConfig
from triton_cpu import INTERPRETED, ON_CUDA, triton_kernels_on_cpu

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (ON_CUDA or INTERPRETED), reason="Triton needs a GPU or TRITON_INTERPRET=1")]
DEVICE = "cuda" if ON_CUDA else "cpu"
SEED = torch.tensor(2**40 + 7)
class _RecordOps(TorchDispatchMode):
    """Adds the name of every fastgpt op that runs to `reached`."""

    def __init__(self, reached: set[str]):
        super().__init__()
        self.reached = reached

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastgpt":
            self.reached.add(func._schema.name)
        return func(*args, **(kwargs or {}))


@contextmanager
def on_triton(reached: Optional[set[str]] = None):
    """A context in which the fastgpt ops run their Triton kernels (on CUDA, or on CPU tensors in
    the interpreter), each op that runs added to `reached`."""
    with (nullcontext() if ON_CUDA else triton_kernels_on_cpu()), _RecordOps(set() if reached is None else reached):
        yield


def rand(*shape, grad=False):
    return torch.randn(*shape, device=DEVICE, requires_grad=grad)


def sample_inputs(op: str) -> tuple:
    """Arguments for `op` in its schema's order: small float32 tensors, dropout on."""
    B, H, T, D = 2, 2, 11, 8
    q, k, v = (rand(B, H, T, D, grad=True) for _ in range(3))
    qkv = rand(B, T, 3 * H * D, grad=True)
    if op == "fastgpt::causal_attention":
        return q, k, v, 0.2, SEED
    if op == "fastgpt::causal_attention_backward":
        out, lse = ops.causal_attention(q, k, v, 0.2, SEED)
        return rand(B, H, T, D), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), 0.2, SEED
    if op == "fastgpt::causal_attention_qkv":
        return qkv, H, 0.2, SEED
    if op == "fastgpt::causal_attention_qkv_backward":
        out, lse = ops.causal_attention_qkv(qkv, H, 0.2, SEED)
        return rand(B, T, H * D), qkv.detach(), out.detach(), lse.detach(), H, 0.2, SEED
    if op == "fastgpt::dropout_add":
        return rand(3, 5, 17, grad=True), rand(3, 5, 17, grad=True), 0.3, SEED
    if op == "fastgpt::dropout_add_backward":
        return rand(3, 5, 17), 0.3, SEED
    if op == "fastgpt::attention_keep_mask":
        return SEED.to(DEVICE), B, H, T, 0.2
    raise AssertionError(f"no sample inputs for {op}: add them here")


def op_overload(name: str):
    namespace, op = name.split("::")
    return getattr(getattr(torch.ops, namespace), op).default


@pytest.mark.parametrize("op", cuda.launchers())
def test_opcheck(op):
    """The op once as the dispatcher runs it (recorded), then torch.library.opcheck's checks of its
    schema, fake, autograd registration and tracing."""
    with on_triton():
        op_overload(op)(*sample_inputs(op))
    with triton_kernels_on_cpu() if not ON_CUDA else nullcontext():
        torch.library.opcheck(op_overload(op), sample_inputs(op))


def small_model(device=DEVICE) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.2, attention="cpp"
                       if device == "cpu" else "triton")
    return GPT(config).to(device)


def training_step(model: GPT, idx, targets, seed: int) -> tuple[float, list[torch.Tensor]]:
    """One AdamW step from fixed draws: the loss and the parameters after the step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(seed)
    _, loss = model(idx, targets)
    loss.backward()
    optimizer.step()
    return loss.item(), [p.detach().cpu() for p in model.parameters()]


@needs_cpp
def test_training_step_with_dropout():
    """Forward, backward and optimizer step with dropout 0.2: the attention and residual dropout
    ops and their backward ops, against the same step on the C++ kernels with the same masks."""
    idx, targets = (torch.randint(65, (2, 16)) for _ in range(2))
    expected_loss, expected = training_step(small_model("cpu").train(), idx, targets, seed=1)
    with on_triton():
        loss, params = training_step(small_model().train(), idx.to(DEVICE), targets.to(DEVICE), seed=1)
    assert abs(loss - expected_loss) < 1e-5
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e, rtol=1e-4, atol=1e-5)


@needs_cpp
def test_generation_with_the_kv_cache():
    """Greedy generation (the prompt through the forward op, then the cached steps) gives the
    tokens the C++ kernels give."""
    prompt = torch.randint(65, (2, 5))
    expected = small_model("cpu").eval().generate(prompt, 12, greedy=True)
    with on_triton():
        tokens = small_model().eval().generate(prompt.to(DEVICE), 12, greedy=True)
    assert torch.equal(tokens.cpu(), expected)


def test_every_registered_cuda_kernel_is_reached():
    """The ops with a CUDA kernel in the dispatcher are those whose definition names a launcher, and
    each runs that kernel: every forward op called on its sample inputs, and its backward through
    autograd where it has one."""
    registered = {name for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("fastgpt::") and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")}
    assert registered == set(cuda.launchers()), registered ^ set(cuda.launchers())
    reached: set[str] = set()
    with on_triton(reached):
        for op in sorted(name for name in registered if not name.endswith("_backward")):
            output = op_overload(op)(*sample_inputs(op))
            output = output[0] if isinstance(output, (tuple, list)) else output
            if output.requires_grad:
                output.sum().backward()
    assert not registered - reached, f"CUDA kernels not reached: {sorted(registered - reached)}"
