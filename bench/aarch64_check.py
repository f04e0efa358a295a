"""The C++ extension's kernels against the references, on whatever CPU runs it: bench/aarch64_qemu.sh
runs it under QEMU on the cross-built aarch64 extension. Sizes are tiny (emulation runs ~0.5 GFLOP/s).

Checks, each printed with its errors, and failing with an AssertionError:
- the machine, torch, and the instruction-set copy the kernels run (on aarch64: baseline, the only one);
- fastgpt::causal_attention and ::causal_attention_qkv, forward and backward, against the float64
  reference in float64, float32 and bfloat16, with dropout 0 and 0.2 (the reference applying the C++
  kernels' own keep mask), by the rule of tests/test_attention.py: error <= 2x the reference's own
  error in that dtype + eps; the C++ keep mask equals fastgpt.ops.mask's bit for bit; a gradcheck;
- fastgpt::dropout_add and its backward against the reference, keep bits equal to fastgpt.ops.mask's;
- the sampling step (the op fastgpt::decode_step) against the model's full pass.
"""
import platform
import warnings

import torch

from fastgpt import ops
from fastgpt.attention import causal_attention_qkv, dropout_keep_mask, reference_attention
from fastgpt.attention.reference import reference_dropout_add
from fastgpt.decode import cached_steps, unsupported
from fastgpt.model import GPT, GPTConfig
from fastgpt.ops import cpu
from fastgpt.ops.mask import residual_keep_mask

# The bfloat16 reference's matmul: torch warns, with a C++ stack, that oneDNN's bfloat16 path needs a
# CPU with bfloat16 instructions (the emulated Neoverse N1 has none) and falls back to BLAS.
warnings.filterwarnings("ignore", message="mkldnn_matmul failed")

SEED = 2**62 - 12345  # a 64-bit seed: both key words of Philox matter
EPS = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}  # tests/test_attention.py's
SHAPES = [(1, 1, 1, 8), (2, 3, 17, 8), (1, 2, 67, 16), (1, 1, 40, 32), (1, 1, 33, 64)]  # (B, H, T, D)


def relative_errors(results, exact):
    return [((r.double() - e).abs().max() / e.abs().max().clamp_min(1.0)).item() for r, e in zip(results, exact)]


