"""`python -m fastgpt.sample` end to end on a tiny checkpoint, and every input it refuses."""
import os
import subprocess
import sys

import pytest
import torch

from clitools import random_run
from fastgpt import checkpoint
from fastgpt.cli import run_cli
from fastgpt.sample import SEPARATOR, main, write_samples
from fastgpt.data.tokenizer import CharTokenizer

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"


@pytest.fixture
def out_dir(tmp_path):
    return random_run(tmp_path / "out", TEXT)


def sample(capsys, *argv) -> str:
    main([str(a) for a in argv])
    return capsys.readouterr().out


def expected_samples(out_dir, prompt, n, num_samples, seed, **options) -> list[str]:
    """What the Python API draws: sample i is the one-sample run seeded seed + i."""
    model, tokenizer = checkpoint.load(out_dir)
    ids = tokenizer.encode(prompt) if prompt else [0]
    return [tokenizer.decode(model.generate(torch.tensor([ids]), n, seed=seed + i, **options)[0].tolist())
            for i in range(num_samples)]


def split_samples(out: str) -> list[str]:
    return [s.removesuffix("\n") for s in out.split(f"{SEPARATOR}\n")]


def test_samples_are_the_api_draws_with_seed_plus_i(out_dir, capsys):
    out = sample(capsys, "--out-dir", out_dir, "--prompt", "ROMEO:", "--max-new-tokens", 40,
                 "--temperature", 0.8, "--top-k", 5, "--seed", 3, "--num-samples", 3)
    samples = split_samples(out)
    assert samples == expected_samples(out_dir, "ROMEO:", 40, 3, seed=3, temperature=0.8, top_k=5)
    assert all(s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 40 for s in samples)
    # the second sample of a batch seeded 3 is the one-sample run seeded 4
    assert sample(capsys, "--out-dir", out_dir, "--prompt", "ROMEO:", "--max-new-tokens", 40,
                  "--temperature", 0.8, "--top-k", 5, "--seed", 4).removesuffix("\n") == samples[1]


@pytest.mark.parametrize("flags,options", [
    (["--greedy"], dict(greedy=True)),
    (["--top-p", 0.7, "--window", "slide"], dict(top_p=0.7, window="slide")),
    (["--dtype", "bfloat16"], dict(dtype="bfloat16")),
    (["--dtype", "int8", "--greedy"], dict(dtype="int8", greedy=True)),
])
def test_sampling_flags_reach_the_api(out_dir, capsys, flags, options):
    out = sample(capsys, "--checkpoint", out_dir / checkpoint.BEST, "--prompt", "what",
                 "--max-new-tokens", 30, "--seed", 9, *flags)
    assert split_samples(out) == expected_samples(out_dir, "what", 30, 1, seed=9, **options)


def test_empty_prompt_starts_from_the_first_vocabulary_symbol(out_dir, capsys):
    out = sample(capsys, "--out-dir", out_dir, "--prompt", "", "--max-new-tokens", 20, "--seed", 2)
    first = CharTokenizer.from_text(TEXT).itos[0]
    assert out.startswith(first)
    assert split_samples(out) == expected_samples(out_dir, "", 20, 1, seed=2)


class RecordingStdout:
    """Stands in for sys.stdout and remembers what had been written at each flush."""

    def __init__(self, terminal=False):
        self.text, self.flushed, self.terminal = "", [], terminal

    def write(self, s):
        self.text += s

    def flush(self):
        self.flushed.append(self.text)

    def isatty(self):
        return self.terminal


def test_the_first_sample_is_streamed_character_by_character(out_dir, monkeypatch):
    stdout = RecordingStdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    main(["--out-dir", str(out_dir), "--prompt", "RO", "--max-new-tokens", "12", "--num-samples", "2"])
    streamed = stdout.flushed[:13]  # the prompt, then one flush per character
    assert [len(s) for s in streamed] == list(range(2, 15))
    assert stdout.text.startswith(streamed[-1])


