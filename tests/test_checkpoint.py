"""fastgpt.checkpoint: round trip, atomic save, and files that must be refused."""
import pickle
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from clitools import TINY_RUN, assert_user_error, run_module, snapshot
from fastgpt import checkpoint
from fastgpt.errors import UserError
from fastgpt.files import DiskFull
from fastgpt.model import GPT, GPTConfig
from fastgpt.training.run_dir import load_resume_checkpoint
from fastgpt.data.tokenizer import CharTokenizer


@pytest.fixture
def model_and_tokenizer():
    tokenizer = CharTokenizer.from_text("hello, world\n")
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=2, n_head=2,
                          n_embd=8, dropout=0.1, attention="torch"))
    return model, tokenizer


@pytest.fixture
def saved(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    path = tmp_path / "best.pt"
    checkpoint.save(checkpoint.make(model, tokenizer, iter=3), path)
    return path


def test_round_trip(saved, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    loaded, loaded_tokenizer = checkpoint.load(saved.parent)  # a directory means its best.pt
    assert loaded_tokenizer.itos == tokenizer.itos and not loaded.training
    idx = torch.randint(tokenizer.vocab_size, (2, 8))
    model.eval()
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    assert checkpoint.load_checkpoint(saved)["iter"] == 3


def test_attention_backend_can_be_chosen_at_load(saved):
    model, _ = checkpoint.load(saved, attention="sdpa")
    assert model.config.attention == "sdpa"


def test_missing(tmp_path):
    with pytest.raises(UserError, match="no checkpoint at .*--out-dir"):
        checkpoint.load(tmp_path)


def test_truncated(saved):
    content = saved.read_bytes()
    for size in (0, 10, len(content) // 2, len(content) - 1):
        saved.write_bytes(content[:size])
        with pytest.raises(UserError, match="truncated or not a torch file"):
            checkpoint.load(saved)


def test_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(UserError, match="truncated or not a torch file"):
        checkpoint.load(path)


@pytest.mark.parametrize("content", [{"weights": torch.ones(3)}, [torch.ones(2)],
                                     {"format": "fastgpt-checkpoint", "version": 99}])
def test_foreign(tmp_path, content):
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(UserError, match="not a fastgpt checkpoint|version 99"):
        checkpoint.load(path)


def test_damaged_weights(tmp_path, saved):
    ckpt = checkpoint.load_checkpoint(saved)
    ckpt["model"]["lm_head.weight"] = torch.ones(3, 3)
    torch.save(ckpt, saved)
    with pytest.raises(UserError, match="damaged.*lm_head.weight"):
        checkpoint.load(saved)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_every_tool(tmp_path, value):
    """A run that diverged or a damaged file: sampling, resuming and a library load refuse it in one
    line naming the tensor, and nothing in the out_dir changes."""
    out_dir = tmp_path / "out"
    assert run_module("fastgpt.train", *TINY_RUN, "--max-iters", "2", "--out-dir", out_dir,
                      cwd=tmp_path).returncode == 0
    ckpt = torch.load(out_dir / checkpoint.LAST, weights_only=True)
    ckpt["model"]["blocks.0.mlp.proj.weight"][1, 2] = value
    for name in (checkpoint.LAST, checkpoint.BEST):
        torch.save(ckpt, out_dir / name)
    before = snapshot(out_dir)
    told = "NaN or infinite values (model tensor blocks.0.mlp.proj.weight)"
    assert_user_error(run_module("fastgpt.sample", "--out-dir", out_dir, cwd=tmp_path), told, "best.pt")
    assert_user_error(run_module("fastgpt.train", *TINY_RUN, "--max-iters", "4", "--resume", "--out-dir",
                                 out_dir, cwd=tmp_path), told, "last.pt", "--resume from a copy")
    with pytest.raises(UserError, match=re.escape(told)):
        checkpoint.load(out_dir)
    assert snapshot(out_dir) == before


def test_weights_that_overflow_stop_sampling_in_one_line(tmp_path):
    """Finite weights so large that the logits overflow (a run that was about to diverge): the
    sampler stops at the first such output instead of failing inside torch.multinomial."""
    out_dir = tmp_path / "out"
    assert run_module("fastgpt.train", *TINY_RUN, "--max-iters", "2", "--out-dir", out_dir,
                      cwd=tmp_path).returncode == 0
    ckpt = torch.load(out_dir / checkpoint.BEST, weights_only=True)
    ckpt["model"]["lm_head.weight"].fill_(3e38)  # finite, but a dot product of 16 overflows
    torch.save(ckpt, out_dir / checkpoint.BEST)
    for flags in ([], ["--greedy"]):
        assert_user_error(run_module("fastgpt.sample", "--out-dir", out_dir, *flags, cwd=tmp_path),
                          "outputs after 1 tokens are not finite", "sample from another checkpoint")


def test_non_finite_optimizer_state_is_refused_on_resume(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    state["state"][0]["exp_avg_sq"][0] = float("nan")
    checkpoint.save(checkpoint.make(model, tokenizer, optimizer=state), tmp_path / checkpoint.LAST)
    checkpoint.load_checkpoint(tmp_path / checkpoint.LAST)  # sampling reads only the weights
    with pytest.raises(UserError, match=re.escape("(optimizer state exp_avg_sq of parameter 0)")):
        load_resume_checkpoint(tmp_path)


class RunsCode:
    """Unpickling this calls open(marker, "w"): the file appears iff the code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "best.pt"
    payload = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "model": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)  # torch's legacy format
    assert not marker.exists()
    with pytest.raises(UserError, match="open.*refused because loading them could run code"):
        checkpoint.load(path)
    assert not marker.exists()
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # what checkpoint.load relies on
    assert not marker.exists()


def test_failed_save_keeps_the_old_checkpoint(saved, monkeypatch):
    before = saved.read_bytes()

    def crash_midway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", crash_midway)
    with pytest.raises(DiskFull, match=f"writing {saved} needs at least"):  # one line, not OSError
        checkpoint.save({"format": checkpoint.FORMAT}, saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == ["best.pt"]  # the temporary file is gone


def test_process_killed_mid_save_keeps_the_old_checkpoint(saved):
    """A process that dies (os._exit: no cleanup at all) halfway through a save."""
    before = saved.read_bytes()
    script = textwrap.dedent(f"""
        import os, torch
        from fastgpt import checkpoint
        def die_midway(obj, f):
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os._exit(9)
        torch.save = die_midway
        checkpoint.save({{"format": "x"}}, {str(saved)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 9, result.stderr
    assert saved.read_bytes() == before
    checkpoint.load(saved)
