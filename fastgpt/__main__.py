"""`fastgpt COMMAND [flags]`: every tool behind one command.

    fastgpt train      train a model               (python -m fastgpt.train)
    fastgpt sample     sample from a checkpoint    (python -m fastgpt.sample)
    fastgpt attention  pictures of attention       (python -m fastgpt.attention_maps)
    fastgpt prepare    tokenize a large text       (python -m fastgpt.prepare)
    fastgpt convert    import the lecture's model  (python -m fastgpt.convert)
    fastgpt info       versions, devices, backends (python -m fastgpt.info)
    fastgpt bench      the benchmarks              (pytest bench/, from a source checkout)

`fastgpt COMMAND --help` lists a command's flags; they are those of its `python -m` tool.
"""
import importlib
import sys
from pathlib import Path
from typing import Optional

from fastgpt.cli import run_cli
from fastgpt.errors import UserError

# command -> its module (`fastgpt.attention` is the attention dispatch point, not a tool)
TOOLS = {"train": "train", "sample": "sample", "prepare": "prepare", "convert": "convert",
         "attention": "attention_maps", "info": "info"}


def bench(argv: list[str]) -> None:
    """pytest-benchmark over bench/ of the checkout in the current directory, or of the editable
    install's (the benchmarks ship with the source, not with the installed package)."""
    import pytest

    candidates = (Path.cwd() / "bench", Path(__file__).resolve().parent.parent / "bench")
    bench_dir = next((d for d in candidates if (d / "conftest.py").is_file()), None)
    if bench_dir is None:
        raise UserError("the benchmarks ship with the source, not the installed package; clone the "
                        "repository, install it with `pip install --no-build-isolation '.[test]'` "
                        "and run `fastgpt bench` (or `pytest bench/`) in the checkout")
    code = pytest.main([str(bench_dir), *argv])
    if code != 0:
        sys.exit(code)


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    command, rest = argv[0], argv[1:]
    if command == "bench":
        return bench(rest)
    if command not in TOOLS:
        raise UserError(f"unknown command {command!r}; choose one of {', '.join(TOOLS)}, bench "
                        f"(`fastgpt --help` says what each does)")
    sys.argv[0] = f"fastgpt {command}"  # argparse names the command in usage lines and errors
    importlib.import_module(f"fastgpt.{TOOLS[command]}").main(rest)


def entry_point() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry_point()
