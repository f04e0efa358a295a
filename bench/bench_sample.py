"""Sampling speed: characters per second with the KV cache against the lecture's loop.

    pytest bench/bench_sample.py --benchmark-columns=median,rounds

A `gpu`-preset-sized model (vocab 65, block 256, n_embd 384, n_head 6, n_layer 6; random weights,
which cost the same as trained ones) draws `chars` characters after a one-character prompt, for
1 or 16 samples at once. `extra_info` holds the characters per second over all samples
(samples × chars / median time). The baseline is the lecture's `generate`
(bench/lecture_gpt.py), which runs the whole context through the model for every character; with
16 samples it takes minutes per 256 characters on 2 CPU threads, so there it is timed over the first
64 characters, against the cache over the same 64. bench/conftest.py sets torch's thread count:
2, or $FASTGPT_BENCH_THREADS.
"""
import pytest
import torch

from bench.lecture_gpt import GPTLanguageModel
from fastgpt.model import GPT, GPTConfig

SIZE = dict(vocab_size=65, block_size=256, n_embd=384, n_head=6, n_layer=6, dropout=0.2)


@pytest.fixture(scope="module")
def model():
    return GPT(GPTConfig(**SIZE, attention="auto")).eval()


@pytest.fixture(scope="module")
def lecture_model():
    return GPTLanguageModel(**SIZE).eval()


def chars_per_second(benchmark, generate, samples: int, chars: int, rounds: int) -> None:
    prompt = torch.zeros(samples, 1, dtype=torch.long)
    generate(prompt, 1)  # warm-up: first-call allocations and kernel choices
    out = benchmark.pedantic(generate, args=(prompt, chars), rounds=rounds, iterations=1)
    assert out.shape == (samples, 1 + chars)
    benchmark.extra_info.update(samples=samples, chars=chars,
                                chars_per_s=samples * chars / benchmark.stats.stats.median)


# Rounds: 3 where a round takes seconds; 1 where the work is a full pass per character (the exact
# window past block_size, the lecture's loop), which takes minutes on a shared 2-core machine.
@pytest.mark.parametrize("samples,chars,window,rounds", [
    (1, 256, "exact", 3), (1, 500, "exact", 1), (1, 500, "slide", 3),
    (16, 64, "exact", 3), (16, 256, "exact", 3), (16, 500, "exact", 1), (16, 500, "slide", 3),
])
def test_cached(benchmark, model, samples, chars, window, rounds):
    benchmark.group = f"{samples} samples, {chars} chars"
    chars_per_second(benchmark, lambda idx, n: model.generate(idx, n, seed=0, window=window),
                     samples, chars, rounds)


@pytest.mark.parametrize("samples,chars", [(1, 256), (1, 500), (16, 64)])
def test_lecture_loop(benchmark, lecture_model, samples, chars):
    benchmark.group = f"{samples} samples, {chars} chars"
    with torch.no_grad():
        chars_per_second(benchmark, lecture_model.generate, samples, chars, rounds=1)
