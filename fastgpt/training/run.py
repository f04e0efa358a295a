"""A training run set up, fresh or restored from a checkpoint: its config, data, model, optimizer,
precision and random state, in one place. Restoring is the reverse of what a checkpoint saves
(`state_dict` of each part, `rng_state` of the generators)."""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from fastgpt import checkpoint
from fastgpt.cli import check_fits, pick_device
from fastgpt.data.batches import RandomBatches, split
from fastgpt.data.dataset import MemmapDataset
from fastgpt.data.text import TextSource, encode_chars
from fastgpt.data.tokenizer import CharTokenizer
from fastgpt.errors import UserError
from fastgpt.files import check_out_dir
from fastgpt.model import GPT, GPTConfig
from fastgpt.training.config import TrainConfig, config_from_args, config_from_dict, validate
from fastgpt.training.distributed import SINGLE, Processes
from fastgpt.training.precision import Precision
from fastgpt.training.run_dir import check_fresh_out_dir, check_resume, load_resume_checkpoint


def resolve_config(args) -> tuple[TrainConfig, Optional[dict]]:
    """The run's config and, with --resume, the checkpoint it continues."""
    cfg = config_from_args(args)
    out_dir = Path(cfg.out_dir)
    check_out_dir(out_dir, "--out-dir")
    if not cfg.resume:
        validate(cfg)
        check_fresh_out_dir(out_dir)
        return cfg, None
    ckpt = load_resume_checkpoint(out_dir)
    cfg = config_from_args(args, base=config_from_dict(ckpt["train_config"]))
    validate(cfg)
    check_resume(cfg, ckpt, out_dir)
    return cfg, ckpt


# ---------------------------------------------------------------------------------------------
# The data: (splits, tokenizer, data hash, chars per token)
# ---------------------------------------------------------------------------------------------


def text_splits(cfg: TrainConfig, ckpt: Optional[dict]):
    """A text file (or the packaged corpus), encoded in memory."""
    source = TextSource.file(cfg.data) if cfg.data is not None else TextSource.packaged()
    resumed_tokenizer = None if ckpt is None else checkpoint.tokenizer_from_checkpoint(ckpt)
    ids, tokenizer, data_hash = encode_chars(source, resumed_tokenizer, None if ckpt is None else
                                             ckpt.get("data_sha256"), show_progress=True)
    return split(ids, cfg.block_size), tokenizer, data_hash, 1.0


def dataset_splits(cfg: TrainConfig, ckpt: Optional[dict]):
    """A prepared dataset, memory-mapped."""
    dataset = MemmapDataset(cfg.dataset)
    dataset.check_block_size(cfg.block_size)
    if ckpt is not None and ckpt["tokenizer"] != dataset.tokenizer.state_dict():
        raise UserError(f"{cfg.dataset} was tokenized with another tokenizer than the checkpoint "
                        f"({dataset.tokenizer.kind}, {dataset.tokenizer.vocab_size} tokens, against "
                        f"{ckpt['tokenizer']['kind']}); resume with the dataset the run started with")
    data_hash = dataset.meta["source"]["sha256"]
    if ckpt is not None and ckpt.get("data_sha256") not in (None, data_hash):
        raise UserError(f"{cfg.dataset} was prepared from another text than the checkpoint was "
                        f"trained on; resume with the dataset the run started with")
    return dataset.splits, dataset.tokenizer, data_hash, dataset.chars_per_token("val")


# ---------------------------------------------------------------------------------------------
# The model and the optimizer
# ---------------------------------------------------------------------------------------------


