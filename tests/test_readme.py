"""The README's promises: its quick start works as written on an offline machine, and its
performance table is the one bench/results/ gives."""
import re
import shlex
from pathlib import Path

from bench import table
from clitools import run_module

README = Path(__file__).resolve().parent.parent / "README.md"


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


def test_performance_table_is_made_from_bench_results():
    assert table.readme_table(README.read_text()) == table.table(), \
        "README.md's performance table differs from bench/results/: run `python -m bench.table --write`"
