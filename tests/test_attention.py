"""Every attention backend against the one reference (`fastgpt.attention.reference`).

The fused backends are the registered op `fastgpt::causal_attention` with a device's kernels: `cpp`
(the C++ kernels, CPU) and `triton` (the Triton kernels: compiled on CUDA; without a GPU, run in
Triton's interpreter on CPU tensors), run by the `fused` fixture of tests/fused_kernels.py. Outputs
and gradients are compared with a float64 reference that applies the backend's own dropout mask;
the FlashAttention rule: a kernel's error against float64 is within 2x the error of the PyTorch
reference run in the same dtype. Every buffer torch allocates starts as NaN (deterministic mode),
so an output element a kernel forgets to write shows up.
"""
import math
import os
import subprocess
import sys
import warnings
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

import fastgpt.attention
from fused_kernels import DEVICE, FUSED, FUSED_PARAMS, cpp_instruction_set, device_of, fused, why_not  # noqa: F401
from triton_cpu import INTERPRETED, ON_CUDA, triton_kernels_on_cpu
from fastgpt import ops
from fastgpt.attention import (backend_status, causal_attention, causal_attention_qkv, dropout_keep_mask,
                               reference_attention, resolve_backend)
from fastgpt.model import GPT, GPTConfig
from fastgpt.ops import cpu, cuda
from fastgpt.ops import mask as philox

SEED = 2**62 - 12345  # a 64-bit seed: both key words of Philox matter


def takes(backend: str, dtype: torch.dtype) -> str | None:
    """Why `backend` takes no `dtype` inputs (None when it does)."""
    if backend == "cpp":
        return cpu.unsupported("cpu", dtype, 8)
    if dtype == torch.float64:
        return "the Triton kernels have no float64"
    if INTERPRETED and not ON_CUDA and dtype == torch.bfloat16:
        return "Triton's interpreter computes bfloat16 dot products wrongly (triton 3.9)"
    return None


@pytest.fixture(autouse=True)
def _poison_empty_tensors(request):
    if request.node.get_closest_marker("slow"):
        yield
        return
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(False)


def fused_attention(q, k, v, p, seed=SEED):
    """The op as the fused backends call it (the `fused` fixture picks the kernels)."""
    return ops.causal_attention(q, k, v, p, torch.tensor(seed))[0]


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def make_qkv(B, H, T, D, dtype=torch.float64, device="cpu", packed=False):
    """Fresh random q, k, v (B, H, T, D); `packed`: views of one (B, T, 3·H·D) tensor, as the
    model's qkv projection makes them."""
    if packed:
        qkv = torch.randn(B, T, 3 * H * D, dtype=dtype, device=device)
        return [x.view(B, T, H, D).transpose(1, 2) for x in qkv.split(H * D, dim=2)]
    return [torch.randn(B, H, T, D, dtype=dtype, device=device) for _ in range(3)]


def outputs_and_grads(fn, qkv, grad_out, dtype):
    """fn's output and the gradients of <output, grad_out> w.r.t. q, k, v, computed in `dtype`."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in qkv]
    out = fn(*leaves)
    out.backward(grad_out.to(dtype))
    return [out.detach()] + [t.grad for t in leaves]


def relative_errors(results, exact):
    """Max error over max magnitude; the floor of 1 keeps a quantity that is exactly 0 (dq at T = 1)
    from turning rounding noise into a huge relative error."""
    return [((r.double() - e).abs().max() / e.abs().max().clamp_min(1.0)).item()
            for r, e in zip(results, exact)]


# Added to the 2x rule: ~170 float32 ulps at 1 (the FlashAttention backward's dS = P (dP - rowsum(dO ∘ O))
# cancels where the reference's softmax backward does not, e.g. dk at T = 3, p = 0.5), and the
# rounding of O to the input dtype in rowsum(dO ∘ O) for the 16-bit types (dq, dk are 0 at T = 1).
EPS = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def assert_as_accurate_as_reference(attend, backend, qkv, p, dtype, seed=SEED):
    """`attend`'s out, dq, dk, dv (in `dtype`) against float64, next to the reference in `dtype`."""
    B, H, T, _ = qkv[0].shape
    keep = dropout_keep_mask(seed, B, H, T, p, backend).to(qkv[0].device) if p > 0 else None
    grad_out = torch.randn(qkv[0].shape, dtype=torch.float64, device=qkv[0].device)

    def ref(q, k, v):
        return reference_attention(q, k, v, p, keep)

    exact = outputs_and_grads(ref, qkv, grad_out, torch.float64)
    reference_errors = relative_errors(outputs_and_grads(ref, qkv, grad_out, dtype), exact)
    results = outputs_and_grads(lambda q, k, v: attend(q, k, v, p, seed), qkv, grad_out, dtype)
    for result in results:
        assert result.dtype == dtype and result.shape == qkv[0].shape and not result.isnan().any()
    for name, err, ref_err in zip(("out", "dq", "dk", "dv"), relative_errors(results, exact),
                                  reference_errors):
        assert err <= 2 * ref_err + EPS[dtype], f"{name}: error {err:.2e} vs reference {ref_err:.2e}"


