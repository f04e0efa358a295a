"""Checkpoints: written atomically, read with torch.load(weights_only=True) so that a checkpoint
file can never run code.

A checkpoint is a dict of plain data and tensors:
  format, version          identifies a fastgpt checkpoint
  model_config             GPTConfig fields
  tokenizer                the tokenizer's state_dict()
  model                    the model's state_dict()
and, when written by training: optimizer, iter, best_val_loss, train_config, rng.
"""
import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from fastgpt.errors import UserError
from fastgpt.files import atomic_write
from fastgpt.model import GPT, GPTConfig
from fastgpt.tokenizer import tokenizer_from_state_dict

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
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def resolve_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or an out_dir meaning its best checkpoint."""
    path = Path(path)
    return path / BEST if path.is_dir() else path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict, or a UserError saying why the file is not a usable checkpoint."""
    path = resolve_path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: train one with `python -m fastgpt.train "
                        f"--out-dir {path.parent}` or pass the right --out-dir")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} holds objects a checkpoint must not contain, refused for safety "
                        f"({str(e).splitlines()[0]}); use a checkpoint written by fastgpt") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path} is truncated or not a torch checkpoint ({str(e).splitlines()[0]}); "
                        f"use last.pt/best.pt or train again") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a fastgpt checkpoint; convert a lecture state_dict with "
                        f"`python -m fastgpt.convert`")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{path} is a version {ckpt.get('version')} checkpoint; this fastgpt reads "
                        f"version {VERSION}")
    return ckpt


def model_from_checkpoint(ckpt: dict, attention: Optional[str] = None) -> GPT:
    config = GPTConfig(**ckpt["model_config"])
    if attention is not None:
        config.attention = attention
    model = GPT(config)
    model.load_state_dict(ckpt["model"])
    return model


def load(path: str | os.PathLike, device: str | torch.device = "cpu",
         attention: Optional[str] = None):
    """(model in eval mode on `device`, tokenizer) from a checkpoint file or an out_dir."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, attention).to(device).eval()
    return model, tokenizer_from_state_dict(ckpt["tokenizer"])
