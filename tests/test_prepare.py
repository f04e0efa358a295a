"""fastgpt.prepare and fastgpt.data.dataset: streaming tokenization into memory-mapped splits, BPE, and
the errors of a damaged dataset."""
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastgpt import prepare as prep
from fastgpt.data.batches import split
from fastgpt.data.text import shakespeare
from fastgpt.data.dataset import MemmapDataset, ids_dtype, read_meta
from fastgpt.errors import UserError
from fastgpt.data.tokenizer import BPETokenizer, CharTokenizer, tokenizer_from_state_dict


def random_lines(seed: int, n_lines: int, alphabet: str = "abcdefghijklmnopqrstuvwxyzéß日本 ,.;'\t") -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(500)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) + "\n" for _ in range(n_lines)]


def write_corpus(path, n_bytes: int, seed: int = 0) -> str:
    """A UTF-8 file of about `n_bytes`: blocks of random lines, shuffled, written until it is big
    enough (fast: a few hundred MB in seconds)."""
    lines = random_lines(seed, 4000)
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            rng.shuffle(lines)
            block = "".join(lines)
            f.write(block)
            written += len(block.encode("utf-8"))
    return str(path)


def decoded_splits(directory) -> str:
    ds = MemmapDataset(directory)
    return "".join(ds.tokenizer.decode(ds.splits[split].tolist()) for split in ("train", "val"))


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_ids_round_trip_to_the_text(tmp_path, kind):
    text = "".join(random_lines(1, 3000)) + "Ünïcödé 🙂 at the end\r\n"
    src = tmp_path / "in.txt"
    src.write_bytes(text.encode("utf-8"))
    meta = prep.prepare(src, kind, tmp_path / "ds", vocab_size=300, chunk_chars=777)
    expected = src.read_bytes().decode("utf-8")  # the in-memory path's text: "\r\n" kept
    assert expected == text
    assert decoded_splits(tmp_path / "ds") == expected
    n_train = int(0.9 * len(expected))
    assert (meta["train"]["chars"], meta["val"]["chars"]) == (n_train, len(expected) - n_train)
    ds = MemmapDataset(tmp_path / "ds")
    assert ds.tokenizer.decode(ds.splits["train"].tolist()) == expected[:n_train]
    assert meta["dtype"] == "uint16" and ds.splits["train"].dtype == torch.uint16


def test_char_ids_equal_the_in_memory_encoding(tmp_path):
    text = shakespeare()
    src = tmp_path / "shakespeare.txt"
    src.write_bytes(text.encode("utf-8"))
    meta = prep.prepare(src, "char", tmp_path / "ds")
    tokenizer = CharTokenizer.from_text(text)
    in_memory = split(torch.tensor(tokenizer.encode(text)), block_size=8)
    ds = MemmapDataset(tmp_path / "ds")
    assert ds.tokenizer.itos == tokenizer.itos
    for name in ("train", "val"):
        assert torch.equal(ds.splits[name].long(), in_memory[name])
    assert meta["source"]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_bpe_in_pieces_equals_whole_text_encoding(tmp_path):
    # Runs of spaces and newlines are where a careless cut changes GPT-2's pre-tokens.
    text = "".join(line.replace(" ", "  \n \n", 1) for line in random_lines(2, 2000))
    text += "x" * 5000 + " tail"  # longer than the cap: cut where it is, and still round-trips
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    prep.prepare(src, "bpe", tmp_path / "ds", vocab_size=400, chunk_chars=500)
    ds = MemmapDataset(tmp_path / "ds")
    n = int(0.9 * len(text))
    assert ds.splits["train"].tolist() == ds.tokenizer.encode(text[:n])
    assert ds.tokenizer.decode(ds.splits["val"].tolist()) == text[n:]


def test_word_aligned_cuts_only_between_a_word_and_a_space():
    pieces = ["ab  ", "\n\ncd", " e", "fgh", "ijk"]
    out = list(prep.word_aligned(pieces, max_chars=100))
    assert "".join(out) == "".join(pieces)
    assert out == ["ab", "  \n\ncd", " efghijk"]
    assert list(prep.word_aligned(["abc", "def", "ghi"], max_chars=5)) == ["abcdef", "ghi"]


