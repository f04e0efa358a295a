"""fastgpt.data: the corpus download (against a local HTTP server), text checks, split, batches."""
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from clitools import assert_user_error, run_module
from fastgpt import data
from fastgpt.cli import UserError


class _Serve(http.server.BaseHTTPRequestHandler):
    content = b""
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.content)))
        self.end_headers()
        self.wfile.write(self.content)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(content) -> (URL of a local HTTP server returning content, its handler class)."""
    servers = []

    def start(content: bytes):
        handler = type("Handler", (_Serve,), {"content": content, "hits": 0})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/input.txt", handler

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def empty_data_dir(tmp_path, monkeypatch):
    directory = tmp_path / "cache" / "fastgpt"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(directory))
    return directory


def test_corpus_sha256_is_the_known_one(corpus_path):
    assert hashlib.sha256(corpus_path.read_bytes()).hexdigest() == data.CORPUS_SHA256


def test_download_caches_the_corpus(serve, empty_data_dir, corpus_path):
    url, handler = serve(corpus_path.read_bytes())
    path = data.default_corpus(url)
    assert path == empty_data_dir / data.CORPUS_NAME
    assert path.read_bytes() == corpus_path.read_bytes()
    assert [p.name for p in empty_data_dir.iterdir()] == [data.CORPUS_NAME]  # no temporary left
    assert data.default_corpus(url) == path and handler.hits == 1  # the second call uses the cache


def test_download_url_from_environment(serve, empty_data_dir, corpus_path, monkeypatch):
    url, handler = serve(corpus_path.read_bytes())
    monkeypatch.setenv(data.CORPUS_URL_ENV, url)
    assert data.default_corpus().read_bytes() == corpus_path.read_bytes()
    assert handler.hits == 1


def test_corrupted_download_is_rejected_and_not_cached(serve, empty_data_dir, corpus_path):
    corrupted = bytearray(corpus_path.read_bytes())
    corrupted[1000] ^= 1
    url, _ = serve(bytes(corrupted))
    with pytest.raises(UserError, match="sha256.*--data"):
        data.default_corpus(url)
    assert not empty_data_dir.exists() or not any(empty_data_dir.iterdir())


def test_offline_says_to_pass_data(empty_data_dir):
    with pytest.raises(UserError, match="--data PATH"):
        data.default_corpus("http://127.0.0.1:9/input.txt")  # the discard port: refused
    assert not empty_data_dir.exists()


def test_offline_cli_is_one_line(tmp_path):
    result = run_module("fastgpt.train", "--out-dir", tmp_path / "out", cwd=tmp_path,
                        env={data.DATA_DIR_ENV: str(tmp_path / "cache")})
    assert_user_error(result, "cannot download", "--data PATH")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_data_dir_defaults_to_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.data_dir() == tmp_path / "fastgpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.data_dir() == Path.home() / ".cache" / "fastgpt"


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
