"""The fused residual dropout `fastgpt::dropout_add`: the C++ and Triton kernels against the
reference body (same keep bits), its gradients, opcheck, and the statistics of its mask."""
import math

import pytest
import torch

from fastgpt import dropout
from fastgpt.attention.reference import dropout_keep_scale, dropout_threshold
from fastgpt.dropout import dropout_add, dropout_add_op, keep_mask

needs_cpp = pytest.mark.skipif(dropout._C is None, reason="the C++ extension is not built")
needs_triton = pytest.mark.skipif(dropout.triton_kernels is None, reason="Triton is not installed")

SIZES = [1, 7, 8, 63, 64, 65, 4095, 4097, 3 * 4096 + 13]


def reference(x, residual, p, seed):
    keep = keep_mask(seed, x.numel(), p).view(x.shape)
    return residual + x * keep * dropout_keep_scale(p)


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


@needs_triton
@pytest.mark.parametrize("n", SIZES[:-1])
def test_triton_kernel_matches_reference(n):
    from fastgpt.kernels import dropout_add as kernels
    if not kernels.triton.knobs.runtime.interpret and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, residual = torch.randn(n, device=device), torch.randn(n, device=device)
    out = kernels.dropout_add(x, residual, 0.3, torch.tensor(n + 5))
    torch.testing.assert_close(out.cpu(), reference(x.cpu(), residual.cpu(), 0.3, n + 5))
    dx = kernels.dropout_add(x, None, 0.3, torch.tensor(n + 5))
    torch.testing.assert_close(dx.cpu(), reference(x.cpu(), torch.zeros(n), 0.3, n + 5))


@needs_cpp
def test_every_instruction_set_draws_the_same_bits():
    x, residual, seed = torch.ones(4097), torch.zeros(4097), torch.tensor(11)
    best = dropout._C.instruction_set()
    try:
        for isa in ("baseline", "avx2+fma", "avx512"):
            try:
                dropout._C.set_instruction_set(isa)
            except RuntimeError:
                continue  # this CPU does not run it
            assert torch.equal(dropout_add_op(x, residual, 0.3, seed) != 0, keep_mask(11, 4097, 0.3)), isa
    finally:
        dropout._C.set_instruction_set(best)


def test_mixed_dtypes_promote():
    x, residual = torch.randn(4, 40, dtype=torch.bfloat16), torch.randn(4, 40)
    out = dropout_add(x, residual, 0.2, seed=3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference(x.float(), residual, 0.2, 3))


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


def test_unbiased():
    x, residual = torch.randn(50, dtype=torch.float64), torch.zeros(50, dtype=torch.float64)
    outs = torch.stack([dropout_add(x, residual, 0.3, seed=s) for s in range(4000)])
    assert ((outs.mean(0) - x).abs() <= 5 * outs.std(0) / math.sqrt(4000) + 1e-12).all()
