"""The fused C++ attention (`cpp` backend, fastgpt._C) against the float64 reference."""
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgpt import cpp_attention
from fastgpt.attention import (causal_attention, dropout_keep_mask, reference_attention,
                               resolve_backend)
from fastgpt.attention_op import causal_attention_op
from fastgpt.model import GPT, GPTConfig

pytestmark = pytest.mark.skipif(cpp_attention.unsupported("cpu", torch.float32, 8) is not None,
                                reason=f"cpp backend off: {cpp_attention.unsupported('cpu', torch.float32, 8)}")

SEED = 20240601


@pytest.fixture(autouse=True)
def _poison_empty_tensors(request):
    """torch.empty (the kernels' output buffers included) fills with NaN in deterministic mode, so
    an element a kernel forgets to write shows up as NaN. Not for the slow training run: it would
    only slow it down."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(False)


def make_qkv(B, H, T, D, contiguous=True, dtype=torch.float64):
    """Fresh random q, k, v; non-contiguous ones are (B, T, H, D) tensors seen as (B, H, T, D), as
    the model makes them."""
    if contiguous:
        return [torch.randn(B, H, T, D, dtype=dtype) for _ in range(3)]
    return [torch.randn(B, T, H, D, dtype=dtype).transpose(1, 2) for _ in range(3)]


def attention_and_grads(fn, qkv, grad_out, dtype):
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


def assert_as_accurate_as_reference(qkv, p, dtype=torch.float32, eps=1e-5):
    """The kernel's error against float64 (output, dq, dk, dv) is at most twice the error of the
    PyTorch reference computed in `dtype`, plus eps (~170 float32 ulps at 1: the FlashAttention
    backward's dS = P (dP - rowsum(dO ∘ O)) cancels where the reference's softmax backward does
    not, e.g. dk at T = 3, p = 0.5 with 1.9e-6 against the reference's 1.5e-7)."""
    B, H, T, _ = qkv[0].shape
    keep = dropout_keep_mask(SEED, B, H, T, p, backend="cpp") if p > 0 else None
    grad_out = torch.randn(qkv[0].shape, dtype=torch.float64)

    def reference(q, k, v):
        return reference_attention(q, k, v, p, keep)

    def kernel(q, k, v):
        return causal_attention(q, k, v, p, backend="cpp", seed=SEED)

    exact = attention_and_grads(reference, qkv, grad_out, torch.float64)
    reference_errors = relative_errors(attention_and_grads(reference, qkv, grad_out, dtype), exact)
    kernel_results = attention_and_grads(kernel, qkv, grad_out, dtype)
    for result in kernel_results:
        assert result.dtype == dtype and not result.isnan().any()
    kernel_errors = relative_errors(kernel_results, exact)
    for name, err, ref_err in zip(("out", "dq", "dk", "dv"), kernel_errors, reference_errors):
        assert err <= 2 * ref_err + eps, f"{name}: kernel error {err:.2e} vs reference {ref_err:.2e}"


# T = 1, T not a multiple of any tile (kLanes 8, kRowGroup 4, kQueryBlock 32, kKeyBlock 64), T up
# to 1024; every head size; B·H from 1 to 256.
SHAPES = [
    (1, 1, 1, 8),
    (2, 3, 17, 8),
    (1, 2, 67, 16),
    (3, 1, 130, 32),
    (1, 2, 201, 64),
    (1, 1, 97, 128),
    (16, 16, 33, 8),
    (1, 1, 1024, 8),
    (1, 1, 1024, 64),
]


@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_reference(shape, p):
    assert_as_accurate_as_reference(make_qkv(*shape), p)


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("shape", [(2, 3, 45, 8), (1, 4, 150, 32), (2, 2, 70, 128)],
                         ids=lambda s: "x".join(map(str, s)))
def test_non_contiguous_inputs(shape, p):
    qkv = make_qkv(*shape, contiguous=False)
    assert not qkv[0].is_contiguous()
    assert_as_accurate_as_reference(qkv, p)


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_bfloat16_computes_in_float32(p):
    assert_as_accurate_as_reference(make_qkv(2, 2, 77, 16), p, dtype=torch.bfloat16, eps=1e-3)


@pytest.mark.parametrize("shape", [(1, 2, 9, 8), (1, 1, 70, 16)], ids=lambda s: "x".join(map(str, s)))
def test_gradcheck_float64_with_dropout(shape):
    q, k, v = [t.requires_grad_() for t in make_qkv(*shape)]
    seed = torch.tensor(SEED)
    assert torch.autograd.gradcheck(lambda q, k, v: causal_attention_op(q, k, v, 0.3, seed)[0], (q, k, v))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_kept_fraction(p):
    mask = dropout_keep_mask(SEED, 4, 4, 256, p, backend="cpp")
    assert abs(mask.float().mean().item() - (1 - p)) < 0.005  # 1M elements: std 0.0005


def test_same_seed_same_mask_other_seed_other_mask():
    a = dropout_keep_mask(1, 2, 3, 40, 0.2, backend="cpp")
    assert torch.equal(a, dropout_keep_mask(1, 2, 3, 40, 0.2, backend="cpp"))
    assert not torch.equal(a, dropout_keep_mask(2, 2, 3, 40, 0.2, backend="cpp"))


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 12345, 2**62 - 1])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 37), (1, 2, 70)])
def test_cpp_mask_is_the_torch_mask(seed, shape):
    assert torch.equal(dropout_keep_mask(seed, *shape, 0.2, backend="cpp"),
                       dropout_keep_mask(seed, *shape, 0.2, backend="torch"))