def outputs_and_grads(fn, inputs, grad_out, dtype):
    """fn's output and the gradients of <output, grad_out> w.r.t. the inputs, computed in `dtype`."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out.to(dtype))
    return [out.detach()] + [t.grad for t in leaves]


def check_against_reference(label, fused, ref, inputs, grad_out, dtype, names):
    exact = outputs_and_grads(ref, inputs, grad_out, torch.float64)
    reference_errors = relative_errors(outputs_and_grads(ref, inputs, grad_out, dtype), exact)
    results = outputs_and_grads(fused, inputs, grad_out, dtype)
    errors = relative_errors(results, exact)
    print(f"  {label:<34} " + "  ".join(f"{n} {e:.1e} (ref {r:.1e})" for n, e, r in zip(names, errors, reference_errors)))
    for name, result, err, ref_err in zip(names, results, errors, reference_errors):
        assert result.dtype == dtype and not result.isnan().any(), name
        assert err <= 2 * ref_err + EPS[dtype], f"{label} {name}: error {err:.2e} vs reference {ref_err:.2e}"


def check_attention():
    print("fastgpt::causal_attention (B, H, T, D) vs the float64 reference: max relative error")
    for B, H, T, D in SHAPES:
        for p in (0.0, 0.2):
            keep = None
            if p > 0:
                keep = dropout_keep_mask(SEED, B, H, T, p, "cpp")
                assert torch.equal(keep, dropout_keep_mask(SEED, B, H, T, p, "torch")), "C++ mask != Python Philox"
            qkv = [torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3)]
            grad_out = torch.randn(B, H, T, D, dtype=torch.float64)
            for dtype in EPS:
                check_against_reference(f"{B}x{H}x{T}x{D} p={p} {str(dtype)[6:]}",
                                        lambda q, k, v: ops.causal_attention(q, k, v, p, torch.tensor(SEED))[0],
                                        lambda q, k, v: reference_attention(q, k, v, p, keep),
                                        qkv, grad_out, dtype, ("out", "dq", "dk", "dv"))
    q, k, v = [torch.randn(1, 2, 9, 8, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda q, k, v: ops.causal_attention(q, k, v, 0.3, torch.tensor(SEED))[0],
                                    (q, k, v))
    print("  gradcheck float64 1x2x9x8 p=0.3: ok")


def check_packed_attention():
    print("fastgpt::causal_attention_qkv, qkv (B, T, 3·H·D) vs the float64 reference")
    for B, H, T, D in SHAPES[:4]:
        for p in (0.0, 0.2):
            qkv = torch.randn(B, T, 3 * H * D, dtype=torch.float64)
            grad_out = torch.randn(B, T, H * D, dtype=torch.float64)
            check_against_reference(f"{B}x{H}x{T}x{D} p={p} float32",
                                    lambda x: ops.causal_attention_qkv(x, H, p, torch.tensor(SEED))[0],
                                    lambda x: causal_attention_qkv(x, H, p, backend="torch", seed=SEED),
                                    [qkv], grad_out, torch.float32, ("out", "dqkv"))


def error_in_eps(result, exact):
    """max |result - exact| / (1 + |exact|) in units of result's eps (2: test_dropout_add.py's atol = rtol = 2 eps)."""
    return ((result.double() - exact).abs() / (1 + exact.abs())).max().item() / torch.finfo(result.dtype).eps


def check_dropout_add():
    print("fastgpt::dropout_add, p = 0.3, vs the reference in float64: max |error| / (1 + |value|) in eps of the dtype")
    for n in (1, 7, 64, 4097, 3 * 4096 + 13):
        seed = torch.tensor(n + 5)
        kept = ops.dropout_add(torch.ones(n), torch.zeros(n), 0.3, seed) != 0
        assert torch.equal(kept, residual_keep_mask(n + 5, n, 0.3)), f"n={n}: keep bits"
        line = []
        for dtype in EPS:
            x, residual = torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype)
            out = ops.dropout_add(x, residual, 0.3, seed)
            dx = ops.dropout_add_backward(x, 0.3, seed)  # the gradient for x of <out, x>
            err = error_in_eps(out, reference_dropout_add(x.double(), residual.double(), 0.3, n + 5))
            dx_err = error_in_eps(dx, reference_dropout_add(x.double(), torch.zeros(n, dtype=torch.float64), 0.3, n + 5))
            line.append(f"{str(dtype)[6:]} {err:.2f}/{dx_err:.2f}")
            assert out.dtype == dtype and err <= 2 and dx_err <= 2, f"n={n} {dtype}"  # test_dropout_add.py's bound
        print(f"  n={n:<6} keep bits equal; out/dx: " + "  ".join(line))


def check_decode_step():
    print("fastgpt::decode_step (one position per call) vs the model's full pass: max |logit error|")
    torch.manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        config = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0, attention="torch")
        model = GPT(config).to(dtype).eval()
        assert unsupported(model) is None
        idx = torch.randint(0, 13, (3, 16))
        cache = model.kv_cache(3)
        with torch.no_grad():
            full = model(idx)[0][:, 1:]
            model(idx[:, :1], cache=cache)
            step = cached_steps(model, cache)
            steps = torch.stack([step(idx[:, t].contiguous()) for t in range(1, 16)], dim=1)
        err = (steps - full).abs().max().item()
        print(f"  {str(dtype)[6:]}: {err:.1e}")
        assert err <= tol


def main():
    print(f"machine {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    assert cpu.missing is None, cpu.missing
    print(f"fastgpt._C: {cpu.extension.__file__}; kernels run the '{cpu.instruction_set()}' copy")
    if platform.machine() == "aarch64":
        assert cpu.instruction_set() == "baseline"
        for name in ("avx2+fma", "avx512"):  # x86 copies are not compiled in: asking for one is refused
            try:
                cpu.set_instruction_set(name)
                raise AssertionError(f"set_instruction_set({name!r}) was accepted on aarch64")
            except RuntimeError as error:
                print(f"  set_instruction_set({name!r}) refused: {str(error).splitlines()[0]}")
    torch.manual_seed(0)
    check_attention()
    check_packed_attention()
    check_dropout_add()
    check_decode_step()
    print("all checks passed")


if __name__ == "__main__":
    main()
