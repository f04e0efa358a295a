"""Thread scaling of the C++ kernels: each workload at 1 thread, 2 threads and every core, with the
instruction-set copy the CPU picks and with the AVX2 copy forced (what most laptops run).

    pytest bench/bench_threads.py --benchmark-columns=median,rounds --benchmark-json=threads.json

Workloads: attention forward + backward at the seed's shape (32, 4, 128, 8) p = 0.2 and the
lecture's (64, 6, 256, 64) p = 0 and 0.2; 32 characters of sampling (the one-call decode step) at the
`gpu` preset's size; one training step at the `cpu` preset. `extra_info` holds the speed-up over 1
thread of the same workload and copy, measured in the same run (`speedup`), and the parallel
efficiency (speed-up / threads). The thread count is set per benchmark; FASTGPT_BENCH_THREADS is
not used here.
"""
import os

import pytest
import torch

from fastgpt.attention import causal_attention
from fastgpt.training.config import PRESETS, TrainConfig
from fastgpt.data.batches import RandomBatches, split
from fastgpt.model import GPT, GPTConfig
from fastgpt.ops import cpu
from fastgpt.train import train_step
from fastgpt.training.run import make_optimizer

THREADS = sorted({1, 2, os.cpu_count() or 1})
ISAS = ["best", "avx2+fma"]
_one_thread: dict[tuple[str, str], float] = {}


def attention_workload(shape, p):
    q, k, v = [torch.randn(shape, requires_grad=True) for _ in range(3)]
    grad_out = torch.randn(shape)

    def run():
        torch.autograd.grad(causal_attention(q, k, v, p, backend="cpp"), (q, k, v), grad_out)
    return run


def decode_workload():
    model = GPT(GPTConfig(vocab_size=65, block_size=256, n_embd=384, n_head=6, n_layer=6)).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    return lambda: model.generate(prompt, 32, seed=0)


def train_step_workload():
    cfg = TrainConfig(**PRESETS["cpu"])
    torch.manual_seed(0)
    batches = RandomBatches(split(torch.randint(65, (200_000,)), cfg.block_size), cfg.block_size,
                            cfg.batch_size, 0, torch.device("cpu"))
    model = GPT(cfg.model_config(65))
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    return lambda: train_step(model, optimizer, batches, cfg)


WORKLOADS = {
    "attention-32x4x128x8-p0.2": lambda: attention_workload((32, 4, 128, 8), 0.2),
    "attention-64x6x256x64-p0": lambda: attention_workload((64, 6, 256, 64), 0.0),
    "attention-64x6x256x64-p0.2": lambda: attention_workload((64, 6, 256, 64), 0.2),
    "decode-32-chars-gpu-size": decode_workload,
    "train-step-cpu-preset": train_step_workload,
}


@pytest.fixture(params=ISAS)
def isa(request):
    if cpu.missing is not None:
        pytest.skip(cpu.missing)
    best = cpu.instruction_set()
    name = best if request.param == "best" else request.param
    try:
        cpu.set_instruction_set(name)
    except RuntimeError:
        pytest.skip(f"this CPU does not run {name}")
    yield name
    cpu.set_instruction_set(best)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_scaling(benchmark, workload, isa, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = WORKLOADS[workload]()
        benchmark.group = f"{workload} {isa}"
        rounds = 5 if "64x6x256x64" in workload or "decode" in workload else 15
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    finally:
        torch.set_num_threads(previous)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(threads=threads, isa=isa, cpu_count=os.cpu_count())
    if threads == 1:
        _one_thread[workload, isa] = median
    elif (workload, isa) in _one_thread:
        speedup = _one_thread[workload, isa] / median
        benchmark.extra_info.update(speedup=speedup, efficiency=speedup / threads)
