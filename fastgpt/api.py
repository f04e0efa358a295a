"""What the Python API shares (docs/python.md): tool modules that are also functions, `load`, the
model-or-out_dir argument and the checks of keyword settings.

`fastgpt.train`, `fastgpt.sample` and `fastgpt.attention_maps` are the modules of their tools, made
callable: a function bound to the same name in the package would be replaced by the module the
moment anything imported it (`from fastgpt.train import main` does), so the module itself is the
function. Errors are UserErrors with the tools' one-line messages, which name each setting by its
flag (--max-new-tokens for max_new_tokens).
"""
import inspect
import os
import sys
import types
from typing import Callable, Optional

from fastgpt import checkpoint
from fastgpt.cli import ATTENTION_CHOICES, flag, pick_device
from fastgpt.errors import UserError
from fastgpt.model import GPT


class CallableModule(types.ModuleType):
    """A tool's module that, called, runs the tool's Python function (`python_api`)."""

    def __call__(self, *args, **kwargs):
        return self.python_api(*args, **kwargs)


def make_callable(module_name: str, function: Callable) -> None:
    """Make the module `module_name` callable as `function`, with its signature (help, Jupyter's ?)."""
    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.python_api = function
    module.__signature__ = inspect.signature(function)


def check_setting(name: str, value, kind: type, choices: Optional[tuple] = None) -> None:
    """A UserError unless `value` is of `kind` (an int counts as a float, a bool as neither) and
    one of `choices` if given: what argparse checks of a flag, for a keyword."""
    accepted = {int: (int,), float: (int, float)}.get(kind, (kind,))
    if not isinstance(value, accepted) or (isinstance(value, bool) and kind is not bool):
        raise UserError(f"{flag(name)} must be {'an' if kind is int else 'a'} {kind.__name__}, got "
                        f"{value!r} ({type(value).__name__})")
    if choices is not None and value not in choices:
        raise UserError(f"{flag(name)} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_path(name: str, value) -> str:
    """A path setting (str or os.PathLike) as the str the tools take."""
    if not isinstance(value, (str, os.PathLike)):
        raise UserError(f"{flag(name)} must be a path (str or pathlib.Path), got {value!r}")
    return os.fspath(value)


def load(out_dir: str | os.PathLike = "out", device: str = "auto", attention: Optional[str] = None):
    """(model, tokenizer) of a run's best.pt, or of a checkpoint file: the model in eval mode on
    `device` (cpu, cuda, cuda:N or auto), carrying its tokenizer (`model.tokenizer`) for
    fastgpt.sample and fastgpt.attention_maps; `attention` overrides the checkpoint's backend."""
    path = check_path("out_dir", out_dir)
    check_setting("device", device, str)
    if attention is not None:
        check_setting("attention", attention, str, ATTENTION_CHOICES)
    model, tokenizer = checkpoint.load(path, pick_device(device), attention)
    model.tokenizer = tokenizer
    return model, tokenizer


def model_and_tokenizer(model_or_out_dir, device: Optional[str], attention: Optional[str]):
    """The model to sample or draw from and its tokenizer: a model as it is (from fastgpt.train or
    fastgpt.load), or loaded from an out_dir or checkpoint file on `device` (default auto)."""
    if isinstance(model_or_out_dir, GPT):
        if device is not None or attention is not None:
            raise UserError("device and attention choose how a checkpoint is loaded; a model runs "
                            "where it is: move it with model.to(...), switch its backend with "
                            "model.set_attention(...)")
        if model_or_out_dir.tokenizer is None:
            raise UserError("this model has no tokenizer; pass a model from fastgpt.train or "
                            "fastgpt.load, or its out_dir")
        return model_or_out_dir, model_or_out_dir.tokenizer
    if not isinstance(model_or_out_dir, (str, os.PathLike)):
        raise UserError(f"expected a model (from fastgpt.train or fastgpt.load) or an out_dir, got "
                        f"{type(model_or_out_dir).__name__}")
    return load(model_or_out_dir, device or "auto", attention)

