"""The Python API (fastgpt.train, load, sample, attention_maps): the tools' runs and messages from
Python, a notebook's progress bar and loss curve (a faked kernel), and the ETA (a fake clock)."""
import io
import random
import subprocess
import sys
import types

import pytest
import torch

import fastgpt
from clitools import SMALL_TEXT, TINY_RUN, assert_user_error, run_module
from fastgpt import checkpoint
from fastgpt.training.config import TrainConfig
from fastgpt.model import GPT, GPTConfig
from fastgpt.training.progress import Progress

# TINY_RUN's flags as keywords
TINY = dict(preset="cpu", device="cpu", attention="torch", n_embd=16, n_head=2, n_layer=1,
            block_size=16, batch_size=4, eval_interval=2, eval_iters=2, sample_chars=20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """fastgpt.train's model of a finished tiny run, and its out_dir."""
    root = tmp_path_factory.mktemp("api")
    text = root / "input.txt"
    text.write_text(SMALL_TEXT)
    model = fastgpt.train(**TINY, data=text, out_dir=root / "out", max_iters=4)
    return model, root / "out"


def test_import_is_light():
    """`import fastgpt` loads neither torch nor the extension: the API is imported at first use."""
    code = "import sys, fastgpt; assert not {'torch', 'fastgpt._C'} & set(sys.modules), sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_train_returns_the_trained_model_with_its_tokenizer(trained):
    model, out_dir = trained
    assert isinstance(model, GPT) and not model.training
    assert model.config.n_embd == 16 and model.tokenizer.vocab_size == len(set(SMALL_TEXT))
    last = checkpoint.load_checkpoint(out_dir / checkpoint.LAST)
    assert last["iter"] == 4
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in last["model"].items())
    assert sorted(p.name for p in out_dir.iterdir()) == [".fastgpt.lock", "best.pt", "last.pt",
                                                         "loss.png", "metrics.jsonl"]


def test_the_tool_modules_stay_modules():
    """fastgpt.train is both the module of `python -m fastgpt.train` and the function."""
    from fastgpt.train import main

    assert fastgpt.train.main is main and callable(fastgpt.train)
    assert fastgpt.sample.SEPARATOR and callable(fastgpt.sample) and callable(fastgpt.attention_maps)
    assert "n_embd" not in dir(fastgpt) and {"train", "load", "sample", "attention_maps"} <= set(dir(fastgpt))


def test_load_and_sample_a_model_or_an_out_dir(trained):
    model, out_dir = trained
    loaded, tokenizer = fastgpt.load(out_dir / checkpoint.LAST, device="cpu")
    assert not loaded.training and loaded.tokenizer is tokenizer
    options = dict(prompt="To be", max_new_tokens=20, temperature=0.8, top_k=5, seed=3)
    text = fastgpt.sample(model, **options)
    assert text.startswith("To be") and len(text) == 25
    assert fastgpt.sample(out_dir / checkpoint.LAST, **options, device="cpu") == text
    samples = fastgpt.sample(model, **options, num_samples=3)
    assert samples[0] == text and len(samples) == 3  # sample i is seeded seed + i
    assert samples[1] == fastgpt.sample(model, **{**options, "seed": 4})


def test_sample_is_what_the_tool_prints(trained, capsys):
    model, out_dir = trained
    from fastgpt.sample import main

    main(["--checkpoint", str(out_dir / checkpoint.LAST), "--prompt", "To", "--num-samples", "2",
          "--max-new-tokens", "15", "--device", "cpu"])
    printed = capsys.readouterr().out
    streamed = io.StringIO()
    texts = fastgpt.sample(model, prompt="To", max_new_tokens=15, num_samples=2, stream=streamed)
    assert streamed.getvalue() == printed and printed.startswith(texts[0] + "\n")
    assert printed.endswith(texts[1] + "\n")


@pytest.mark.parametrize("call, message", [
    (lambda: fastgpt.train(n_embed=32), "unknown setting 'n_embed'; did you mean n_embd?"),
    (lambda: fastgpt.train(n_embd="32"), "--n-embd must be an int, got '32' (str)"),
    (lambda: fastgpt.train(dropout=True), "--dropout must be a float, got True (bool)"),
    (lambda: fastgpt.train(lr_schedule="linear"), "--lr-schedule must be one of constant, cosine"),
    (lambda: fastgpt.train(preset="huge"), "--preset must be one of cpu, gpu, nanogpt-cpu"),
    (lambda: fastgpt.train(data=3), "--data must be a path"),
    (lambda: fastgpt.sample("nowhere"), "no checkpoint at nowhere"),
    (lambda: fastgpt.sample(3), "expected a model (from fastgpt.train or fastgpt.load) or an out_dir"),
    (lambda: fastgpt.load("out", device="tpu"), "--device 'tpu' is not a device fastgpt runs on"),
])
def test_bad_settings_raise_user_error(tmp_path, monkeypatch, call, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(fastgpt.UserError) as error:
        call()
    assert message in str(error.value)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name, value", [("dropout", 1.0), ("n_embd", 15), ("max_iters", 0)])
def test_bad_settings_give_the_tools_message(tmp_path, name, value):
    """The API's exception says what the tool's one line says."""
    with pytest.raises(fastgpt.UserError) as error:
        fastgpt.train(**{**TINY, name: value}, out_dir=tmp_path / "out")
    line = assert_user_error(run_module("fastgpt.train", *TINY_RUN, "--out-dir", tmp_path / "out",
                                        "--" + name.replace("_", "-"), value, cwd=tmp_path))
    assert line == f"error: {error.value}"


def test_sample_refuses_a_model_without_tokenizer_and_load_options_for_a_model(trained):
    model, _ = trained
    bare = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=4))
    with pytest.raises(fastgpt.UserError, match="this model has no tokenizer"):
        fastgpt.sample(bare, prompt="a")
    with pytest.raises(fastgpt.UserError, match="a model runs where it is"):
        fastgpt.sample(model, device="cpu")
    with pytest.raises(fastgpt.UserError, match="--max-new-tokens must be positive, got 0"):
        fastgpt.sample(model, max_new_tokens=0)


