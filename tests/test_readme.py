"""The README's promises: its quick start works as written on an offline machine, and its
performance table is the one bench/results/ gives."""
import re
import shlex
from pathlib import Path

from bench import table
from clitools import run_module
from fastgpt.training.config import PRESETS

README = Path(__file__).resolve().parent.parent / "README.md"
TINY_PRESET = dict(n_embd=16, n_head=2, n_layer=1, block_size=16, batch_size=4, max_iters=4,
                   eval_interval=2, eval_iters=2)


def command_after(marker: str) -> list[str]:
    """The command of the code block after `<!-- marker -->`, without the install steps before it
    (this environment has them done): `python -m fastgpt.x ...` as argv."""
    block = re.search(rf"<!-- {marker} -->\n```bash\n(.+?)\n```", README.read_text(), re.S)
    assert block, f"README.md has no code block after <!-- {marker} -->"
    command = shlex.split(block.group(1).split("&&")[-1])
    assert command[:2] == ["python", "-m"], command
    return command[2:]


def test_quick_start_trains_then_samples_offline(tmp_path):
    """The README's train and sample commands, as written, in a fresh directory (a few steps)."""
    module, *args = command_after("train-command")
    result = run_module(module, *args, "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1",
                        "--n-layer", "1", "--sample-chars", "10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "eval 4/4" in result.stdout and (tmp_path / "out" / "best.pt").is_file()
    module, *args = command_after("sample-command")
    result = run_module(module, *args, "--max-new-tokens", "30", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.strip()) >= 20  # the prompt's first symbol and 30 characters


def test_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python example, as written, in a fresh directory, with the presets made tiny
    (it trains with the default preset) so that it takes seconds."""
    block = re.search(r"<!-- python-example -->\n```python\n(.+?)\n```", README.read_text(), re.S)
    assert block, "README.md has no python block after <!-- python-example -->"
    for name in PRESETS:
        monkeypatch.setitem(PRESETS, name, {**PRESETS[name], **TINY_PRESET})
    monkeypatch.chdir(tmp_path)
    exec(block.group(1), {})
    assert (tmp_path / "out-python" / "best.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "attention").iterdir()) == [".fastgpt.lock", "layer0.png"]


def test_performance_table_is_made_from_bench_results():
    assert table.readme_table(README.read_text()) == table.table(), \
        "README.md's performance table differs from bench/results/: run `python -m bench.table --write`"
