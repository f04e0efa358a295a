"""One training step at the `cpu` preset (batch 32, block 128, n_embd 32, 4 heads, 4 layers,
dropout 0.2): fastgpt's GPT against the lecture's model (tests/lecture_gpt.py), each with the same
batches, AdamW and gradient clipping (`fastgpt.train.train_step`), so only the model differs.

    pytest bench/bench_train.py                      # 2 CPU threads (bench/conftest.py)
    FASTGPT_BENCH_THREADS=1 pytest bench/bench_train.py

Tokens per second = batch_size * block_size / the median step time; each report's extra_info holds
it, and machine_info the thread count.
"""
import pytest
import torch

from tests.lecture_gpt import GPTLanguageModel
from fastgpt.attention import resolve_backend
from fastgpt.training.config import PRESETS, TrainConfig
from fastgpt.data.batches import RandomBatches, split
from fastgpt.model import GPT
from fastgpt.train import train_step
from fastgpt.training.run import make_optimizer

CPU = torch.device("cpu")
MODELS = ["fastgpt-torch", "fastgpt-sdpa", "fastgpt-cpp", "fastgpt-auto", "lecture"]


def make_model(name: str, cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    if name == "lecture":
        return GPTLanguageModel(vocab_size, cfg.block_size, cfg.n_embd, cfg.n_head, cfg.n_layer,
                                cfg.dropout)
    cfg.attention = name.removeprefix("fastgpt-")
    return GPT(cfg.model_config(vocab_size))


@pytest.mark.parametrize("name", MODELS)
def test_train_step_cpu_preset(benchmark, name):
    cfg = TrainConfig(**PRESETS["cpu"])
    vocab_size = 65
    torch.manual_seed(0)
    # Random tokens: a step's cost does not depend on the text, and no corpus is needed.
    ids = torch.randint(vocab_size, (200_000,))
    batches = RandomBatches(split(ids, cfg.block_size), cfg.block_size, cfg.batch_size, 0, CPU)
    model = make_model(name, cfg, vocab_size)
    optimizer = make_optimizer(model, cfg, CPU)
    benchmark.group = "train step, cpu preset"
    benchmark.pedantic(train_step, args=(model, optimizer, batches, cfg), rounds=40, iterations=1,
                       warmup_rounds=3)
    tokens = cfg.batch_size * cfg.block_size
    benchmark.extra_info["tokens_per_step"] = tokens
    benchmark.extra_info["tokens_per_s_median"] = tokens / benchmark.stats.stats.median
    benchmark.extra_info["threads"] = torch.get_num_threads()
    if name != "lecture":
        q = torch.empty(1, cfg.n_head, 1, cfg.n_embd // cfg.n_head)
        benchmark.extra_info["attention_backend"] = resolve_backend(cfg.attention, q)
