"""Causal attention on a CUDA GPU: the Triton kernels against F.scaled_dot_product_attention.

Forward, backward and forward + backward, bf16, causal, p in {0, 0.2}, at the seed's shape, the
lecture's and two long ones, for three implementations: `triton` (fastgpt's backend, through
`causal_attention`, drawing a dropout seed per call as training does), `sdpa` (PyTorch's default
choice) and `sdpa-flash` (SDPA with the flash backend forced). Each (pass, shape, p) is one
pytest-benchmark group, the SDPA cases first, so the Triton case records its ratio to both.

Timing: one round launches the timed call `calls` times back to back and then synchronises, so a
round is GPU time plus one sync (calls is picked per case so that a round lasts >= 2 ms after
warm-up, which also runs Triton's autotuning); extra_info holds ms per call, TFLOP/s (causal
forward = 2·B·H·T²·D FLOPs, backward 2.5x that, both 3.5x) and the ratios. Skips without CUDA.

    pytest bench/bench_attention_gpu.py --benchmark-json=bench/results/attention_gpu.json
    python -m bench.gpu_table bench/results/attention_gpu.json
"""
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastgpt.attention import causal_attention, resolve_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="GPU benchmarks: this machine has no CUDA device")

SHAPES = {"seed": (32, 4, 128, 8), "lecture": (64, 6, 256, 64),
          "long-2k": (8, 16, 2048, 64), "long-8k": (4, 16, 8192, 128)}
IMPLEMENTATIONS = ("sdpa", "sdpa-flash", "triton")  # SDPA first: the Triton case reads its times
FLOP_FACTOR = {"forward": 1.0, "backward": 2.5, "forward+backward": 3.5}
ROUND_SECONDS, ROUNDS = 2e-3, 20

_ms_per_call: dict[tuple, float] = {}  # (timed, shape name, p, implementation) -> median ms/call


def attend(implementation, q, k, v, p):
    if implementation == "sdpa-flash":
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return causal_attention(q, k, v, p, backend="sdpa")
    return causal_attention(q, k, v, p, backend=implementation)


def timed_call(timed, implementation, q, k, v, grad_out, p):
    """The callable that one benchmark call times."""
    if timed == "forward":
        def forward():
            with torch.no_grad():
                attend(implementation, q, k, v, p)
        return forward
    if timed == "backward":
        out = attend(implementation, q, k, v, p)
        return lambda: torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True)
    return lambda: torch.autograd.grad(attend(implementation, q, k, v, p), (q, k, v), grad_out)


def seconds_per_call(call) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("timed", ["forward", "backward", "forward+backward"])
def test_attention_gpu(benchmark, timed, shape_name, p, implementation):
    shape = SHAPES[shape_name]
    B, H, T, D = shape
    q, k, v = [torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3)]
    grad_out = torch.randn_like(q)
    if implementation == "triton":
        assert resolve_backend("triton", q) == "triton", "the triton backend fell back"
    try:
        call = timed_call(timed, implementation, q, k, v, grad_out, p)
        for _ in range(3):  # warm-up: compilation, autotuning, caches
            call()
    except RuntimeError as error:  # e.g. SDPA's flash backend refusing this shape
        pytest.skip(f"{implementation} cannot run {shape}: {error}")
    calls = max(1, min(1000, math.ceil(ROUND_SECONDS / seconds_per_call(call))))

    def round_of_calls():
        for _ in range(calls):
            call()
        torch.cuda.synchronize()

    benchmark.group = f"{timed} {shape_name} {shape} p={p}"
    benchmark.pedantic(round_of_calls, setup=torch.cuda.synchronize, rounds=ROUNDS,
                       warmup_rounds=2)
    ms = benchmark.stats.stats.median / calls * 1e3
    _ms_per_call[timed, shape_name, p, implementation] = ms
    flops = FLOP_FACTOR[timed] * 2 * B * H * T * T * D
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), dtype="bfloat16",
                                shape=list(shape), p=p, timed=timed,
                                implementation=implementation, calls_per_round=calls,
                                ms_per_call=ms, tflops=flops / (ms * 1e-3) / 1e12)
    if implementation == "triton":
        for baseline in ("sdpa", "sdpa-flash"):
            if (timed, shape_name, p, baseline) in _ms_per_call:
                benchmark.extra_info[f"speedup_vs_{baseline}"] = \
                    _ms_per_call[timed, shape_name, p, baseline] / ms
