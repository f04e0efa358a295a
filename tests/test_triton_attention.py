"""The Triton FlashAttention-2 kernels (fastgpt.kernels.flash_attention, fastgpt.triton_attention).

With CUDA: everything runs on the GPU in fp32, fp16 and bf16, with the compiled kernels.
Without CUDA: the same tests run the same kernels in Triton's interpreter on CPU tensors
(TRITON_INTERPRET=1 is set by conftest.py before fastgpt is imported), in fp32 and fp16 (the
interpreter of triton 3.9 gets bf16 dot products wrong), at small B·H so that they stay fast.
Outputs and gradients are compared with a float64 reference that applies the kernels' own dropout
mask; a kernel's error must stay within 2x that of PyTorch's reference run in the same dtype.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgpt import triton_attention
from fastgpt.attention import (causal_attention, dropout_keep_mask, reference_attention,
                               resolve_backend)
from fastgpt.attention_op import causal_attention_op, dropout_threshold, torch_keep_mask
from fastgpt.model import GPT, GPTConfig

kernels = triton_attention.kernels
ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"
WHY_NOT = triton_attention.unsupported(DEVICE, torch.float32, 64)
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"the Triton backend is off: {WHY_NOT}")

DTYPES = [torch.float32, torch.float16, torch.bfloat16] if ON_CUDA else [torch.float32, torch.float16]
SEED = 2**62 - 12345  # a 64-bit seed: both key words of Philox matter


def qkv(B, H, T, D, dtype=torch.float32):
    return [torch.randn(B, H, T, D, device=DEVICE).to(dtype) for _ in range(3)]


def rel_err(x, ref):
    """Largest error relative to the largest value, or absolute where that is below 1 (at T = 1,
    dq and dk are exactly 0 in float64 and carry rounding in float32)."""
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()


def reference_grads(q, k, v, grad_out, p, keep, dtype):
    """out, dq, dk, dv of the reference (masked softmax, the given keep-mask) run in `dtype`."""
    leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    out = reference_attention(*leaves, p, keep)
    out.backward(grad_out.to(dtype))
    return [out.detach()] + [x.grad for x in leaves]


def triton_grads(q, k, v, grad_out, p, seed):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = causal_attention(*leaves, p, backend="triton", seed=seed)
    out.backward(grad_out)
    return [out.detach()] + [x.grad for x in leaves]


def assert_close_to_float64(q, k, v, p, seed):
    """The kernels' out, dq, dk, dv against float64, next to PyTorch's reference in q's dtype."""
    B, H, T, D = q.shape
    keep = dropout_keep_mask(seed, B, H, T, p, backend="triton").to(q.device)
    grad_out = torch.randn_like(q)
    exact = reference_grads(q, k, v, grad_out, p, keep, torch.float64)
    torch_in_dtype = reference_grads(q, k, v, grad_out, p, keep, q.dtype)
    ours = triton_grads(q, k, v, grad_out, p, seed)
    for name, x, base, ref in zip(("out", "dq", "dk", "dv"), ours, torch_in_dtype, exact):
        assert x.dtype == q.dtype and x.shape == q.shape
        if T == 1 and name in ("dq", "dk"):
            # exactly 0 (one weight, always 1); PyTorch gets 0 exactly, the kernels get rounding:
            # delta = rowsum(dO ∘ O) uses O rounded to q's dtype, as in FlashAttention-2
            assert x.abs().max() <= 4 * torch.finfo(q.dtype).eps * D**0.5, name
        else:
            assert rel_err(x, ref) <= 2 * rel_err(base, ref) + 1e-6, (name, rel_err(x, ref),
                                                                     rel_err(base, ref))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("D", [8, 16, 32, 64])
@pytest.mark.parametrize("T", [1, 17, 64, 100])
def test_forward_and_gradients_match_float64(T, D, p, dtype):
    assert_close_to_float64(*qkv(1, 2, T, D, dtype), p, SEED)


@pytest.mark.skipif(not ON_CUDA, reason="long sequences and head size 128 are for the GPU; the "
                                        "interpreter covers the same code paths at small shapes")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, D", [(257, 128), (1000, 64), (2048, 128)])
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_large_shapes_on_cuda(T, D, p, dtype):
    assert_close_to_float64(*qkv(2, 3, T, D, dtype), p, SEED)


@pytest.mark.parametrize("seed", [0, 7, SEED])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_keep_mask_is_the_torch_mask_bit_for_bit(seed, p):
    ours = dropout_keep_mask(seed, 2, 3, 37, p, backend="triton")
    assert ours.dtype == torch.bool and ours.shape == (2, 3, 37, 37)
    assert torch.equal(ours.cpu(), torch_keep_mask(seed, 2, 3, 37, p))


def test_threshold_is_unsigned_above_half():
    # p > 0.5 puts the threshold past 2**31: compared signed, nearly everything would be kept
    assert dropout_threshold(0.9) > 2**31
    assert abs(dropout_keep_mask(3, 1, 1, 64, 0.9, backend="triton").float().mean().item() - 0.1) < 0.03


def test_strided_inputs_as_the_model_makes_them():
    # q, k, v are views of one (B, T, 3·H·D) tensor; dO is a transposed view as well
    B, H, T, D = 2, 2, 40, 16
    qkv_packed = torch.randn(B, T, 3 * H * D, device=DEVICE)
    q, k, v = (x.view(B, T, H, D).transpose(1, 2) for x in qkv_packed.split(H * D, dim=2))
    assert not q.is_contiguous()
    assert_close_to_float64(q, k, v, 0.2, SEED)


