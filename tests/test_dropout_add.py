"""The fused residual dropout `fastgpt::dropout_add`: the C++ and Triton kernels against the
reference (same keep bits), its gradients, opcheck, the dispatch point's fallback, and the
statistics of its mask."""
import math

import pytest
import torch

from clitools import needs_cpp
import fastgpt.attention
from fastgpt import ops
from fastgpt.attention import dropout_add
from fastgpt.attention.reference import reference_dropout_add as reference
from fastgpt.ops import cpu
from fastgpt.ops.mask import dropout_threshold, residual_keep_mask as keep_mask
from triton_cpu import INTERPRETED, ON_CUDA, triton_kernels_on_cpu

needs_triton = pytest.mark.skipif(not (ON_CUDA or INTERPRETED), reason="Triton needs a GPU or TRITON_INTERPRET=1")
dropout_add_op = ops.dropout_add

SIZES = [1, 7, 8, 63, 64, 65, 4095, 4097, 3 * 4096 + 13]


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n", SIZES)
def test_cpu_kernel_matches_reference(n, dtype):
    x, residual = torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype)
    out = dropout_add_op(x, residual, 0.3, torch.tensor(n + 5))
    expected = reference(x.double(), residual.double(), 0.3, n + 5)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, atol=2 * torch.finfo(dtype).eps, rtol=2 * torch.finfo(dtype).eps)
    kept = dropout_add_op(torch.ones(n, dtype=dtype), torch.zeros(n, dtype=dtype), 0.3, torch.tensor(n + 5)) != 0
    assert torch.equal(kept, keep_mask(n + 5, n, 0.3))


@pytest.fixture
def triton_device():
    """The device of the Triton kernels' tests: CUDA, or the CPU with the Triton kernels registered
    as the ops' CPU kernels (the interpreter)."""
    if ON_CUDA:
        yield "cuda"
    else:
        with triton_kernels_on_cpu():
            yield "cpu"


@needs_triton
@pytest.mark.cuda
@pytest.mark.parametrize("n", SIZES[:-1])
def test_triton_kernel_matches_reference(n, triton_device):
    """Through the dispatcher, forward and backward op: the registrations as they run on CUDA."""
    x, residual = torch.randn(n, device=triton_device), torch.randn(n, device=triton_device)
    out = dropout_add_op(x, residual, 0.3, torch.tensor(n + 5))
    torch.testing.assert_close(out.cpu(), reference(x.cpu(), residual.cpu(), 0.3, n + 5))
    dx = ops.dropout_add_backward(x, 0.3, torch.tensor(n + 5))
    torch.testing.assert_close(dx.cpu(), reference(x.cpu(), torch.zeros(n), 0.3, n + 5))


@needs_cpp
def test_every_instruction_set_draws_the_same_bits():
    x, residual, seed = torch.ones(4097), torch.zeros(4097), torch.tensor(11)
    best = cpu.instruction_set()
    try:
        for isa in ("baseline", "avx2+fma", "avx512"):
            try:
                cpu.set_instruction_set(isa)
            except RuntimeError:
                continue  # this CPU does not run it
            assert torch.equal(dropout_add_op(x, residual, 0.3, seed) != 0, keep_mask(11, 4097, 0.3)), isa
    finally:
        cpu.set_instruction_set(best)


@needs_cpp
def test_mixed_dtypes_promote():
    x, residual = torch.randn(4, 40, dtype=torch.bfloat16), torch.randn(4, 40)
    out = dropout_add(x, residual, 0.2, seed=3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference(x.float(), residual, 0.2, 3))


@needs_cpp
def test_gradcheck_and_opcheck():
    x = torch.randn(3, 5, 11, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(3, 5, 11, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor(9)
    assert torch.autograd.gradcheck(lambda x, r: dropout_add_op(x, r, 0.4, seed), (x, residual))
    torch.library.opcheck(dropout_add_op, (x.float().detach().requires_grad_(),
                                           residual.float().detach().requires_grad_(), 0.4, seed))


def test_p_zero_is_a_plain_add():
    x, residual = torch.randn(10), torch.randn(10)
    assert torch.equal(dropout_add(x, residual, 0.0), residual + x)


def test_keep_rate_and_independence():
    p, n = 0.2, 4_000_000
    mask = keep_mask(1, n, p)
    keep = 1 - dropout_threshold(p) / 65536
    assert abs(mask.double().mean().item() - keep) < 5 * math.sqrt(keep * (1 - keep) / n)
    m = mask.double()
    bound = 5 / math.sqrt(n)
    for shift in (1, 8, 64):  # neighbours in a Philox call, neighbouring calls, vector steps
        assert abs(torch.corrcoef(torch.stack([m[:-shift], m[shift:]]))[0, 1].item()) < bound
    other_seed = keep_mask(2, n, p).double()
    assert abs(torch.corrcoef(torch.stack([m, other_seed]))[0, 1].item()) < bound


@needs_cpp
def test_unbiased():
    x, residual = torch.randn(50, dtype=torch.float64), torch.zeros(50, dtype=torch.float64)
    outs = torch.stack([dropout_add(x, residual, 0.3, seed=s) for s in range(4000)])
    assert ((outs.mean(0) - x).abs() <= 5 * outs.std(0) / math.sqrt(4000) + 1e-12).all()


def test_without_a_kernel_the_dispatch_point_runs_the_reference(monkeypatch):
    """A device whose kernels are missing gets the reference, with the same mask, and says why."""
    monkeypatch.setattr(cpu, "missing", "the C++ extension fastgpt._C is not built (test)")
    assert "not built" in fastgpt.attention.residual_dropout_status("cpu")
    x, residual = torch.randn(3, 70), torch.randn(3, 70)
    assert torch.equal(dropout_add(x, residual, 0.25, seed=4), reference(x, residual, 0.25, 4))
    assert "no fused residual dropout for meta" in fastgpt.attention.residual_dropout_status("meta")
