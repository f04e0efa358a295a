"""The fused residual dropout `fastgpt::dropout_add`: the C++ and Triton kernels (the `fused`
fixture of tests/fused_kernels.py) against the reference (same keep bits), its gradients, opcheck,
the dispatch point's fallback, and the statistics of its mask."""
import math

import pytest
import torch

import fastgpt.attention
from fastgpt import ops
from fastgpt.attention import dropout_add
from fastgpt.attention.reference import reference_dropout_add as reference
from fastgpt.ops import cpu
from fastgpt.ops.mask import dropout_threshold, residual_keep_mask as keep_mask
from fused_kernels import cpp_instruction_set, device_of, fused  # noqa: F401

SIZES = [1, 7, 8, 63, 64, 65, 4095, 4097, 3 * 4096 + 13]


def takes(backend: str, dtype: torch.dtype) -> str | None:
    """Why `backend` takes no `dtype` inputs (None when it does)."""
    if backend == "triton" and dtype == torch.float64:
        return "the Triton kernel computes in float32"
    return None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_fused_matches_reference(fused, n, dtype):
    """Through the dispatcher, forward and backward op, against the reference in float64: the same
    keep bits, the values within 2 ulps of the dtype."""
    if takes(fused, dtype):
        pytest.skip(f"{fused}: {takes(fused, dtype)}")
    if fused == "triton" and n == SIZES[-1]:
        pytest.skip("more programs than Triton's interpreter runs quickly; the other sizes cover the tails")
    device, seed = device_of(fused), torch.tensor(n + 5)
    x, residual = torch.randn(n, dtype=dtype, device=device), torch.randn(n, dtype=dtype, device=device)
    out = ops.dropout_add(x, residual, 0.3, seed)
    expected = reference(x.cpu().double(), residual.cpu().double(), 0.3, n + 5)
    eps = 2 * torch.finfo(dtype).eps
    assert out.dtype == dtype and out.device.type == device
    torch.testing.assert_close(out.cpu().double(), expected, atol=eps, rtol=eps)
    dx = ops.dropout_add_backward(x, 0.3, seed)
    assert dx.dtype == dtype
    torch.testing.assert_close(dx.cpu().double(), reference(x.cpu().double(), torch.zeros(n, dtype=torch.float64),
                                                            0.3, n + 5), atol=eps, rtol=eps)
    kept = ops.dropout_add(torch.ones_like(x), torch.zeros_like(x), 0.3, seed) != 0
    assert torch.equal(kept.cpu(), keep_mask(n + 5, n, 0.3))


def test_every_instruction_set_draws_the_same_bits(cpp_instruction_set):
    x, residual, seed = torch.ones(4097), torch.zeros(4097), torch.tensor(11)
    assert torch.equal(ops.dropout_add(x, residual, 0.3, seed) != 0, keep_mask(11, 4097, 0.3))


def test_mixed_dtypes_promote(fused):
    device = device_of(fused)
    x, residual = torch.randn(4, 40, dtype=torch.bfloat16, device=device), torch.randn(4, 40, device=device)
    out = dropout_add(x, residual, 0.2, seed=3)  # through the dispatch point
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), reference(x.cpu().float(), residual.cpu(), 0.2, 3))


def test_fused_gradcheck_and_opcheck(fused):
    device, seed = device_of(fused), torch.tensor(9)
    x, residual = (torch.randn(3, 5, 11, dtype=torch.float64, device=device, requires_grad=True) for _ in range(2))
    if not takes(fused, torch.float64):
        assert torch.autograd.gradcheck(lambda x, r: ops.dropout_add(x, r, 0.4, seed), (x, residual))
    torch.library.opcheck(ops.dropout_add, (x.float().detach().requires_grad_(),
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


def test_unbiased(fused):
    dtype = torch.float32 if takes(fused, torch.float64) else torch.float64
    x = torch.randn(50, dtype=dtype, device=device_of(fused))
    residual = torch.zeros_like(x)
    n = 4000 if fused == "cpp" else 300  # the interpreter is slow
    outs = torch.stack([ops.dropout_add(x, residual, 0.3, torch.tensor(s)) for s in range(n)]).double()
    assert ((outs.mean(0) - x.double()).abs() <= 5 * outs.std(0) / math.sqrt(n) + 1e-6).all()


def test_without_a_kernel_the_dispatch_point_runs_the_reference(monkeypatch):
    """A device whose kernels are missing gets the reference, with the same mask, and says why."""
    monkeypatch.setattr(cpu, "missing", "the C++ extension fastgpt._C is not built (test)")
    assert "not built" in fastgpt.attention.residual_dropout_status("cpu")
    x, residual = torch.randn(3, 70), torch.randn(3, 70)
    assert torch.equal(dropout_add(x, residual, 0.25, seed=4), reference(x, residual, 0.25, 4))
    assert "no fused residual dropout for meta" in fastgpt.attention.residual_dropout_status("meta")