def test_kernel_applies_its_mask():
    """With p near 1 almost every weight is dropped: the output must follow the mask, not just be
    close to the no-dropout output."""
    q, k, v = make_qkv(1, 2, 50, 8)
    keep = dropout_keep_mask(SEED, 1, 2, 50, 0.9, backend="cpp")
    out = causal_attention(q, k, v, 0.9, backend="cpp", seed=SEED)
    torch.testing.assert_close(out, reference_attention(q, k, v, 0.9, keep))


@pytest.mark.parametrize("shape", [(8, 4, 100, 8), (1, 1, 300, 32), (1, 4, 300, 16)],
                         ids=lambda s: "x".join(map(str, s)))
def test_deterministic(shape):
    """Same bits on every run, including when one head's keys are split over several tasks."""
    qkv = make_qkv(*shape, dtype=torch.float32)
    grad_out = torch.randn(shape)

    def run():
        return attention_and_grads(lambda q, k, v: causal_attention(q, k, v, 0.2, backend="cpp", seed=3),
                                   qkv, grad_out, torch.float32)

    for first, second in zip(run(), run()):
        assert torch.equal(first, second)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 150),
       D=st.sampled_from([8, 16, 32]), p=st.sampled_from([0.0, 0.1, 0.5]), contiguous=st.booleans())
def test_property_random_shapes(B, H, T, D, p, contiguous):
    assert_as_accurate_as_reference(make_qkv(B, H, T, D, contiguous), p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    q, k, v = [t.requires_grad_() for t in make_qkv(2, 2, 70, 16, dtype=dtype)]
    torch.library.opcheck(causal_attention_op, (q, k, v, 0.2, torch.tensor(SEED)))


def test_torch_compile_fullgraph():
    q, k, v = [t.requires_grad_() for t in make_qkv(2, 2, 40, 8, dtype=torch.float32)]

    def attend(q, k, v):
        return causal_attention(q, k, v, 0.2, backend="cpp", seed=torch.tensor(SEED))

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    out.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    eager = attend(q, k, v)
    eager.sum().backward()
    torch.testing.assert_close(out, eager)
    for compiled_grad, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(compiled_grad, t.grad)


def test_auto_picks_cpp_on_cpu():
    assert resolve_backend("auto", torch.randn(1, 1, 4, 8)) == "cpp"


def test_unsupported_head_size_falls_back_with_a_warning():
    q, k, v = make_qkv(1, 2, 10, 12, dtype=torch.float32)
    assert "head size 12" in cpp_attention.unsupported("cpu", torch.float32, 12)
    with pytest.warns(RuntimeWarning, match="head size 12"):
        out = causal_attention(q, k, v, backend="cpp")
    torch.testing.assert_close(out, reference_attention(q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per kind of input, not one per call
        causal_attention(q, k, v, backend="cpp")


def test_op_takes_inputs_the_kernel_cannot():
    """The op's CPU kernel runs the reference body for inputs the C++ kernels do not take."""
    q, k, v = make_qkv(1, 2, 10, 12)
    out, lse = causal_attention_op(q, k, v, 0.0, torch.tensor(0))
    torch.testing.assert_close(out, reference_attention(q, k, v))


def test_unsupported_reasons():
    assert cpp_attention.unsupported("cuda", torch.float32, 8) is not None
    assert "dtype" in cpp_attention.unsupported("cpu", torch.float16, 8)
    assert cpp_attention.unsupported("cpu", torch.bfloat16, 64) is None


def test_model_with_cpp_attention_matches_torch():
    """The whole model at p = 0: same loss and same gradients with either backend."""
    config = dict(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    reference = GPT(GPTConfig(**config, attention="torch"))
    fused = GPT(GPTConfig(**config, attention="torch"))
    fused.load_state_dict(reference.state_dict())
    fused.set_attention("cpp")
    idx, targets = torch.randint(65, (8, 64)), torch.randint(65, (8, 64))
    _, loss_reference = reference(idx, targets)
    _, loss_fused = fused(idx, targets)
    loss_reference.backward()
    loss_fused.backward()
    torch.testing.assert_close(loss_fused, loss_reference, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(reference.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_info_lists_every_backend():
    from fastgpt.info import report
    text = report()
    assert "cpp     available" in text and "auto -> cpp" in text
    for backend in ("torch", "triton", "sdpa"):
        assert f"  {backend} " in text


@pytest.mark.slow
def test_training_with_cpp_attention_reaches_the_same_val_loss(corpus_path, tmp_path):
    """The `cpu` preset (dropout 0.2) for 2000 iterations, once with each backend, from the same
    initial weights and batches: the val losses agree within 0.03 (the dropout masks differ, so the
    runs are not identical). Slow: two trainings of 2000 steps; a few minutes on 2 cores."""
    from dataclasses import replace

    from fastgpt.config import PRESETS, TrainConfig
    from fastgpt.train import METRICS, read_metrics, train

    val_losses = {}
    for backend in ("torch", "cpp"):
        cfg = replace(TrainConfig(), **{**PRESETS["cpu"], "max_iters": 2000, "eval_interval": 2000},
                      data=str(corpus_path), device="cpu", attention=backend,
                      out_dir=str(tmp_path / backend), sample_chars=0)
        train(cfg)
        val_losses[backend] = read_metrics(tmp_path / backend / METRICS)[-1]["val_loss"]
    assert val_losses["torch"] < 3.0  # it learned something: a uniform guess is ln 65 = 4.17
    assert abs(val_losses["cpp"] - val_losses["torch"]) < 0.03, val_losses
