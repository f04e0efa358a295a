"""Causal attention on CPU: the fused C++ op against the PyTorch reference and SDPA.

Forward, backward and forward + backward at the seed's shape, nanoGPT's CPU recipe and the
lecture's, with and without dropout, on the thread count of bench/conftest.py (2 unless
FASTGPT_BENCH_THREADS says otherwise). Each (shape, p, pass) is one pytest-benchmark group, so
`pytest bench/bench_attention_cpu.py` prints the three implementations side by side; the forward
runs with inputs that require grad, as in training.

    pytest bench/bench_attention_cpu.py --benchmark-json=attention.json
    python -m bench.ratios attention.json
"""
import pytest
import torch

from fastgpt.attention import causal_attention, resolve_backend

SHAPES = {"seed": (32, 4, 128, 8), "nanogpt-cpu": (12, 4, 64, 32), "lecture": (64, 6, 256, 64)}
IMPLEMENTATIONS = ("cpp", "torch", "sdpa")


def attend(implementation, q, k, v, p):
    return causal_attention(q, k, v, p, backend=implementation)  # sdpa is a backend too


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("timed", ["forward", "backward", "forward+backward"])
def test_attention(benchmark, timed, shape_name, p, implementation):
    shape = SHAPES[shape_name]
    q, k, v = [torch.randn(shape, requires_grad=True) for _ in range(3)]
    grad_out = torch.randn(shape)
    assert resolve_backend(implementation, q) == implementation, "the backend fell back"
    benchmark.group = f"{timed} {shape_name} {shape} p={p}"
    benchmark.extra_info.update(threads=torch.get_num_threads(), shape=list(shape), p=p,
                                timed=timed, implementation=implementation)
    rounds = 5 if shape_name == "lecture" else 20

    def forward():
        return attend(implementation, q, k, v, p)

    def backward(out):  # autograd.grad, not .backward(): no accumulation into .grad is timed
        return torch.autograd.grad(out, (q, k, v), grad_out)

    if timed == "forward":
        benchmark.pedantic(forward, rounds=rounds, warmup_rounds=1)
    elif timed == "backward":
        benchmark.pedantic(backward, setup=lambda: ((forward(),), {}), rounds=rounds, warmup_rounds=1)
    else:
        benchmark.pedantic(lambda: backward(forward()), rounds=rounds, warmup_rounds=1)