def test_a_terminal_gets_the_speed_on_stderr(out_dir, monkeypatch, capsys):
    stdout = RecordingStdout(terminal=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    main(["--out-dir", str(out_dir), "--max-new-tokens", "12", "--num-samples", "3"])
    report = capsys.readouterr().err
    assert report.startswith("36 characters in ") and " chars/s (3 samples, float32, cpu, " in report
    assert "chars/s" not in stdout.text


def test_command_line_end_to_end(out_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "fastgpt.sample", "--out-dir", str(out_dir),
                           "--prompt", "But", "--max-new-tokens", "25", "--num-samples", "2",
                           "--seed", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert split_samples(done.stdout) == expected_samples(out_dir, "But", 25, 2, seed=1)


# -- bad input: one line on stderr, exit code 2 ------------------------------------------------


def refused(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main([str(a) for a in argv]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("flags,message", [
    (["--prompt", "ROMEO: zebra&Quux"], "not in the vocabulary: 'z&Qx'"),
    (["--max-new-tokens", 0], "--max-new-tokens must be positive"),
    (["--max-new-tokens", -5], "--max-new-tokens must be positive"),
    (["--num-samples", 0], "--num-samples must be positive"),
    (["--temperature", 0], "--temperature must be a finite number of at least 0.001"),
    (["--temperature", -0.5], "--temperature must be a finite number of at least 0.001"),
    (["--top-k", 0], "--top-k must be between 1 and the vocabulary size"),
    (["--top-k", 1000], "--top-k must be between 1 and the vocabulary size"),
    (["--top-p", 0], "--top-p must be in (0, 1]"),
    (["--top-p", 1.01], "--top-p must be in (0, 1]"),
])
def test_bad_flags_are_refused(out_dir, capsys, flags, message):
    assert message in refused(capsys, "--out-dir", out_dir, *flags)


def test_temperature_zero_is_fine_when_greedy(out_dir, capsys):
    out = sample(capsys, "--out-dir", out_dir, "--greedy", "--temperature", 0, "--max-new-tokens", 5)
    assert split_samples(out) == expected_samples(out_dir, "", 5, 1, seed=0, greedy=True)


def test_missing_checkpoint_is_refused(tmp_path, capsys):
    assert "no checkpoint" in refused(capsys, "--out-dir", tmp_path / "nothing-here")


def test_foreign_checkpoint_is_refused(tmp_path, capsys):
    torch.save({"weights": torch.randn(3)}, tmp_path / "foreign.pt")
    assert "not a fastgpt checkpoint" in refused(capsys, "--checkpoint", tmp_path / "foreign.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_refused(out_dir, capsys):
    assert "asks for CUDA, which this machine" in refused(capsys, "--out-dir", out_dir, "--device", "cuda")


class ByteTokenizer:
    """Tokens are UTF-8 bytes, as in a byte-level BPE: one character can take several tokens."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_streaming_never_splits_a_character():
    text = "é✓ ok ü"
    tokens = [torch.tensor([b, b]) for b in text.encode()]  # two identical samples
    stdout = RecordingStdout()
    write_samples(ByteTokenizer(), list("→".encode()), iter(tokens), stdout)
    assert stdout.text == f"→{text}\n{SEPARATOR}\n→{text}\n"
    assert not any("\ufffd" in s for s in stdout.flushed)


def test_a_closed_pipe_ends_sampling_quietly(out_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    reader = subprocess.Popen([sys.executable, "-m", "fastgpt.sample", "--out-dir", str(out_dir),
                               "--max-new-tokens", "100000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    reader.stdout.read(10)
    reader.stdout.close()  # as `| head -c 10` does
    assert reader.wait(timeout=120) == 0
    assert reader.stderr.read() == b""


def test_no_stream_prints_the_same_samples(out_dir, capsys):
    from fastgpt.sample import main
    main(["--out-dir", str(out_dir), "--max-new-tokens", "40", "--num-samples", "2", "--seed", "3"])
    streamed = capsys.readouterr().out
    main(["--out-dir", str(out_dir), "--max-new-tokens", "40", "--num-samples", "2", "--seed", "3",
          "--no-stream"])
    assert capsys.readouterr().out == streamed and len(streamed) > 80