def test_bpe_tokenizer_state_is_plain_data_and_round_trips(tmp_path):
    tokenizer = BPETokenizer.train(iter(random_lines(3, 500)), 300)
    state = tokenizer.state_dict()
    torch.save({"tokenizer": state}, tmp_path / "t.pt")
    loaded = tokenizer_from_state_dict(torch.load(tmp_path / "t.pt", weights_only=True)["tokenizer"])
    text = "never seen: Ωμέγα 🙂\n\n  spaces"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    assert loaded.vocab_size == 300 and loaded.unknown(text) == []


def test_dtype_switches_to_uint32_above_65536_tokens(tmp_path):
    assert ids_dtype(256) == np.uint16 and ids_dtype(65536) == np.uint16
    assert ids_dtype(65537) == np.uint32
    # A text of 70,000 distinct characters (code points from U+0100, surrogates skipped).
    chars = [chr(c) for c in range(0x100, 0x100 + 72100) if not 0xD800 <= c <= 0xDFFF][:70000]
    random.Random(0).shuffle(chars)
    text = "".join(chars) * 2
    src = tmp_path / "wide.txt"
    src.write_text(text, encoding="utf-8")
    meta = prep.prepare(src, "char", tmp_path / "ds")
    assert meta["vocab_size"] == 70000 and meta["dtype"] == "uint32"
    ds = MemmapDataset(tmp_path / "ds")
    assert ds.splits["train"].dtype == torch.uint32 and int(ds.splits["train"].long().max()) > 65535
    assert decoded_splits(tmp_path / "ds") == text


PEAK_RSS_CHILD = """
import resource, sys
from fastgpt.prepare import main
main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB
"""


def peak_rss_of_prepare(*args) -> int:
    """Peak resident memory in bytes of `python -m fastgpt.prepare ARGS` in its own process."""
    out = subprocess.run([sys.executable, "-c", PEAK_RSS_CHILD, *map(str, args)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_prepare_memory_does_not_grow_with_the_file(tmp_path):
    """A 300 MB corpus is streamed: peak memory is that of a 100 KB one (imports, the piece
    buffers), not the file's size."""
    big = write_corpus(tmp_path / "big.txt", 300 * 2**20)
    small = write_corpus(tmp_path / "small.txt", 100 * 2**10)
    baseline = peak_rss_of_prepare("--data", small, "--out", tmp_path / "small")
    peak = peak_rss_of_prepare("--data", big, "--out", tmp_path / "big")
    assert peak - baseline < 32 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB, baseline {baseline / 2**20:.0f} MiB"
    meta = read_meta(tmp_path / "big")
    assert meta["train"]["tokens"] + meta["val"]["tokens"] == meta["train"]["chars"] + meta["val"]["chars"]


def test_bpe_prepare_feeds_the_tokenizer_bounded_pieces(tmp_path, monkeypatch):
    """BPE trains from an iterator of pieces and encodes piece by piece, never the whole text."""
    src = write_corpus(tmp_path / "in.txt", 2 * 2**20)
    longest = {"train": 0, "encode": 0}
    train, encode = BPETokenizer.train.__func__, BPETokenizer.encode

    def recording_train(cls, texts, vocab_size):
        def pieces():
            for piece in texts:
                longest["train"] = max(longest["train"], len(piece))
                yield piece
        assert not isinstance(texts, (str, list))
        return train(cls, pieces(), vocab_size)

    def recording_encode(self, text):
        longest["encode"] = max(longest["encode"], len(text))
        return encode(self, text)

    monkeypatch.setattr(BPETokenizer, "train", classmethod(recording_train))
    monkeypatch.setattr(BPETokenizer, "encode", recording_encode)
    meta = prep.prepare(src, "bpe", tmp_path / "ds", vocab_size=512, chunk_chars=4096)
    assert 0 < longest["train"] <= 4096
    assert 0 < longest["encode"] <= 2 * 4096  # a piece plus the carried end of the one before
    assert meta["train"]["chars"] + meta["val"]["chars"] == len(open(src, encoding="utf-8").read())


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def dataset_dir(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(random_lines(4, 300)), encoding="utf-8")
    prep.prepare(src, "char", tmp_path / "ds")
    return tmp_path / "ds"


def run_prepare_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastgpt.prepare", *map(str, args)],
                          capture_output=True, text=True)


def write_id(path, position: int, token: int) -> None:
    """Put one id into a uint16 .bin file, its size unchanged: a damaged or mixed-up split."""
    ids = np.fromfile(path, "<u2")
    ids[position] = token
    ids.tofile(path)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "meta.json").unlink(), "not a prepared dataset"),
    (lambda d: (d / "meta.json").write_text("{not json"), "corrupt"),
    (lambda d: (d / "meta.json").write_text('{"format": "fastgpt-dataset"}'), "corrupt"),
    (lambda d: (d / "meta.json").write_bytes(b"\xff\xfe\x00garbage"), "corrupt"),
    (lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-2]), "train.bin has"),
    (lambda d: (d / "val.bin").unlink(), "val.bin is missing"),
    (lambda d: (d / "val.bin").write_bytes((d / "val.bin").read_bytes() + b"\0"), "val.bin has"),
    (lambda d: ((d / "val.bin").unlink(), (d / "val.bin").mkdir()), "val.bin is missing"),
    (lambda d: write_id(d / "train.bin", 1000, 65535), "train.bin holds token id 65535"),
    (lambda d: write_id(d / "val.bin", -1, json.loads((d / "meta.json").read_text())["vocab_size"]),
     "val.bin holds token id"),  # vocab_size itself, one past the last id
])
def test_damaged_dataset_is_one_line_user_error(dataset_dir, damage, message):
    damage(dataset_dir)
    with pytest.raises(UserError, match=message) as e:
        MemmapDataset(dataset_dir)
    assert "\n" not in str(e.value) and "fastgpt.prepare" in str(e.value)


