"""Training beyond one process and one corpus: torchrun DDP (gloo on CPU), --grad-accum, --dataset,
mixed precision, --compile, bits per character."""
import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

from fastgpt import checkpoint
from fastgpt.attention import BACKENDS, backend_status
from fastgpt.data.text import shakespeare
from fastgpt.data.dataset import bits_per_char
from fastgpt.errors import UserError
from fastgpt.model import GPT, GPTConfig
from fastgpt.prepare import prepare
from fastgpt.data.tokenizer import BPETokenizer
from fastgpt.train import main as train_main

TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16",
        "--eval-iters", "2", "--sample-chars", "0", "--device", "cpu", "--learning-rate", "1e-2"]


@pytest.fixture(scope="module")
def text_path(tmp_path_factory):
    """The first 50,000 characters of tiny Shakespeare: enough for batches, fast to encode."""
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(shakespeare()[:50_000], encoding="utf-8")
    return path


def torchrun(nproc: int, *args) -> None:
    """`torchrun --standalone --nproc_per_node=nproc -m fastgpt.train ARGS` on CPU (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={nproc}", "-m", "fastgpt.train", *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def metrics(out_dir) -> list[dict]:
    rows = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    return [{k: row[k] for k in ("iter", "train_loss", "val_loss", "val_bpc")} for row in rows]


def weights(out_dir) -> dict:
    return checkpoint.load_checkpoint(out_dir / "last.pt")["model"]


def assert_same_run(a, b, exact: bool) -> None:
    ma, mb = metrics(a), metrics(b)
    wa, wb = weights(a), weights(b)
    assert [m["iter"] for m in ma] == [m["iter"] for m in mb]
    if exact:
        assert ma == mb
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        return
    for ra, rb in zip(ma, mb):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-5)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Data parallel
# ---------------------------------------------------------------------------------------------


def test_two_gloo_processes_equal_one_process_with_the_global_batch(tmp_path, text_path):
    """Global batch 8: two processes of 4 (torchrun, gloo), one process of 8, and one process of
    4 accumulating 2 micro-batches train the same model to float rounding."""
    run = ["--data", text_path, *TINY, "--dropout", "0", "--max-iters", "6", "--eval-interval", "3"]
    torchrun(2, *run, "--batch-size", "4", "--out-dir", tmp_path / "ddp")
    train_main([*map(str, run), "--batch-size", "8", "--out-dir", str(tmp_path / "one")])
    train_main([*map(str, run), "--batch-size", "4", "--grad-accum", "2",
                "--out-dir", str(tmp_path / "accum")])
    assert_same_run(tmp_path / "ddp", tmp_path / "one", exact=False)
    # (Its evaluations score batches of 4, not 8: only the weights compare.)
    for name, w in weights(tmp_path / "accum").items():
        torch.testing.assert_close(w, weights(tmp_path / "one")[name], rtol=1e-4, atol=1e-5)
    assert weights(tmp_path / "one")["lm_head.bias"].abs().sum() > 0  # it trained


@pytest.mark.slow  # three torchrun launches of two processes each: 20-40 s on 2 cores
def test_resume_under_ddp_continues_exactly(tmp_path, text_path):
    """With dropout (a different mask in each process), 6 steps in one go and 3 + 3 resumed give
    the same losses and weights bit for bit: each rank's generator is in the checkpoint."""
    run = ["--data", text_path, *TINY, "--dropout", "0.2", "--batch-size", "4", "--eval-interval", "3"]
    torchrun(2, *run, "--max-iters", "6", "--out-dir", tmp_path / "whole")
    torchrun(2, *run, "--max-iters", "3", "--out-dir", tmp_path / "halves")
    torchrun(2, "--resume", "--max-iters", "6", "--out-dir", tmp_path / "halves")
    assert len(checkpoint.load_checkpoint(tmp_path / "halves" / "last.pt")["rng"]["ranks"]) == 2
    assert_same_run(tmp_path / "whole", tmp_path / "halves", exact=True)


