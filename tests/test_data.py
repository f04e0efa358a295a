"""fastgpt.data: the packaged corpus, text checks, split, batches."""
import gzip
import hashlib
import re
from types import SimpleNamespace

import pytest
import torch

from clitools import TINY_RUN, run_module, snapshot
from fastgpt import checkpoint, train
from fastgpt.data import batches as data_batches, text as data_text
from fastgpt.errors import UserError
from fastgpt.data.tokenizer import CharTokenizer


def test_packaged_corpus_is_tiny_shakespeare():
    text = data_text.shakespeare()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:\n")
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == data_text.CORPUS_SHA256


@pytest.mark.parametrize("damage", ["missing", "truncated", "altered"])
def test_damaged_package_corpus_is_refused(tmp_path, monkeypatch, damage):
    packaged = data_text.resources.files("fastgpt.data") / data_text.CORPUS_FILE
    if damage == "truncated":
        (tmp_path / data_text.CORPUS_FILE).write_bytes(packaged.read_bytes()[:100_000])
    if damage == "altered":
        text = gzip.decompress(packaged.read_bytes()).replace(b"Citizen", b"Citizan", 1)
        (tmp_path / data_text.CORPUS_FILE).write_bytes(gzip.compress(text))
    monkeypatch.setattr(data_text, "resources", SimpleNamespace(files=lambda package: tmp_path))
    with pytest.raises(UserError, match="missing or damaged.*--data PATH"):
        data_text.shakespeare()


def test_training_without_data_uses_the_packaged_corpus(tmp_path):
    """The quick start offline: no --data, nothing in the working directory, no network."""
    out_dir = tmp_path / "out"
    result = run_module("fastgpt.train", *TINY_RUN, "--max-iters", "2", "--out-dir", out_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ckpt = checkpoint.load_checkpoint(out_dir / checkpoint.LAST)
    assert ckpt["iter"] == 2 and ckpt["tokenizer"]["chars"] == "".join(sorted(set(data_text.shakespeare())))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    ("café\n".encode("latin-1"), "not UTF-8 text (invalid byte at offset 3)"),
    ("ab" * 50 + "é", "invalid byte at offset 100"),  # cut at the end of the file
])
def test_bad_text_files(tmp_path, content, message):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8")[:-1])
    with pytest.raises(UserError, match=re.escape(message)):
        data_text.encode_chars(data_text.TextSource.file(path))


def test_directory_is_not_a_text_file(tmp_path):
    with pytest.raises(UserError, match="not a file"):
        data_text.TextSource.file(tmp_path)


MIXED_TEXT = "Ünïcødé — 詩, 😀 and plain ASCII.\n" * 300 + "x" * 5000 + "é" * 300


@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 4096, 1 << 23])
def test_encoding_in_pieces_equals_the_char_tokenizer(tmp_path, monkeypatch, chunk_bytes):
    """Pieces cut inside multi-byte characters, ASCII pieces next to others: the ids, vocabulary
    and hash are those of the whole text encoded at once."""
    path = tmp_path / "mixed.txt"
    path.write_text(MIXED_TEXT, encoding="utf-8", newline="")
    monkeypatch.setattr(data_text, "CHUNK_BYTES", chunk_bytes)
    ids, tokenizer, sha256 = data_text.encode_chars(data_text.TextSource.file(path))
    expected = CharTokenizer.from_text(MIXED_TEXT)
    assert tokenizer.itos == expected.itos and tokenizer.vocab_size == 23
    assert ids.dtype == torch.uint8
    assert torch.equal(ids.long(), torch.tensor(expected.encode(MIXED_TEXT)))
    assert sha256 == hashlib.sha256(MIXED_TEXT.encode("utf-8")).hexdigest()


def test_ids_take_the_smallest_type(tmp_path):
    path = tmp_path / "wide.txt"
    text = "".join(map(chr, range(0x400, 0x400 + 300))) + "\U0001F600"  # 301 characters
    path.write_text(text, encoding="utf-8")
    ids, tokenizer, _ = data_text.encode_chars(data_text.TextSource.file(path))
    assert ids.dtype == torch.uint16 and tokenizer.vocab_size == 301
    assert tokenizer.decode(ids.tolist()) == text


def test_the_packaged_corpus_encodes_as_the_lecture(tmp_path):
    ids, tokenizer, sha256 = data_text.encode_chars(data_text.TextSource.packaged())
    text = data_text.shakespeare()
    assert sha256 == data_text.CORPUS_SHA256
    assert torch.equal(ids.long(), torch.tensor(CharTokenizer.from_text(text).encode(text)))


def test_a_resumed_run_keeps_its_vocabulary_and_text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcabc", encoding="utf-8")
    source = data_text.TextSource.file(path)
    _, tokenizer, sha256 = data_text.encode_chars(source)
    with pytest.raises(UserError, match="differs from the data the checkpoint was trained on"):
        data_text.encode_chars(source, tokenizer, "0" * 64)
    with pytest.raises(UserError, match="outside the checkpoint's vocabulary \\('c'\\)"):
        data_text.encode_chars(source, CharTokenizer("ab"), sha256)


def test_text_too_large_for_memory_names_prepare_and_touches_nothing(tmp_path, monkeypatch):
    """The memory check runs on the file's size before reading it, then on the exact count; the
    refusal is one line naming `fastgpt.prepare`, and the out_dir is left as it was."""
    path = tmp_path / "big.txt"
    path.write_text("ab\n" * 4000, encoding="utf-8")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    for available, told in [(2_000, "at least 3,000 characters"), (20_000, "12,000 characters")]:
        monkeypatch.setattr(data_text, "available_memory", lambda: available)
        with pytest.raises(UserError, match=re.escape(told)) as refused:
            train.main(["--data", str(path), *TINY_RUN, "--out-dir", str(out_dir)])
        assert f"python -m fastgpt.prepare --data {path} --out big-dataset" in str(refused.value)
        assert "--dataset big-dataset" in str(refused.value) and "\n" not in str(refused.value)
        assert snapshot(out_dir) == {"notes.txt": b"mine"}


def test_split_is_90_10_and_needs_a_window_in_each():
    ids = torch.arange(1000)
    splits = data_batches.split(ids, block_size=8)
    assert torch.equal(splits["train"], ids[:900]) and torch.equal(splits["val"], ids[900:])
    assert len(data_batches.split(torch.arange(1281), block_size=128)["val"]) == 129
    with pytest.raises(UserError, match="at least 1281.*--block-size"):
        data_batches.split(torch.arange(1280), block_size=128)


def make_batches(seed=3, block_size=8, batch_size=5):
    ids = torch.randperm(500)
    return data_batches.RandomBatches(data_batches.split(ids, block_size), block_size, batch_size, seed,
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


@pytest.mark.parametrize("seconds, shown", [(0.5, False), (3.0, True)])
def test_a_slow_read_says_how_long_it_took_in_a_log(tmp_path, monkeypatch, capsys, seconds, shown):
    """Not a terminal (a log file): no bar, one line when reading took over PROGRESS_AFTER."""
    path = tmp_path / "text.txt"
    path.write_text("abc\n" * 1000, encoding="utf-8")
    clock = iter([100.0, 100.0 + seconds])
    monkeypatch.setattr(data_text.time, "perf_counter", lambda: next(clock))
    data_text.encode_chars(data_text.TextSource.file(path), show_progress=True)
    out = capsys.readouterr().out
    assert (f"read {path} (0 MB) in {seconds:.1f} s" in out) == shown, out
