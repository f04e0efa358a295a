"""Every flag of every tool, fuzzed with hypothesis (NaN, ±inf, 0, negative, huge, empty, unicode,
paths that are files, directories or missing): each run exits 0 or 2 without a traceback, and a
refusal leaves every file as it was. The tools run in-process (`main(argv)` under run_cli) to keep
this fast; training is capped at a few steps and evaluation batches, since a huge --max-iters is
a long run, not an error."""
import dataclasses
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from clitools import SMALL_TEXT, TINY_RUN, TOOLS, snapshot
from fastgpt import sample, train
from fastgpt.cli import run_cli

NUMBERS = ["nan", "inf", "-inf", "0", "-1", "0.5", "3", "1e308", str(2**64), str(2**63 - 1),
           "", "é☃", "1e-320"]
PATHS = ["TEXT", "BINARY", "DIR", "MISSING", "FILE_AS_DIR", "EMPTY_DIR", "USER_DIR", "RUN", "UNICODE"]
STRINGS = ["", "é☃", "auto", "cpu", "meta", "bogus", "cuda:3", "torch", "cpp", "\x00"]

# Few examples for train (each may train a tiny model), more for the quick tools: the suite stays
# fast; a longer local run: raise max_examples.
FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

FLAGS = {
    "train": {**{f: NUMBERS for f in ("--block-size", "--n-layer", "--n-head", "--n-embd",
                                       "--dropout", "--batch-size", "--grad-accum", "--max-iters",
                                       "--learning-rate", "--warmup-iters", "--min-lr",
                                       "--weight-decay", "--beta1", "--beta2", "--grad-clip",
                                       "--eval-interval", "--eval-iters", "--log-interval",
                                       "--sample-chars", "--seed")},
              "--data": PATHS, "--dataset": PATHS, "--out-dir": PATHS, "--device": STRINGS,
              "--attention": STRINGS, "--dtype": ["float16", "bfloat16", "x"],
              "--lr-schedule": ["cosine", "x"], "--preset": ["gpu", "nanogpt-cpu", "x"],
              "--resume": None, "--compile": None},
    "sample": {**{f: NUMBERS for f in ("--max-new-tokens", "--num-samples", "--temperature",
                                       "--top-k", "--top-p", "--seed")},
               "--out-dir": PATHS, "--checkpoint": PATHS, "--prompt": STRINGS + ["To be", "Z~"],
               "--window": ["exact", "slide", "x"], "--device": STRINGS, "--attention": STRINGS,
               "--greedy": None},
    "prepare": {"--data": PATHS, "--out": PATHS, "--tokenizer": ["char", "bpe", "x"],
                "--vocab-size": NUMBERS},
    "convert": {"STATE": PATHS, "--vocab": PATHS, "--out": PATHS},
    "info": {"--bogus": None, "-h": None},
}
# What each tool needs to get past its required arguments, before the fuzzed flags override it.
BASE = {"train": [*TINY_RUN, "--data", "TEXT", "--out-dir", "NEW"],
        "sample": ["--out-dir", "RUN", "--device", "cpu", "--max-new-tokens", "5"],
        "prepare": ["--data", "TEXT", "--out", "NEW"],
        "convert": ["--vocab", "VOCAB", "--out", "NEW"],
        "info": []}


@pytest.fixture(scope="module")
def lecture_state(tmp_path_factory):
    import torch
    from lecture_gpt import VOCAB_TEXT, lecture_model
    root = tmp_path_factory.mktemp("lecture")
    torch.save(lecture_model(n_layer=1).state_dict(), root / "lecture.pt")
    (root / "vocab.txt").write_text(VOCAB_TEXT)
    return root