def test_processes_draw_disjoint_shares_of_the_global_batch():
    from fastgpt.data.batches import RandomBatches
    data = {"train": torch.arange(1000)}
    one = RandomBatches(data, 8, 6, seed=3, device=torch.device("cpu"))
    ranks = [RandomBatches(data, 8, 3, seed=3, device=torch.device("cpu"), rank=r, world_size=2)
             for r in range(2)]
    for _ in range(3):
        x_one, _ = one.batch("train")
        shares = [rb.batch("train")[0] for rb in ranks]
        assert torch.equal(torch.cat(shares), x_one)
        assert not torch.equal(shares[0], shares[1])


# ---------------------------------------------------------------------------------------------
# Prepared datasets, BPE and bits per character
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, text_path):
    root = tmp_path_factory.mktemp("datasets")
    prepare(text_path, "char", root / "char")
    prepare(text_path, "bpe", root / "bpe", vocab_size=300)
    return root


def test_dataset_char_trains_like_the_text_file(tmp_path, text_path, datasets):
    run = [*TINY, "--dropout", "0", "--batch-size", "4", "--max-iters", "4", "--eval-interval", "2"]
    train_main(["--data", str(text_path), *run, "--out-dir", str(tmp_path / "text")])
    train_main(["--dataset", str(datasets / "char"), *run, "--out-dir", str(tmp_path / "mmap")])
    assert_same_run(tmp_path / "mmap", tmp_path / "text", exact=True)
    row = metrics(tmp_path / "text")[-1]
    assert row["val_bpc"] == pytest.approx(row["val_loss"] / math.log(2))  # one char per token


def test_bpe_dataset_checkpoint_holds_its_tokenizer(tmp_path, datasets):
    out = tmp_path / "bpe_run"
    train_main(["--dataset", str(datasets / "bpe"), *TINY, "--batch-size", "4", "--max-iters", "2",
                "--eval-interval", "2", "--out-dir", str(out)])
    model, tokenizer = checkpoint.load(out / "last.pt")
    assert isinstance(tokenizer, BPETokenizer) and model.config.vocab_size == tokenizer.vocab_size == 300
    meta = json.loads((datasets / "bpe" / "meta.json").read_text())
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    chars_per_token = meta["val"]["chars"] / meta["val"]["tokens"]
    assert chars_per_token > 1.3  # BPE tokens span several characters
    assert row["val_bpc"] == pytest.approx(row["val_loss"] / chars_per_token / math.log(2))
    text = "ROMEO: what light through yonder window breaks?"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_bits_per_char():
    assert bits_per_char(math.log(2), 1.0) == pytest.approx(1.0)
    assert bits_per_char(3.0, 2.5) == pytest.approx(3.0 / 2.5 / math.log(2))


def test_resume_with_another_tokenizer_is_one_line_error(tmp_path, datasets):
    out = tmp_path / "run"
    train_main(["--dataset", str(datasets / "char"), *TINY, "--batch-size", "4", "--max-iters", "2",
                "--eval-interval", "2", "--out-dir", str(out)])
    before = (out / "last.pt").read_bytes()
    r = subprocess.run([sys.executable, "-m", "fastgpt.train", "--resume", "--max-iters", "4",
                        "--dataset", str(datasets / "bpe"), "--out-dir", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "another tokenizer" in r.stderr and "Traceback" not in r.stderr
    assert (out / "last.pt").read_bytes() == before


def test_data_and_dataset_together_is_an_error(tmp_path, text_path, datasets):
    with pytest.raises(UserError, match="exclude each other; pass only one of them"):
        train_main(["--data", str(text_path), "--dataset", str(datasets / "char"),
                    "--out-dir", str(tmp_path / "x")])


def test_dataset_shorter_than_a_block_is_an_error(tmp_path, datasets):
    with pytest.raises(UserError, match="smaller --block-size"):
        train_main(["--dataset", str(datasets / "char"), "--block-size", "10000",
                    "--out-dir", str(tmp_path / "x")])


# ---------------------------------------------------------------------------------------------
# Mixed precision
# ---------------------------------------------------------------------------------------------


def tiny_model(attention: str, dropout: float = 0.0) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32,
                         dropout=dropout, attention=attention))


