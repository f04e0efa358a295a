"""Jupyter and Colab: whether the code runs in a notebook's kernel, and pictures shown inline.

IPython is looked up, never imported: a script that has not imported it runs in no notebook, and
start-up stays as fast as it was."""
import sys
from pathlib import Path
from typing import Iterable


def in_notebook() -> bool:
    """Whether this is a Jupyter or Colab kernel: IPython's shell of a kernel app, the check
    tqdm.autonotebook makes (a terminal IPython has a shell but no IPKernelApp)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def show_images(paths: Iterable[Path]) -> None:
    """Show PNG files in the notebook's output, one after another."""
    from IPython.display import Image, display

    for path in paths:
        display(Image(filename=str(path)))
