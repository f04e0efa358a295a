"""Reading a text for training, in MB/s of UTF-8: what `python -m fastgpt.train --data` does
(`fastgpt.data.text.encode_chars`: two streaming passes, ids in memory) beside `python -m fastgpt.prepare
--tokenizer char` (ids into train.bin / val.bin), on tiny Shakespeare repeated to 64 MB, and the
check of a loaded checkpoint's tensors against the load itself (a `gpu`-size model with AdamW state).

    pytest bench/bench_data.py --benchmark-columns=median,rounds

`extra_info["mb_per_s"]` is the file's size over the median.
"""
import pytest
import torch

from fastgpt import checkpoint
from fastgpt.training.config import PRESETS
from fastgpt.data.text import TextSource, encode_chars, shakespeare_bytes
from fastgpt.model import GPT, GPTConfig
from fastgpt.prepare import prepare
from fastgpt.data.tokenizer import CharTokenizer

TEXT_MB = 64


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    corpus = shakespeare_bytes()
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_bytes(corpus * (TEXT_MB * 10**6 // len(corpus)))
    return path


def _throughput(benchmark, path) -> None:
    benchmark.extra_info["mb_per_s"] = path.stat().st_size / 1e6 / benchmark.stats.stats.median


def test_encode_for_training(benchmark, text_file):
    benchmark.group = "read a text"
    benchmark.pedantic(lambda: encode_chars(TextSource.file(text_file)), rounds=5, warmup_rounds=1)
    _throughput(benchmark, text_file)


def test_prepare_char_dataset(benchmark, text_file, tmp_path):
    benchmark.group = "read a text"
    outs = iter(range(10**6))
    benchmark.pedantic(lambda: prepare(text_file, "char", tmp_path / f"ds{next(outs)}"), rounds=3)
    _throughput(benchmark, text_file)


@pytest.fixture(scope="module")
def gpu_size_checkpoint(tmp_path_factory):
    tokenizer = CharTokenizer.from_text(shakespeare_bytes().decode("utf-8"))
    sizes = {k: PRESETS["gpu"][k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **sizes))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    checkpoint.save(checkpoint.make(model, CharTokenizer("ab"), optimizer=optimizer.state_dict()), path)
    return path


@pytest.mark.parametrize("part", ["load", "check-weights", "check-optimizer"])
def test_checkpoint_finite_check(benchmark, gpu_size_checkpoint, part):
    """load: torch.load and every check sampling makes (the weights' included); the weights'
    check alone; the optimizer moments' check that --resume adds."""
    benchmark.group = "checkpoint load (gpu size + AdamW)"
    ckpt = checkpoint.load_checkpoint(gpu_size_checkpoint)
    tensors = {"check-weights": checkpoint.model_tensors, "check-optimizer": checkpoint.optimizer_tensors}
    if part == "load":
        benchmark.pedantic(checkpoint.load_checkpoint, args=(gpu_size_checkpoint,), rounds=7)
    else:
        benchmark.pedantic(lambda: checkpoint.check_finite(tensors[part](ckpt), gpu_size_checkpoint), rounds=7)