def test_meta_with_a_wrong_dtype_is_rejected(dataset_dir):
    meta = json.loads((dataset_dir / "meta.json").read_text())
    meta["dtype"] = "uint32"
    (dataset_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="corrupt"):
        MemmapDataset(dataset_dir)


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.txt"], "does not exist"),
    (["--data", "bad.txt"], "not UTF-8"),
    (["--data", "empty.txt"], "is empty"),
    (["--data", "one.txt"], "too few"),
    (["--data", "good.txt", "--vocab-size", "100", "--tokenizer", "bpe"], "256"),
    (["--data", "good.txt", "--vocab-size", "300"], "applies to --tokenizer bpe"),
])
def test_prepare_cli_bad_input_is_one_line(tmp_path, args, message):
    (tmp_path / "bad.txt").write_bytes(b"abc\xff\xfedef")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "one.txt").write_bytes(b"a")
    (tmp_path / "good.txt").write_text("hello world\n" * 20)
    args = [str(tmp_path / a) if a.endswith(".txt") else a for a in args]
    r = run_prepare_cli(*args, "--out", tmp_path / "out")
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out" / "meta.json").exists()


def test_prepare_refuses_to_overwrite_a_dataset(dataset_dir, tmp_path):
    before = {p.name: p.read_bytes() for p in dataset_dir.iterdir()}
    r = run_prepare_cli("--data", tmp_path / "in.txt", "--tokenizer", "bpe", "--out", dataset_dir)
    assert r.returncode == 2 and "already holds a dataset" in r.stderr
    assert {p.name: p.read_bytes() for p in dataset_dir.iterdir()} == before


def test_splits_are_zero_copy_views_of_the_files(dataset_dir):
    ds = MemmapDataset(dataset_dir)
    train = ds.splits["train"]
    assert train.dtype == torch.uint16
    assert torch.equal(train.long(), torch.from_numpy(np.fromfile(dataset_dir / "train.bin", "<u2").astype(np.int64)))
    window = train[torch.tensor([[0, 1, 2], [5, 6, 7]])].long()  # what a batch gathers
    assert window[1].tolist() == train[5:8].tolist()
    with pytest.raises(UserError, match="fewer than block_size"):
        ds.check_block_size(len(ds.splits["val"]))


def test_damaged_bpe_state_is_a_value_error():
    with pytest.raises(ValueError, match="not a tokenizers JSON"):
        tokenizer_from_state_dict({"kind": "bpe", "json": '{"model": 3'})
