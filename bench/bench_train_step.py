"""One training step (forward, backward, AdamW step) at the `cpu` preset: fastgpt's GPT with each
CPU attention backend beside the lecture-style model (bench/lecture_gpt.py). Tokens per second
are in each benchmark's extra_info; `python -m bench.ratios` prints the ratios of one run."""
import pytest
import torch

from bench.lecture_gpt import GPTLanguageModel
from fastgpt.config import PRESETS
from fastgpt.model import GPT, GPTConfig

PRESET = PRESETS["cpu"]
VOCAB = 65


def make_model(name: str) -> torch.nn.Module:
    sizes = dict(vocab_size=VOCAB, block_size=PRESET["block_size"], n_embd=PRESET["n_embd"],
                 n_head=PRESET["n_head"], n_layer=PRESET["n_layer"], dropout=PRESET["dropout"])
    if name == "lecture":
        return GPTLanguageModel(**sizes)
    return GPT(GPTConfig(**sizes, attention=name))


@pytest.mark.parametrize("model_name", ["lecture", "torch", "cpp", "sdpa"])
def test_train_step(benchmark, model_name):
    model = make_model(model_name).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRESET["learning_rate"])
    B, T = PRESET["batch_size"], PRESET["block_size"]
    idx, targets = torch.randint(VOCAB, (B, T)), torch.randint(VOCAB, (B, T))

    def step():
        _, loss = model(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    benchmark.group = "train step, cpu preset"
    benchmark.pedantic(step, rounds=20, warmup_rounds=2)
    benchmark.extra_info.update(threads=torch.get_num_threads(), tokens_per_step=B * T,
                                tokens_per_s=B * T / benchmark.stats.stats.median)
