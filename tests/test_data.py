"""fastgpt.data: the packaged corpus, text checks, split, batches."""
import gzip
import hashlib
from types import SimpleNamespace

import pytest
import torch

from clitools import TINY_RUN, run_module
from fastgpt import checkpoint, data
from fastgpt.cli import UserError


def test_packaged_corpus_is_tiny_shakespeare():
    text = data.shakespeare()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:\n")
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == data.CORPUS_SHA256


@pytest.mark.parametrize("damage", ["missing", "truncated", "altered"])
def test_damaged_package_corpus_is_refused(tmp_path, monkeypatch, damage):
    packaged = data.resources.files("fastgpt") / data.CORPUS_FILE
    if damage == "truncated":
        (tmp_path / data.CORPUS_FILE).write_bytes(packaged.read_bytes()[:100_000])
    if damage == "altered":
        text = gzip.decompress(packaged.read_bytes()).replace(b"Citizen", b"Citizan", 1)
        (tmp_path / data.CORPUS_FILE).write_bytes(gzip.compress(text))
    monkeypatch.setattr(data, "resources", SimpleNamespace(files=lambda package: tmp_path))
    with pytest.raises(UserError, match="missing or damaged.*--data PATH"):
        data.shakespeare()


def test_training_without_data_uses_the_packaged_corpus(tmp_path):
    """The quick start offline: no --data, nothing in the working directory, no network."""
    out_dir = tmp_path / "out"
    result = run_module("fastgpt.train", *TINY_RUN, "--max-iters", "2", "--out-dir", out_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ckpt = checkpoint.load_checkpoint(out_dir / checkpoint.LAST)
    assert ckpt["iter"] == 2 and ckpt["tokenizer"]["chars"] == "".join(sorted(set(data.shakespeare())))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    ("café\n".encode("latin-1"), "not UTF-8"),
])
def test_bad_text_files(tmp_path, content, message):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        data.read_text(path)


def test_directory_is_not_a_text_file(tmp_path):
    with pytest.raises(UserError, match="not a file"):
        data.read_text(tmp_path)


def test_reads_any_utf8(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("Ünïcødé — 詩\n", encoding="utf-8")
    assert data.read_text(path) == "Ünïcødé — 詩\n"


def test_split_is_90_10_and_needs_a_window_in_each():
    ids = torch.arange(1000)
    splits = data.split(ids, block_size=8)
    assert torch.equal(splits["train"], ids[:900]) and torch.equal(splits["val"], ids[900:])
    assert len(data.split(torch.arange(1281), block_size=128)["val"]) == 129
    with pytest.raises(UserError, match="at least 1281.*--block-size"):
        data.split(torch.arange(1280), block_size=128)


def make_batches(seed=3, block_size=8, batch_size=5):
    ids = torch.randperm(500)
    return data.RandomBatches(data.split(ids, block_size), block_size, batch_size, seed,
                              torch.device("cpu"))


def test_batches_are_windows_and_their_shift():
    batches = make_batches()
    x, y = batches.batch("train")
    assert x.shape == y.shape == (5, 8) and x.is_contiguous() and y.is_contiguous()
    train = batches.splits["train"].tolist()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        start = train.index(row_x[0])
        assert train[start:start + 9] == row_x + row_y[-1:]


def test_batches_are_seeded_and_resumable():
    a, b = make_batches(seed=3), make_batches(seed=3)
    b.splits = a.splits
    a.batch("train")
    state = a.state_dict()
    expected = [a.batch("train") for _ in range(3)]
    b.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected, (b.batch("train") for _ in range(3))):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_evaluation_batches_do_not_move_training_draws():
    a, b = make_batches(), make_batches()
    b.splits = a.splits
    a.batch("val", a.eval_generator())
    assert torch.equal(a.batch("train")[0], b.batch("train")[0])
    assert torch.equal(a.batch("val", a.eval_generator())[0], b.batch("val", b.eval_generator())[0])