# ---------------------------------------------------------------------------------------------
# The fused backends against the reference
# ---------------------------------------------------------------------------------------------

# T = 1, T not a multiple of any tile (C++: 8 lanes, 4-row groups, 32-query and 64-key blocks;
# Triton interpreter: 16 and 32), every head size, B·H from 1 to 256.
SHAPES = [(1, 1, 1, 8), (2, 3, 17, 8), (1, 2, 67, 16), (1, 2, 100, 32), (1, 1, 64, 64)]
# Head size 128 in every dtype too where the Triton kernels run compiled (CUDA).
DTYPE_SHAPES = SHAPES + ([(1, 2, 97, 128)] if ON_CUDA else [])
# Too slow for Triton's interpreter: long sequences, head size 128, many heads.
LARGE_SHAPES = [(3, 1, 130, 32), (1, 2, 201, 64), (1, 1, 97, 128), (16, 16, 33, 8),
                (1, 1, 1024, 8), (1, 1, 1024, 64)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def shape_id(shape) -> str:
    return "x".join(map(str, shape))


def skip_unless_takes(backend, dtype):
    reason = takes(backend, dtype)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", DTYPE_SHAPES, ids=shape_id)
def test_fused_matches_float64_reference(fused, shape, dtype, p):
    skip_unless_takes(fused, dtype)
    qkv = make_qkv(*shape, device=device_of(fused))
    assert_as_accurate_as_reference(fused_attention, fused, qkv, p, dtype)


@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=shape_id)
def test_fused_matches_float64_reference_at_large_shapes(fused, shape, p):
    if fused == "triton" and not ON_CUDA:
        pytest.skip("too slow for Triton's interpreter; the small shapes cover the same code paths")
    qkv = make_qkv(*shape, device=device_of(fused))
    assert_as_accurate_as_reference(fused_attention, fused, qkv, p, torch.float32)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_fused_takes_the_models_strided_views(fused, p):
    qkv = make_qkv(2, 3, 45, 16, device=device_of(fused), packed=True)
    assert not qkv[0].is_contiguous()
    assert_as_accurate_as_reference(fused_attention, fused, qkv, p, torch.float32)


def test_fused_takes_q_k_v_of_different_strides(fused):
    """q, k, v that share no strides are read as contiguous copies (csrc/attention.cpp's
    readable_qkv; the Triton launchers' _shared_strides)."""
    B, H, T, D = 2, 3, 29, 16
    q, v = make_qkv(B, H, T, D, torch.float32, device_of(fused))[::2]
    k = torch.randn(B, T, H, D, device=device_of(fused)).transpose(1, 2)  # (B, H, T, D), other strides
    assert q.stride() != k.stride()
    assert_as_accurate_as_reference(fused_attention, fused, [q, k, v], 0.2, torch.float32)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 150),
       D=st.sampled_from([8, 16, 32]), p=st.sampled_from([0.0, 0.1, 0.5]), packed=st.booleans())