def workspace(root: Path, run: Path, lecture: Path) -> dict[str, str]:
    """A fresh set of files and directories for one example, by the names the flags use."""
    (root / "text.txt").write_text(SMALL_TEXT)
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (root / "dir").mkdir()
    (root / "empty").mkdir()
    (root / "user").mkdir()
    (root / "user" / "loss.png").write_bytes(b"mine")
    (root / "user" / "train.bin").write_bytes(b"mine")
    (root / "user" / "best.pt").write_bytes(b"mine")
    return {"TEXT": str(root / "text.txt"), "BINARY": str(root / "binary.bin"),
            "DIR": str(root / "dir"), "MISSING": str(root / "missing"),
            "FILE_AS_DIR": str(root / "text.txt" / "sub"), "EMPTY_DIR": str(root / "empty"),
            "USER_DIR": str(root / "user"), "RUN": str(run), "NEW": str(root / "new"),
            "VOCAB": str(lecture / "vocab.txt"), "LECTURE": str(lecture / "lecture.pt"),
            "UNICODE": str(root / "é☃")}


def capped(monkeypatch) -> None:
    """A few steps, evaluation batches and sampled characters, whatever the flags asked."""
    loop, sample_text = train.training_loop, train.sample_text

    def short_loop(model, run, cfg, *args, **kw):
        cfg = dataclasses.replace(cfg, max_iters=min(cfg.max_iters, 2), eval_iters=min(cfg.eval_iters, 2),
                                  grad_accum=min(cfg.grad_accum, 2))
        return loop(model, run, cfg, *args, **kw)

    monkeypatch.setattr(train, "training_loop", short_loop)
    monkeypatch.setattr(train, "sample_text", lambda m, t, n, d: sample_text(m, t, min(n, 5), d))
    monkeypatch.setattr(sample, "check_memory", _capped_sample(sample.check_memory))


def _capped_sample(check):
    def capped_check(config, prompt_tokens, num_samples, max_new_tokens, device):
        check(config, prompt_tokens, num_samples, max_new_tokens, device)  # the real refusal
        if num_samples * max_new_tokens > 10**5:
            raise SystemExit(0)  # a long run the user asked for, not an error
    return capped_check


def fuzz(tool: str, data, tmp_path, capsys, run: Path, lecture: Path) -> None:
    flags = FLAGS[tool]
    chosen = data.draw(st.lists(st.sampled_from(sorted(flags)), min_size=1, max_size=3, unique=True))
    args = []
    for name in chosen:
        if name == "STATE":
            args.append(data.draw(st.sampled_from(PATHS + ["LECTURE"])))
        elif flags[name] is None:
            args.append(name)
        else:
            args += [name, data.draw(st.sampled_from(flags[name]))]
    if tool == "convert" and "STATE" not in chosen:
        args.insert(0, "LECTURE")
    with tempfile.TemporaryDirectory(dir=tmp_path) as root:
        names = workspace(Path(root), run, lecture)
        argv = [names.get(a, a) for a in BASE[tool] + args]
        before = snapshot(Path(root)), snapshot(run)
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: TOOLS[tool](argv))
        err = capsys.readouterr().err
        assert exit_info.value.code in (0, 2), (argv, err)
        assert "Traceback" not in err, (argv, err)
        if exit_info.value.code == 2 and "diverged" not in err:
            assert (snapshot(Path(root)), snapshot(run)) == before, (argv, err)


@settings(max_examples=12, **FUZZ)
@given(data=st.data())
def test_fuzz_train(data, tmp_path, capsys, monkeypatch, finished_run, lecture_state):
    capped(monkeypatch)
    fuzz("train", data, tmp_path, capsys, finished_run.out_dir, lecture_state)


@pytest.mark.parametrize("tool", ["sample", "prepare", "convert", "info"])
@settings(max_examples=40, **FUZZ)
@given(data=st.data())
def test_fuzz_other_tools(tool, data, tmp_path, capsys, monkeypatch, finished_run, lecture_state):
    capped(monkeypatch)
    fuzz(tool, data, tmp_path, capsys, finished_run.out_dir, lecture_state)