def test_deterministic_run_to_run():
    q, k, v = qkv(1, 2, 70, 32)
    grad_out = torch.randn_like(q)
    first, second = (triton_grads(q, k, v, grad_out, 0.2, SEED) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Every buffer the launchers allocate starts as NaN (floats) or 0x5A bytes (the mask), so an
    element a kernel forgets to write shows up."""
    def poisoned(allocate):
        def allocate_poisoned(*args, **kwargs):
            buffer = allocate(*args, **kwargs)
            return buffer.fill_(float("nan") if buffer.is_floating_point() else 0x5A)
        return allocate_poisoned
    monkeypatch.setattr(kernels.torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(kernels.torch, "empty_like", poisoned(torch.empty_like))


def test_every_output_element_is_written(poisoned_allocations):
    q, k, v = qkv(1, 2, 50, 24)  # tails in T and in the head size
    assert_close_to_float64(q, k, v, 0.2, SEED)
    out, lse = triton_attention.causal_attention(q, k, v, 0.2, torch.tensor(SEED))
    assert torch.isfinite(lse).all()
    assert torch.equal(dropout_keep_mask(SEED, 1, 2, 50, 0.2, backend="triton").cpu(),
                       torch_keep_mask(SEED, 1, 2, 50, 0.2))


def test_logsumexp_is_the_reference_one():
    q, k, v = qkv(2, 2, 33, 16)
    _, lse = triton_attention.causal_attention(q, k, v, 0.0, torch.tensor(0))
    s = (q.double() @ k.double().transpose(-2, -1)) / 4.0
    s = s.masked_fill(torch.ones(33, 33, dtype=torch.bool, device=DEVICE).triu(1), float("-inf"))
    assert lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), s.logsumexp(-1), rtol=1e-5, atol=1e-5)


def test_backend_resolves_to_triton_here():
    q, _, _ = qkv(1, 1, 4, 64)
    assert resolve_backend("triton", q) == "triton"


def test_unsupported_inputs_fall_back_with_a_warning():
    q, k, v = qkv(1, 2, 9, 8, torch.float64)
    with pytest.warns(RuntimeWarning, match="'triton' cannot run here .*float64"):
        out = causal_attention(q, k, v, backend="triton")
    torch.testing.assert_close(out, reference_attention(q, k, v))


def test_reasons_name_the_problem(monkeypatch):
    assert "head sizes up to 128" in triton_attention.unsupported(DEVICE, torch.float16, 256)
    assert "float64" in triton_attention.unsupported(DEVICE, torch.float64, 64)
    assert "CUDA" in triton_attention.unsupported("mps", torch.float32, 64)
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    assert "needs a CUDA GPU (or TRITON_INTERPRET=1" in triton_attention.unsupported("cpu", torch.float32, 64)


# slow (20-40 s): Triton's full compiler pipeline and ptxas; the only check without a GPU that the
# kernels are valid for one, which the interpreter cannot tell.
@pytest.mark.slow
@pytest.mark.skipif(ON_CUDA, reason="on a GPU the other tests compile and run the kernels")
def test_kernels_compile_for_an_h100():
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_compile_check.py")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("compiled ") == 8


@pytest.mark.skipif(not ON_CUDA, reason="the op's CUDA kernel is the Triton launcher; on CPU the op "
                                        "belongs to the C++ kernel (see test_attention.py)")
@pytest.mark.parametrize("dtype", DTYPES)
def test_op_opcheck_on_cuda(dtype):
    q, k, v = (x.requires_grad_() for x in qkv(2, 2, 70, 32, dtype))
    torch.library.opcheck(causal_attention_op, (q, k, v, 0.2, torch.tensor(SEED)))


def test_torch_compile_of_the_op_and_the_backend():
    # The op has the Triton launcher as its CUDA kernel; compiling the op with inductor on this
    # device must not trip on that (torch 2.13's triton_op failed so without a GPU), and the
    # triton backend compiles too (on CPU the interpreter is left out of the graph).
    q, k, v = (x.requires_grad_() for x in qkv(1, 2, 20, 16))
    seed = torch.tensor(SEED)

    def op_loss(q, k, v):
        return (causal_attention_op(q, k, v, 0.2, seed)[0] ** 2).sum()

    def backend_loss(q, k, v):
        return (causal_attention(q, k, v, 0.2, backend="triton", seed=seed) ** 2).sum()

    for loss, fullgraph in ((op_loss, True), (backend_loss, ON_CUDA)):
        compiled = torch.compile(loss, fullgraph=fullgraph)
        eager_grads = torch.autograd.grad(loss(q, k, v), (q, k, v))
        compiled_grads = torch.autograd.grad(compiled(q, k, v), (q, k, v))
        for a, b in zip(eager_grads, compiled_grads):
            torch.testing.assert_close(a, b)


def test_whole_model_triton_matches_torch():
    # dropout 0: the torch backend draws its dropout with F.dropout, not the Philox mask
    config = GPTConfig(vocab_size=65, block_size=48, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    model = GPT(config).to(DEVICE)
    idx = torch.randint(65, (2, 40), device=DEVICE)
    targets = torch.randint(65, (2, 40), device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        model.set_attention(backend)
        model.zero_grad()
        logits, loss = model(idx, targets)
        loss.backward()
        results[backend] = [logits, loss] + [p.grad.clone() for p in model.parameters()]
    for a, b in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
