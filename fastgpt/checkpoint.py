"""Checkpoints: written atomically, read with torch.load(weights_only=True) so that a checkpoint
file can never run code.

A checkpoint is a dict of plain data and tensors:
  format, version          identifies a fastgpt checkpoint
  model_config             GPTConfig fields
  tokenizer                the tokenizer's state_dict()
  model                    the model's state_dict()
and, when written by training: optimizer, iter, best_val_loss, train_config, rng (the batch
generator's and the processes' random states), data_sha256 (of the text or dataset source) and
scaler (the GradScaler's state).
Loading checks that every weight is finite (and, to resume, every optimizer moment).
"""
import os
import pickle
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch

from fastgpt.errors import UserError
from fastgpt.files import atomic_write
from fastgpt.model import GPT, GPTConfig
from fastgpt.data.tokenizer import tokenizer_from_state_dict

FORMAT = "fastgpt-checkpoint"
VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def make(model: GPT, tokenizer, **extra) -> dict:
    """The checkpoint dict of a model and its tokenizer, plus training state in `extra`."""
    return {"format": FORMAT, "version": VERSION, "model_config": asdict(model.config),
            "tokenizer": tokenizer.state_dict(), "model": model.state_dict(), **extra}


def save(checkpoint: dict, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`: a crash at
    any moment leaves either the old file or the new one, never a torn one."""
    with atomic_write(path, size=tensor_bytes(checkpoint)) as f:
        torch.save(checkpoint, f)


def tensor_bytes(obj) -> int:
    """The bytes of the tensors in nested dicts and lists: nearly all of a checkpoint's size."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(map(tensor_bytes, obj.values()))
    if isinstance(obj, (list, tuple)):
        return sum(map(tensor_bytes, obj))
    return 0


def resolve_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or an out_dir meaning its best checkpoint."""
    path = Path(path)
    return path / BEST if path.is_dir() else path


def safe_torch_load(path: Path, map_location: str | torch.device = "cpu", *, fix: str):
    """torch.load(weights_only=True): plain data and tensors only, no code. Any failure is a
    UserError ending in `fix`."""
    try:
        with warnings.catch_warnings():  # torch's warnings about odd files would add lines
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused:
            raise UserError(f"{path} holds pickled objects other than tensors and plain data "
                            f"({refused.group(1)}), refused because loading them could run code; "
                            f"{fix}") from None
        raise UserError(f"{path} is truncated or not a torch file (unreadable pickle); {fix}") from None
    except Exception as e:  # garbage makes torch.load raise RuntimeError, KeyError, EOFError, ...
        detail = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}" if str(e) else type(e).__name__
        raise UserError(f"{path} is truncated or not a torch file ({detail}); {fix}") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict, or a UserError saying why the file is not a usable checkpoint."""
    path = resolve_path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: train one with `python -m fastgpt.train "
                        f"--out-dir {path.parent}` or pass the right --out-dir")
    ckpt = safe_torch_load(path, map_location, fix="use last.pt/best.pt of a fastgpt run or train again")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a fastgpt checkpoint; convert a lecture state_dict with "
                        f"`python -m fastgpt.convert`")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{path} is a version {ckpt.get('version')} checkpoint; this fastgpt reads "
                        f"version {VERSION}")
    check_finite(model_tensors(ckpt), path)
    return ckpt


def model_tensors(ckpt: dict) -> Iterator[tuple[str, torch.Tensor]]:
    model = ckpt.get("model")
    if isinstance(model, dict):
        yield from ((f"model tensor {name}", t) for name, t in model.items())


def optimizer_tensors(ckpt: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """The optimizer's moments (AdamW's, or Muon's and AdamW's): what a resumed run trains with
    besides the weights."""
    optimizer = ckpt.get("optimizer")
    states = optimizer.get("optimizers", [optimizer]) if isinstance(optimizer, dict) else []
    states = states if isinstance(states, list) else []
    for number, own in enumerate(states):
        label = "optimizer" if len(states) == 1 else f"optimizer {number}"
        if isinstance(own, dict) and isinstance(own.get("state"), dict):
            for index, state in own["state"].items():
                if isinstance(state, dict):
                    yield from ((f"{label} state {key} of parameter {index}", t) for key, t in state.items())


def check_finite(named_tensors: Iterable[tuple[str, torch.Tensor]], path: Path) -> None:
    """A UserError naming the first tensor with a NaN or an infinity: sampling from it would fail
    deep inside torch, and resuming from it would train on nothing. A tensor's sum is finite when
    all of it is (one pass, no copy); only a sum that is not (or overflows) is looked at closely."""
    for name, tensor in named_tensors:
        if (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
                and not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all()):
            raise UserError(f"{path} holds NaN or infinite values ({name}): the run that wrote it "
                            f"diverged or the file is damaged; use an earlier checkpoint (best.pt, "
                            f"or --resume from a copy of an earlier last.pt) or train again")


def model_from_checkpoint(ckpt: dict, attention: Optional[str] = None) -> GPT:
    try:
        config = GPTConfig(**ckpt["model_config"])
        if attention is not None:
            config.attention = attention
        model = GPT(config)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        detail = " ".join(str(e).split())[:200]  # load_state_dict lists the bad keys on many lines
        raise UserError(f"the checkpoint's model is damaged ({detail}); use another checkpoint or "
                        f"train again") from None
    return model


def tokenizer_from_checkpoint(ckpt: dict):
    try:
        return tokenizer_from_state_dict(ckpt["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"the checkpoint's tokenizer is damaged ({e}); use another checkpoint or "
                        f"train again") from None


def load(path: str | os.PathLike, device: str | torch.device = "cpu",
         attention: Optional[str] = None):
    """(model in eval mode on `device`, tokenizer) from a checkpoint file or an out_dir."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, attention).to(device).eval()
    return model, tokenizer_from_checkpoint(ckpt)