def test_cpp_matches_reference_at_random_shapes(B, H, T, D, p, packed):
    if why_not("cpp"):
        pytest.skip(why_not("cpp"))
    assert_as_accurate_as_reference(fused_attention, "cpp", make_qkv(B, H, T, D, packed=packed), p,
                                    torch.float32)


def test_fused_gradcheck_in_float64(fused):
    skip_unless_takes(fused, torch.float64)
    q, k, v = [t.requires_grad_() for t in make_qkv(1, 2, 19, 8)]
    assert torch.autograd.gradcheck(lambda q, k, v: fused_attention(q, k, v, 0.3), (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fused_opcheck(fused, dtype):
    skip_unless_takes(fused, dtype)
    q, k, v = [t.requires_grad_() for t in make_qkv(2, 2, 21, 16, dtype, device_of(fused))]
    torch.library.opcheck(torch.ops.fastgpt.causal_attention.default, (q, k, v, 0.2, torch.tensor(SEED)))


def test_fused_compiles_without_graph_break(fused):
    """torch.compile(fullgraph=True) over the op as the model calls it: q, k, v transposed views,
    the output transposed back and viewed, the dropout seed drawn in the graph. The op's fake must
    give the kernels' strides. The compiled forward and backward run the backend's kernels: they
    are checked against the float64 reference, not against themselves."""
    B, H, T, D = 2, 2, 24, 16

    def attend(q, k, v, p, seed):
        y = ops.causal_attention(q, k, v, p, torch.tensor(seed))[0]
        return y.transpose(1, 2).contiguous().view(B, T, H * D).view(B, T, H, D).transpose(1, 2)

    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    qkv = make_qkv(B, H, T, D, device=device_of(fused), packed=True)
    assert_as_accurate_as_reference(compiled, fused, qkv, 0.2, torch.float32)


def test_fused_is_deterministic(fused):
    """Same bits on every run, including when one head's keys are split over several tasks."""
    qkv = make_qkv(4, 2, 150, 16, torch.float32, device_of(fused))
    grad_out = torch.randn_like(qkv[0])
    first, second = (outputs_and_grads(lambda q, k, v: fused_attention(q, k, v, 0.2), qkv, grad_out,
                                       torch.float32) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_fused_logsumexp_is_the_reference_one(fused):
    q, k, v = make_qkv(2, 2, 33, 16, torch.float32, device_of(fused))
    _, lse = ops.causal_attention(q, k, v, 0.0, torch.tensor(0))
    s = (q.double() @ k.double().transpose(-2, -1)) / 4.0
    s = s.masked_fill(torch.ones(33, 33, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    assert lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), s.logsumexp(-1), rtol=1e-5, atol=1e-5)


def test_fused_applies_its_mask_at_high_dropout(fused):
    """With p = 0.9 almost every weight is dropped: the output must follow the mask, not just be
    close to the output without dropout."""
    q, k, v = make_qkv(1, 2, 50, 8, torch.float32, device_of(fused))
    keep = dropout_keep_mask(SEED, 1, 2, 50, 0.9, fused).to(q.device)
    torch.testing.assert_close(fused_attention(q, k, v, 0.9), reference_attention(q, k, v, 0.9, keep))


# ---------------------------------------------------------------------------------------------
# The packed op: qkv (B, T, 3C) in, (B, T, C) out, one (B, T, 3C) gradient
# ---------------------------------------------------------------------------------------------


def packed_outputs_and_grads(attend, qkv, grad_out, dtype):
    leaf = qkv.detach().to(dtype).requires_grad_()
    out = attend(leaf)
    out.backward(grad_out.to(dtype))
    return [out.detach(), leaf.grad]


@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=shape_id)
def test_fused_packed_op_matches_float64_reference(fused, shape, p):
    B, H, T, D = shape
    qkv = torch.randn(B, T, 3 * H * D, dtype=torch.float64, device=device_of(fused))
    grad_out = torch.randn(B, T, H * D, dtype=torch.float64, device=qkv.device)

    def ref(x):
        return causal_attention_qkv(x, H, p, backend="torch", seed=SEED)

    exact = packed_outputs_and_grads(ref, qkv, grad_out, torch.float64)
    reference_errors = relative_errors(packed_outputs_and_grads(ref, qkv, grad_out, torch.float32), exact)
    results = packed_outputs_and_grads(lambda x: ops.causal_attention_qkv(x, H, p, torch.tensor(SEED))[0], qkv,
                                       grad_out, torch.float32)
    for name, result, want, err, ref_err in zip(("out", "dqkv"), results, exact,
                                                relative_errors(results, exact), reference_errors):
        assert result.shape == want.shape and not result.isnan().any()
        assert err <= 2 * ref_err + EPS[torch.float32], f"{name}: error {err:.2e} vs reference {ref_err:.2e}"


def test_fused_packed_op_gradcheck_and_opcheck(fused):
    skip_unless_takes(fused, torch.float64)
    qkv = torch.randn(2, 9, 3 * 2 * 8, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor(SEED)
    assert torch.autograd.gradcheck(lambda x: ops.causal_attention_qkv(x, 2, 0.3, seed)[0], (qkv,))
    torch.library.opcheck(torch.ops.fastgpt.causal_attention_qkv.default,
                          (qkv.float().detach().requires_grad_(), 2, 0.3, seed))


@pytest.mark.skipif(why_not("cpp") is not None, reason="the C++ extension is not built")
def test_training_step_has_no_layout_copies_or_bernoulli():
    model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.2,
                          attention="cpp"))
    idx = torch.randint(65, (4, 32))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        _, loss = model(idx, idx)
        loss.backward()
    ops = {e.key for e in prof.key_averages()}
    assert not ops & {"aten::bernoulli_", "aten::cat", "aten::clone", "aten::contiguous"}, ops
    # addmm starts from a copy of the broadcast bias (the Linear layers' own): not a layout copy
    copies = [e.input_shapes for e in prof.events()
              if e.name == "aten::copy_" and (e.cpu_parent is None or e.cpu_parent.name != "aten::addmm")]
    assert not copies, copies


def test_model_with_fused_attention_matches_the_reference(fused):
    """The whole model at p = 0: same logits, loss and gradients as with the torch backend."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=48, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    model.to(device_of(fused))
    idx, targets = (torch.randint(65, (2, 40), device=device_of(fused)) for _ in range(2))
    # The model reaches the op through the dispatch point: on the CPU by the name `cpp`, whose
    # kernels the `fused` fixture may have swapped for Triton's interpreter.
    fused_name = "cpp" if device_of(fused) == "cpu" else fused
    assert resolve_backend(fused_name, idx.new_empty(1, 1, 1, 16, dtype=torch.float32)) == fused_name
    results = {}
    for backend in ("torch", fused):
        model.set_attention(fused_name if backend == fused else backend)
        model.zero_grad()
        logits, loss = model(idx, targets)
        loss.backward()
        results[backend] = [logits, loss] + [p.grad.clone() for p in model.parameters()]
    for a, b in zip(results[fused], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The dropout mask: one definition, every backend
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rounds, key, counter, expected", [
    (7, 0, (0, 0, 0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (10, 0, (0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, 0xFFFFFFFF_FFFFFFFF, (0xFFFFFFFF,) * 4, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, 0x299F31D0_A4093822, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(rounds, key, counter, expected):
    # Random123's published vectors (kat_vectors) for philox4x32_7 and philox4x32_10
    words = philox.philox4x32(key, tuple(torch.tensor([c]) for c in counter), rounds)
    assert tuple(w.item() for w in words) == expected


# T = 1, T below, at and past one column block (8) and past the Triton tiles (16, 32, 64)
MASK_SHAPES = [(1, 1, 1), (1, 1, 7), (2, 3, 9), (2, 3, 37), (2, 1, 70), (1, 1, 130)]


@pytest.mark.parametrize("seed", [0, 2**31 + 5, SEED])
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=shape_id)
@pytest.mark.parametrize("p", [0.2, 0.97])
def test_every_backend_draws_the_reference_mask(fused, seed, shape, p):
    ours = dropout_keep_mask(seed, *shape, p, backend=fused)
    assert ours.dtype == torch.bool and ours.shape == (*shape, shape[-1])
    assert torch.equal(ours.cpu(), dropout_keep_mask(seed, *shape, p))


def test_fused_keep_mask_opcheck(fused):
    seed = torch.tensor(SEED, device=device_of(fused))
    mask = ops.attention_keep_mask(seed, 2, 3, 37, 0.3)
    assert mask.device.type == device_of(fused)
    assert torch.equal(mask.cpu(), philox.attention_keep_mask(SEED, 2, 3, 37, 0.3))
    torch.library.opcheck(ops.attention_keep_mask, (seed, 2, 3, 37, 0.3))


@pytest.mark.cuda
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=shape_id)
def test_triton_draws_the_cpp_mask(shape):
    """The GPU's mask is the CPU's, bit for bit, for the same seed (the C++ and the Triton kernel
    side by side, not only each against the reference)."""
    for backend in FUSED:
        if why_not(backend):
            pytest.skip(f"{backend}: {why_not(backend)}")
    for seed, p in ((0, 0.2), (SEED, 0.5)):
        cpp = dropout_keep_mask(seed, *shape, p, backend="cpp")
        with nullcontext() if ON_CUDA else triton_kernels_on_cpu():
            assert torch.equal(dropout_keep_mask(seed, *shape, p, backend="triton").cpu(), cpp)


@pytest.mark.parametrize("shape", MASK_SHAPES, ids=shape_id)
def test_every_cpp_instruction_set_draws_the_reference_mask(cpp_instruction_set, shape):
    for seed, p in ((0, 0.2), (SEED, 0.5)):
        assert torch.equal(dropout_keep_mask(seed, *shape, p, backend="cpp"), dropout_keep_mask(seed, *shape, p))


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_every_cpp_instruction_set_matches_the_reference(cpp_instruction_set, p):
    assert_as_accurate_as_reference(fused_attention, "cpp", make_qkv(2, 3, 37, 16, packed=True), p, torch.float32)


def test_threshold_and_scale():
    assert philox.dropout_threshold(0.2) == 13107 and philox.dropout_threshold(0.0) == 0
    assert philox.dropout_threshold(1 - 1e-9) == 65535  # a draw is always kept: the scale is finite
    assert philox.dropout_keep_scale(0.2) == 65536 / (65536 - 13107)


def fast_mask(seed, B, H, T, p):
    """The C++ mask where it is built (fast), else the reference: the tests above show they agree."""
    return dropout_keep_mask(seed, B, H, T, p, backend="cpp" if why_not("cpp") is None else "torch")


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_keep_rate_is_binomial(p):
    mask = fast_mask(3, 8, 8, 384, p)  # 9.4 million draws
    keep = 1 - philox.dropout_threshold(p) / 65536
    sigma = math.sqrt(keep * (1 - keep) / mask.numel())
    assert abs(mask.double().mean().item() - keep) < 5 * sigma


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.double().flatten(), b.double().flatten()]))[0, 1].item()


def test_no_correlation_between_neighbours():
    """Pearson correlation of the keep bits of neighbouring seeds, batches, heads, rows, columns of a
    block and column blocks: ~N(0, 1/n) for independent bits, so 5/sqrt(n) bounds it."""
    m = fast_mask(10, 4, 4, 256, 0.5)  # (B, H, T, T)
    pairs = {
        "seed": (m, fast_mask(11, 4, 4, 256, 0.5)),
        "batch": (m[:-1], m[1:]),
        "head": (m[:, :-1], m[:, 1:]),
        "row": (m[:, :, :-1], m[:, :, 1:]),
        "column in a block": (m[..., :-1], m[..., 1:]),
        "column block": (m[..., :-8], m[..., 8:]),
        "next block, next row": (m[..., :-1, :-8], m[..., 1:, 8:]),
    }
    for name, (a, b) in pairs.items():
        assert abs(correlation(a, b)) < 5 / math.sqrt(a.numel()), name


def test_mean_over_seeds_is_the_output_without_dropout(fused):
    """Kept weights scaled by 1/(1 - p_eff): the mean output over many seeds is the p = 0 output,
    within 5 standard errors, element by element."""
    q, k, v = make_qkv(1, 2, 20, 8, torch.float32, device_of(fused))
    exact = fused_attention(q, k, v, 0.0).double()
    n = 4000 if fused == "cpp" else 300  # the interpreter is slow
    outs = torch.stack([fused_attention(q, k, v, 0.3, seed).double() for seed in range(n)])
    standard_error = outs.std(dim=0) / math.sqrt(n)
    assert ((outs.mean(dim=0) - exact).abs() <= 5 * standard_error + 1e-6).all()


def test_mask_depends_on_the_seed_only():
    a = dropout_keep_mask(1, 2, 3, 40, 0.2)
    assert torch.equal(a, dropout_keep_mask(1, 2, 3, 40, 0.2))
    assert not torch.equal(a, dropout_keep_mask(2, 2, 3, 40, 0.2))


def test_sdpa_draws_no_shared_mask():
    with pytest.raises(ValueError, match="no dropout mask for backend 'sdpa'"):
        dropout_keep_mask(1, 1, 1, 4, 0.2, backend="sdpa")


# ---------------------------------------------------------------------------------------------
# The reference itself and the dispatch point
# ---------------------------------------------------------------------------------------------


def test_reference_is_causal_and_scaled():
    q, k, v = make_qkv(2, 3, 17, 8)
    out = reference_attention(q, k, v)
    D = q.shape[-1]
    for i in (0, 5, 16):
        w = torch.softmax((q[..., i:i + 1, :] @ k[..., : i + 1, :].transpose(-2, -1)) / D**0.5, dim=-1)
        torch.testing.assert_close(out[..., i:i + 1, :], w @ v[..., : i + 1, :])


def test_reference_decoding_step_is_the_last_rows_of_the_full_attention():
    q, k, v = make_qkv(2, 3, 17, 8)
    torch.testing.assert_close(reference_attention(q[..., -3:, :], k, v), reference_attention(q, k, v)[..., -3:, :])


def test_torch_backend_with_a_seed_uses_the_shared_mask():
    q, k, v = make_qkv(2, 3, 17, 8)
    out = causal_attention(q, k, v, 0.25, backend="torch", seed=3)
    torch.testing.assert_close(out, reference_attention(q, k, v, 0.25, dropout_keep_mask(3, 2, 3, 17, 0.25)))


@pytest.mark.parametrize("backend", ["sdpa", *FUSED_PARAMS])  # torch is the reference itself
def test_dispatch_runs_each_backend_to_the_reference(backend):
    """Through the public entry point at p = 0 (sdpa draws its own masks)."""
    reason = backend_status(DEVICE, torch.float32, 16)[backend]
    if reason is not None:
        pytest.skip(reason)
    q, k, v = make_qkv(2, 2, 30, 16, torch.float32, DEVICE)
    torch.testing.assert_close(causal_attention(q, k, v, backend=backend), reference_attention(q, k, v),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_auto_picks_the_fused_backend_of_the_device():
    expected = "triton" if ON_CUDA else ("cpp" if why_not("cpp") is None else "torch")
    assert resolve_backend("auto", torch.randn(1, 1, 4, 64, device=DEVICE)) == expected


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("cuda-magic", torch.randn(1, 1, 4, 8))


def test_backend_that_cannot_run_falls_back_once_with_a_warning():
    q, k, v = make_qkv(1, 2, 10, 12, torch.float32)
    with pytest.warns(RuntimeWarning, match="'cpp' cannot run here .*head size 12"):
        out = causal_attention(q, k, v, backend="cpp")
    torch.testing.assert_close(out, reference_attention(q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per kind of input, not one per call
        causal_attention(q, k, v, backend="cpp")


@pytest.mark.skipif(cpu.missing is not None, reason="the C++ extension is not built")
def test_cpp_reasons_name_the_problem():
    assert "head size 12" in cpu.unsupported("cpu", torch.float32, 12)
    assert "float16" in cpu.unsupported("cpu", torch.float16, 8)
    assert "CPU tensors, not cuda" in cpu.unsupported("cuda", torch.float32, 8)


@pytest.mark.skipif(cuda.missing is not None, reason="Triton is not installed")
def test_triton_reasons_name_the_problem():
    assert "CUDA tensors, not cpu" in cuda.unsupported("cpu", torch.float32, 64)
    assert "float64" in cuda.unsupported("cuda", torch.float64, 64)
    assert "head size 256" in cuda.unsupported("cuda", torch.float16, 256)


def test_missing_extension_is_the_reason_everywhere(monkeypatch):
    """Without fastgpt._C, the cpp backend is off with the reason, and auto falls back to torch."""
    monkeypatch.setattr(cpu, "missing", "the C++ extension fastgpt._C is not built (test)")
    monkeypatch.setattr(fastgpt.attention, "_resolved", {})
    assert backend_status("cpu", torch.float32, 8)["cpp"] == cpu.missing
    assert resolve_backend("auto", torch.randn(1, 1, 1, 8)) == "torch"
    assert "not built" in fastgpt.attention.residual_dropout_status("cpu")


def test_info_lists_every_backend():
    from fastgpt.info import report
    text = report()
    for backend in ("torch", "cpp", "triton", "sdpa"):
        assert f"  {backend} " in text
    assert f"auto -> {resolve_backend('auto', torch.randn(1, 1, 1, 8))}" in text


# slow (about 3 minutes of CPU, spread over the cores): Triton's full compiler pipeline and ptxas;
# the only check without a GPU that the kernels are valid for one, which the interpreter cannot tell.
@pytest.mark.slow
@pytest.mark.skipif(ON_CUDA or cuda.missing is not None, reason="on a GPU the other tests compile the kernels")
def test_triton_kernels_compile_for_a_t4_an_a100_and_an_h100():
    """Every Triton kernel compiles for sm_75 (T4: float16, float32), sm_80 (A100) and sm_90
    (H100) (bfloat16, float16, float32), at both ends of the autotuner's tile lists, with and
    without dropout, head sizes 64 and 128 (tests/triton_compile_check.py says which pairs)."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_compile_check.py")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    for target in ("sm_75", "sm_80", "sm_90"):
        assert result.stdout.count(f"compiled {target} ") == (21 if target == "sm_75" else 31), result.stdout


