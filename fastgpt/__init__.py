"""fastgpt: the character-level GPT of Karpathy's lecture, trained and sampled fast.

The Python API mirrors the tools (docs/python.md):

    model = fastgpt.train(preset="cpu", max_iters=2000)     # python -m fastgpt.train's flags
    model, tokenizer = fastgpt.load("out")                  # best.pt of a run
    text = fastgpt.sample(model, prompt="ROMEO:")           # python -m fastgpt.sample
    fastgpt.attention_maps(model, prompt="ROMEO: But soft") # fastgpt attention

Bad settings raise fastgpt.UserError with the one-line message the tools print.
"""
import importlib

__version__ = "0.1.0"

# Imported at first use: `import fastgpt` (and every tool's start-up) does not load torch for them.
# train, sample and attention_maps are the tools' modules themselves, callable (fastgpt.api).
_API = {"train": ("fastgpt.train", None), "sample": ("fastgpt.sample", None),
        "attention_maps": ("fastgpt.attention_maps", None), "load": ("fastgpt.api", "load"),
        "UserError": ("fastgpt.errors", "UserError")}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'fastgpt' has no attribute {name!r}")
    module_name, attribute = _API[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