def check_memory(cfg: TrainConfig, vocab_size: int, device: torch.device) -> None:
    """Refuse sizes that cannot fit before trying to allocate them. A lower bound of what training
    holds: the weights, their gradients and AdamW's two moments (float32), the logits and their
    gradient, and ten activations of width n_embd per layer and position."""
    V, T, C, L, B = vocab_size, cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.batch_size
    params = 2 * V * C + T * C + 12 * L * C * C
    needed = 16 * params + 4 * B * T * (2 * V + 10 * L * C)
    check_fits(f"training {params / 1e6:,.1f}M parameters on batches of {B} x {T} tokens", needed,
               device, "pass a smaller --n-embd, --n-layer, --block-size or --batch-size")


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW as nanoGPT sets it up: weight decay on the matrices (Linear and Embedding weights) only;
    the fused kernel where this torch has one for the device, else the multi-tensor (foreach) one.
    With --optimizer muon, the blocks' weight matrices go to Muon instead (Optimizers)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    muon = [p for name, p in named if cfg.optimizer == "muon" and p.dim() == 2 and name.startswith("blocks.")]
    taken = {id(p) for p in muon}
    params = [p for _, p in named if id(p) not in taken]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kernel = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    adamw = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **kernel)
    if not muon:
        return adamw
    # match_rms_adamw scales Muon's orthogonal updates to AdamW's size: one rate, one schedule.
    return Optimizers(torch.optim.Muon(muon, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                       adjust_lr_fn="match_rms_adamw"), adamw)


class Optimizers:
    """Several optimizers stepped as one, each over its own parameters. `param_groups` is all of
    their groups (the loop sets every group's rate); the state is each one's, in order."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        self.param_groups = [group for optimizer in optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for optimizer, own in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(own)


# ---------------------------------------------------------------------------------------------
# Random state: everything a resumed run needs to draw the same numbers
# ---------------------------------------------------------------------------------------------


def rng_state(batches: RandomBatches, rank_states: Optional[list[dict]] = None) -> dict:
    """With `rank_states` (a data-parallel run): each process's own generators, by rank (dropout
    draws differ between processes; the batch stream is one and the same in all)."""
    state = {"torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "batches": batches.state_dict()}
    if rank_states:
        state["ranks"] = rank_states
    return state


def process_rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}


def set_rng_state(state: dict, batches: RandomBatches, procs: Processes = SINGLE) -> None:
    if procs.distributed:
        if len(state.get("ranks", ())) == procs.world_size:  # another count draws new dropout masks
            own = state["ranks"][procs.rank]
            torch.set_rng_state(own["torch"])
            if own["cuda"] is not None and torch.cuda.is_initialized():
                torch.cuda.set_rng_state(own["cuda"])
    else:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
    batches.load_state_dict(state["batches"])


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What a training run works with, fresh or restored from a checkpoint."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: RandomBatches
    tokenizer: CharTokenizer
    data_sha256: str
    precision: Precision
    start_iter: int = 0
    best_val_loss: float = math.inf
    chars_per_token: float = 1.0  # of the val split, for bits per character


def set_up(cfg: TrainConfig, ckpt: Optional[dict], make_model: Callable[[GPTConfig], nn.Module] = GPT,
           procs: Processes = SINGLE, device: Optional[torch.device] = None) -> Run:
    """The run `cfg` describes, continuing `ckpt` if given. `make_model` lets a benchmark train
    another model the same way. Every process of a data-parallel run builds the same model."""
    device = device or pick_device(cfg.device)
    load_splits = dataset_splits if cfg.dataset else text_splits
    splits, tokenizer, data_hash, chars_per_token = load_splits(cfg, ckpt)
    check_memory(cfg, tokenizer.vocab_size, device)
    batches = RandomBatches(splits, cfg.block_size, cfg.batch_size, cfg.seed, device, procs.rank,
                            procs.world_size)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model_config(tokenizer.vocab_size)).to(device)
    if procs.distributed:
        torch.manual_seed(cfg.seed + procs.rank)  # the same weights, different dropout masks
    run = Run(model, make_optimizer(model, cfg, device), batches, tokenizer, data_hash,
              Precision(cfg.dtype, device), chars_per_token=chars_per_token)
    if ckpt is not None:
        restore(run, ckpt, procs)
    return run


def restore(run: Run, ckpt: dict, procs: Processes) -> None:
    """Put the run where `ckpt` left it: weights, AdamW's moments, the generators, the scaler."""
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"], run.batches, procs)
        if "scaler" in ckpt:
            run.precision.scaler.load_state_dict(ckpt["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        detail = " ".join(str(e).split())[:200]
        raise UserError(f"the training state in the checkpoint is damaged ({type(e).__name__}: "
                        f"{detail}); resume from another copy or start a new run") from None
    run.start_iter, run.best_val_loss = ckpt["iter"], ckpt["best_val_loss"]