def batch(T=32):
    g = torch.Generator().manual_seed(1)
    return torch.randint(40, (4, T), generator=g), torch.randint(40, (4, T), generator=g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attention", [b for b in BACKENDS if b != "triton"])  # triton: CUDA only
def test_backends_run_under_cpu_autocast(attention, dtype):
    """Each backend takes what autocast gives it (q, k, v in the low precision) or falls back to
    the PyTorch reference: loss and gradients close to float32's."""
    model = tiny_model(attention)
    x, y = batch()
    _, loss32 = model(x, y)
    grads32 = torch.autograd.grad(loss32, list(model.parameters()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an explicit backend falling back says so
        with torch.autocast("cpu", dtype=dtype):
            _, loss = model(x, y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
    assert loss.dtype == torch.float32  # cross-entropy runs in float32 under autocast
    assert loss.item() == pytest.approx(loss32.item(), rel=2e-2)
    for g, g32 in zip(grads, grads32):
        assert g.dtype == torch.float32
        assert (g - g32).norm() <= 0.1 * g32.norm() + 1e-4


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_training_in_low_precision_learns_as_float32_does(tmp_path, text_path, dtype):
    run = ["--data", str(text_path), *TINY, "--batch-size", "8", "--max-iters", "20",
           "--eval-interval", "10", "--eval-iters", "4"]
    train_main([*run, "--out-dir", str(tmp_path / "float32")])
    train_main([*run, "--dtype", dtype, "--out-dir", str(tmp_path / dtype)])
    rows, rows32 = metrics(tmp_path / dtype), metrics(tmp_path / "float32")
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.2, rows  # it learns
    for row, row32 in zip(rows, rows32):  # as float32 does, up to rounding
        assert row["val_loss"] == pytest.approx(row32["val_loss"], abs=0.1), (row, row32)
    scaler = checkpoint.load_checkpoint(tmp_path / dtype / "last.pt")["scaler"]
    assert bool(scaler) == (dtype == "float16")  # float16 needs a GradScaler, saved for --resume


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------


def compiled_backends() -> list[str]:
    return [b for b in ("torch", "cpp") if backend_status("cpu", torch.float32, 16)[b] is None]


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("attention", compiled_backends())
def test_compile_has_no_graph_break(attention, dropout):
    model = tiny_model(attention, dropout)
    explanation = torch._dynamo.explain(model)(*batch())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("attention", compiled_backends())
def test_compiled_full_graph_gives_the_eager_loss_and_gradients(attention):
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward through the
    registered op's fake and autograd registrations without a slow C++ build of the graph."""
    model = tiny_model(attention)
    x, y = batch()
    _, eager = model(x, y)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _, loss = compiled(x, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager)
    for g, ge in zip(grads, eager_grads):
        torch.testing.assert_close(g, ge)


@pytest.mark.slow
def test_train_with_compile_matches_eager(tmp_path, text_path):
    """`--compile` end to end (inductor builds C++ for CPU: about a minute on 2 cores)."""
    run = ["--data", str(text_path), *TINY, "--dropout", "0", "--batch-size", "4", "--max-iters", "2",
           "--eval-interval", "2", "--eval-iters", "1"]
    train_main([*run, "--out-dir", str(tmp_path / "eager")])
    train_main([*run, "--compile", "--out-dir", str(tmp_path / "compiled")])
    assert_same_run(tmp_path / "compiled", tmp_path / "eager", exact=False)
