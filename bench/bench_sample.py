"""Sampling speed: characters per second with the KV cache and the one-call C++ step against the
lecture's loop, side by side in one run.

    FASTGPT_BENCH_THREADS=2 pytest bench/bench_sample.py --benchmark-columns=median,rounds \\
        --benchmark-json=sample.json && python -m bench.ratios sample.json

A `gpu`-preset-sized model (vocab 65, block 256, n_embd 384, n_head 6, n_layer 6, ~10.8 M
parameters; random weights, which cost the same as trained ones) draws `chars` characters after a
one-character prompt, for 1, 8, 16 or 32 samples at once, with float32, bfloat16 or int8 weights in
the per-character steps. `extra_info` holds the characters per second over all samples
(samples × chars / median time) and, at one sample, the bytes of weights read per second
(weight bytes × chars per second), to set against the machine's memory bandwidth. 255 characters
fill the block exactly: every one of them is a cached step. The baseline is the lecture's
`generate` (tests/lecture_gpt.py), which runs the whole context through the model for every
character; with several samples it is timed over the first 64 characters, against the cache over
the same 64. The `cpu` preset's model draws the default 500 characters of `python -m fastgpt.sample`,
past its block, against the lecture's loop. bench/conftest.py sets torch's thread count: 2, or $FASTGPT_BENCH_THREADS.
Benchmark ids end with the provider (float32, bfloat16, int8, lecture), as bench.ratios reads them.
"""
import pytest
import torch

from tests.lecture_gpt import GPTLanguageModel
from fastgpt.decode import Decoder
from fastgpt.model import GPT, GPTConfig

SIZE = dict(vocab_size=65, block_size=256, n_embd=384, n_head=6, n_layer=6, dropout=0.2)
# The `cpu` preset's model: what `python -m fastgpt.sample` draws 500 characters from by default.
CPU_PRESET_SIZE = dict(vocab_size=65, block_size=128, n_embd=32, n_head=4, n_layer=4, dropout=0.2)


@pytest.fixture(scope="module")
def model():
    return GPT(GPTConfig(**SIZE, attention="auto")).eval()


@pytest.fixture(scope="module")
def lecture_model():
    return GPTLanguageModel(**SIZE).eval()


def weight_bytes(model, dtype) -> int:
    """Bytes of weight matrices and vectors one step reads (the embeddings: one row each)."""
    decoder = Decoder(model, model.kv_cache(1), dtype)
    embeddings = 2 * model.config.n_embd * decoder.params[0].element_size()
    return embeddings + sum(t.numel() * t.element_size() for t in decoder.params[2:] + decoder.scales)


def chars_per_second(benchmark, generate, samples: int, chars: int, rounds: int) -> float:
    prompt = torch.zeros(samples, 1, dtype=torch.long)
    generate(prompt, 1)  # warm-up: first-call allocations and kernel choices
    out = benchmark.pedantic(generate, args=(prompt, chars), rounds=rounds, iterations=1)
    assert out.shape == (samples, 1 + chars)
    rate = samples * chars / benchmark.stats.stats.median
    benchmark.extra_info.update(samples=samples, chars=chars, chars_per_s=rate)
    return rate


# Rounds: 3 where a round takes seconds; 1 where the work is a full pass per character (the exact
# window past block_size, the lecture's loop), which takes minutes on a shared 2-core machine.
@pytest.mark.parametrize("samples,chars,window,rounds,dtype", [
    (1, 255, "exact", 3, "float32"), (1, 255, "exact", 3, "bfloat16"), (1, 255, "exact", 3, "int8"),
    (1, 500, "exact", 1, "float32"), (1, 500, "slide", 3, "float32"),
    (8, 64, "exact", 3, "float32"), (16, 64, "exact", 3, "float32"),
    (8, 255, "exact", 3, "float32"), (8, 255, "exact", 3, "bfloat16"),
    (32, 255, "exact", 3, "float32"), (32, 255, "exact", 3, "bfloat16"),
    (16, 500, "slide", 3, "float32"),
])
def test_cached(benchmark, model, samples, chars, window, rounds, dtype):
    benchmark.group = f"{samples} samples, {chars} chars, window {window}"
    weights = None if dtype == "float32" else dtype
    rate = chars_per_second(benchmark, lambda idx, n: model.generate(idx, n, seed=0, window=window,
                                                                     dtype=weights),
                            samples, chars, rounds)
    if samples == 1:
        benchmark.extra_info["weight_bytes_per_s"] = weight_bytes(model, weights) * rate


@pytest.mark.parametrize("samples,chars,provider", [(1, 255, "lecture"), (1, 500, "lecture"),
                                                     (8, 64, "lecture"), (16, 64, "lecture")])
def test_lecture_loop(benchmark, lecture_model, samples, chars, provider):
    benchmark.group = f"{samples} samples, {chars} chars, window exact"
    with torch.no_grad():
        chars_per_second(benchmark, lecture_model.generate, samples, chars, rounds=1)


@pytest.mark.parametrize("provider", ["float32", "lecture"])
def test_cpu_preset_500_chars(benchmark, provider):
    """The default `python -m fastgpt.sample`: 500 characters from the `cpu` preset's model, 372 of
    them past its block of 128 (the exact window: a refill of the cache per character)."""
    benchmark.group = "cpu preset, 1 sample, 500 chars, window exact"
    torch.manual_seed(0)
    if provider == "lecture":
        model = GPTLanguageModel(**CPU_PRESET_SIZE).eval()
        with torch.no_grad():
            chars_per_second(benchmark, model.generate, 1, 500, rounds=3)
    else:
        model = GPT(GPTConfig(**CPU_PRESET_SIZE, attention="auto")).eval()
        chars_per_second(benchmark, lambda idx, n: model.generate(idx, n, seed=0), 1, 500, rounds=5)


def test_memory_bandwidth(benchmark):
    """The limit a one-sample step is held against: a copy of 256 MiB, far past the caches; bytes
    read plus written per second."""
    src = torch.randn(64 * 2**20)
    dst = torch.empty_like(src)
    benchmark.group = "memory bandwidth"
    benchmark.pedantic(dst.copy_, args=(src,), rounds=10, warmup_rounds=1)
    benchmark.extra_info["bytes_per_s"] = 2 * src.numel() * src.element_size() / benchmark.stats.stats.median