# ------------------------------------------------------------------------------------------------
# A notebook, faked: IPython's shell of a kernel app, a notebook bar, inline pictures
# ------------------------------------------------------------------------------------------------


class FakeShell:
    def __init__(self, kernel: bool):
        self.config = {"IPKernelApp": {}} if kernel else {}


@pytest.fixture
def notebook(monkeypatch):
    """A Jupyter kernel as fastgpt.notebook sees one; records the bars made and pictures shown."""
    seen = {"bars": [], "images": []}
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: FakeShell(kernel=True)
    display = types.ModuleType("IPython.display")
    display.Image = lambda filename: filename
    display.display = seen["images"].append
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)

    import tqdm.notebook
    from tqdm import tqdm as plain_tqdm

    class NotebookBar(plain_tqdm):
        def __init__(self, **options):
            seen["bars"].append(options)
            super().__init__(**options, file=io.StringIO())

    monkeypatch.setattr(tqdm.notebook, "tqdm", NotebookBar)
    return seen


def test_notebook_detection(monkeypatch):
    from fastgpt.notebook import in_notebook

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not in_notebook()  # a script
    ipython = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    ipython.get_ipython = lambda: None
    assert not in_notebook()  # IPython imported, no shell
    ipython.get_ipython = lambda: FakeShell(kernel=False)
    assert not in_notebook()  # IPython in a terminal
    ipython.get_ipython = lambda: FakeShell(kernel=True)
    assert in_notebook()


def test_a_notebook_gets_a_bar_and_the_loss_curve(tmp_path, notebook, capsys):
    fastgpt.train(**TINY, data=_text(tmp_path), out_dir=tmp_path / "out", max_iters=4, log_interval=1)
    assert len(notebook["bars"]) == 1 and notebook["bars"][0]["total"] == 4
    assert notebook["images"] == [str(tmp_path / "out" / "loss.png")]
    out = capsys.readouterr().out
    assert "eval 4/4" in out and "step 1/4" not in out  # the bar shows the steps


def test_attention_maps_show_in_a_notebook(trained, tmp_path, notebook):
    model, _ = trained
    paths = fastgpt.attention_maps(model, "To be", save_dir=tmp_path / "maps")
    assert notebook["images"] == [str(p) for p in paths]


def _text(directory):
    path = directory / "input.txt"
    path.write_text(SMALL_TEXT)
    return path


# ------------------------------------------------------------------------------------------------
# The ETA, on a fake clock
# ------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("start_iter", [0, 1500])
def test_eta_is_within_20_percent_from_step_10(start_iter):
    """A run shaped like the default one (10 evaluations as long as 100 steps, a slow first step,
    noisy steps, a slower first evaluation): from step 10 on, at every step and evaluation, the
    ETA is within 20 % of the time the run then really takes. A resumed run (start_iter 1500)
    guesses the evaluation's cost until it has measured one."""
    cfg = TrainConfig(max_iters=5000, eval_interval=500, eval_iters=200)
    noise = random.Random(0)
    clock = FakeClock()
    progress = Progress(cfg, start_iter, enabled=False, clock=clock)
    predictions = []  # (time of the prediction, seconds left it said)

    def evaluate(done):
        clock.now += (5.0 if done == 0 else 3.5) * noise.uniform(0.9, 1.1)
        progress.evaluation(done, {"train": 1.0, "val": 1.0}, 3e-4, None, None)

    if start_iter == 0:
        evaluate(0)
    for done in range(start_iter + 1, cfg.max_iters + 1):
        clock.now += (1.0 if done == start_iter + 1 else 0.033) * noise.uniform(0.8, 1.25)
        progress.advance()
        if done - start_iter >= 10:
            predictions.append((clock.now, progress.seconds_left(done)))
        if cfg.evaluates_at(done):
            evaluate(done)
            predictions.append((clock.now, progress.seconds_left(done)))
    end = clock.now
    for now, left in predictions:
        truth = end - now
        assert abs(left - truth) <= 0.2 * truth + 1e-9, (now, left, truth)


def test_eta_is_unknown_until_a_step_is_timed():
    clock = FakeClock()
    progress = Progress(TrainConfig(max_iters=10, eval_interval=5), 0, enabled=False, clock=clock)
    clock.now = 2.0
    progress.evaluation(0, {"train": 1.0, "val": 1.0}, 3e-4, None, None)
    assert progress.seconds_left(0) is None
    clock.now = 3.0
    progress.advance()
    assert progress.seconds_left(1) == 9 * 1.0 + 2 * 2.0  # 9 steps, the evaluations at 5 and 10