@pytest.mark.slow
def test_training_with_cpp_attention_follows_the_torch_run(tmp_path, monkeypatch):
    """The `cpu` preset (dropout 0.2) for 300 iterations, once with each backend, from the same
    initial weights and batches. The torch backend is given the seeds the fused op draws, so that
    both runs drop the same weights and compute the same function: the losses at every evaluation
    agree to rounding (a kernel that trained differently would drift apart), and the run learns.
    About a minute on 2 cores."""
    if why_not("cpp"):
        pytest.skip(why_not("cpp"))
    from fastgpt.training.config import PRESETS, TrainConfig
    from fastgpt.ops.mask import draw_seed
    from fastgpt.train import train
    from fastgpt.training.metrics import METRICS, read_metrics

    torch_backend = fastgpt.attention._BACKENDS["torch"]

    def attend_with_drawn_seed(q, k, v, p, seed):
        return torch_backend.attend(q, k, v, p, draw_seed() if seed is None and p > 0 else seed)

    shared_masks = replace(torch_backend, attend=attend_with_drawn_seed,
                           attend_qkv=fastgpt.attention._on_heads(attend_with_drawn_seed))
    monkeypatch.setitem(fastgpt.attention._BACKENDS, "torch", shared_masks)
    losses = {}
    for backend in ("torch", "cpp"):
        cfg = replace(TrainConfig(), **{**PRESETS["cpu"], "max_iters": 300, "eval_interval": 100, "eval_iters": 20},
                      device="cpu", attention=backend, out_dir=str(tmp_path / backend), sample_chars=0)
        train(cfg)
        losses[backend] = [(row["train_loss"], row["val_loss"]) for row in read_metrics(tmp_path / backend / METRICS)]
    assert losses["torch"][-1][1] < 2.9  # it learned: a uniform guess is ln 65 = 4.17
    for (cpp_train, cpp_val), (torch_train, torch_val) in zip(losses["cpp"], losses["torch"]):
        assert abs(cpp_train - torch_train) < 2e-3 and abs(cpp_val - torch_val) < 2e-3, losses
