"""Training configuration: one typed dataclass, named presets, and the command-line flags made from it.

Precedence: the dataclass defaults, then the preset, then the flags given on the command line.
"""
import argparse
import difflib
import typing
from dataclasses import Field, dataclass, field, fields, replace
from typing import Optional

from fastgpt.api import check_path, check_setting
from fastgpt.cli import ATTENTION_CHOICES, ATTENTION_HELP, DEVICE_HELP, check_positive, check_range, flag
from fastgpt.errors import UserError
from fastgpt.model import GPTConfig, InvalidConfig


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # data and output
    data: Optional[str] = _opt(None, "UTF-8 text file to train on (default: tiny Shakespeare, "
                                     "which comes with the package)")
    dataset: Optional[str] = _opt(None, "a directory written by `python -m fastgpt.prepare` "
                                        "(memory-mapped train.bin/val.bin and their tokenizer), "
                                        "instead of --data")
    out_dir: str = _opt("out", "directory for checkpoints (last.pt, best.pt), metrics.jsonl and loss.png")
    resume: bool = _opt(False, "continue from out_dir/last.pt exactly where it stopped")
    seed: int = _opt(1337, "seed of every random number generator")
    device: str = _opt("auto", DEVICE_HELP)
    attention: str = _opt("auto", ATTENTION_HELP, choices=ATTENTION_CHOICES)
    dtype: str = _opt("float32", "precision of the forward pass under autocast: float32, bfloat16, "
                                 "float16 (with a GradScaler), or auto (bfloat16 on CUDA from sm_80, float16 below, else float32)",
                      choices=("float32", "bfloat16", "float16", "auto"))
    compile: bool = _opt(False, "wrap the model in torch.compile")
    # model
    block_size: int = _opt(128, "context length in characters")
    n_layer: int = _opt(4, "transformer blocks")
    n_head: int = _opt(4, "attention heads per block")
    n_embd: int = _opt(32, "embedding width (divisible by n_head)")
    dropout: float = _opt(0.2, "dropout on attention weights, projections and MLP, in [0, 1)")
    # optimisation
    batch_size: int = _opt(32, "sequences per step (per process and micro-step under torchrun)")
    grad_accum: int = _opt(1, "micro-batches accumulated per step in each process: the global batch "
                              "is batch_size × grad_accum × processes")
    max_iters: int = _opt(5000, "training steps")
    learning_rate: float = _opt(3e-4, "peak learning rate of AdamW")
    lr_schedule: str = _opt("constant", "constant (the lecture) or cosine (linear warm-up, then "
                                        "cosine decay to min_lr, as nanoGPT)", choices=("constant", "cosine"))
    warmup_iters: int = _opt(0, "linear warm-up steps of the cosine schedule")
    min_lr: float = _opt(3e-5, "final learning rate of the cosine schedule")
    weight_decay: float = _opt(0.01, "AdamW weight decay (torch's default, as the lecture)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.999, "AdamW beta2")
    grad_clip: float = _opt(1.0, "clip the gradient norm to this (0 turns clipping off)")
    optimizer: str = _opt("adamw", "adamw, or muon: Muon (torch.optim.Muon, its rate matched to "
                                   "AdamW's) on the blocks' weight matrices, AdamW on the rest",
                          choices=("adamw", "muon"))
    # evaluation and output
    eval_interval: int = _opt(500, "steps between evaluations and checkpoints")
    eval_iters: int = _opt(200, "batches per split in each evaluation")
    log_interval: int = _opt(10, "steps between updates of the progress bar's loss, lr and tokens/s")
    sample_chars: int = _opt(200, "characters sampled and printed at the end (0: none)")
    target_val_loss: Optional[float] = _opt(None, "stop at the first evaluation whose val loss is at "
                                                  "or below this, and print the time it took")

    def evaluates_at(self, done: int) -> bool:
        """A run evaluates after every eval_interval-th step and after its last (a new run at 0 too)."""
        return done % self.eval_interval == 0 or done == self.max_iters

    def evaluations_after(self, done: int) -> int:
        """How many evaluations (evaluates_at) come after step `done`."""
        last_apart = self.max_iters % self.eval_interval != 0 and done < self.max_iters
        return self.max_iters // self.eval_interval - done // self.eval_interval + last_apart

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout,
                         attention=self.attention)


# The lecture presets clip the gradient norm only at spikes: above every step of normal training
# (measured with bench/grad_norms.py, docs/training.md); at 1.0 most steps would be clipped.
SPIKE_GRAD_CLIP = 10.0

PRESETS: dict[str, dict] = {
    # The seed's CPU table.
    "cpu": dict(batch_size=32, block_size=128, n_embd=32, n_head=4, n_layer=4, dropout=0.2,
                learning_rate=3e-4, max_iters=5000, eval_interval=500, eval_iters=200,
                grad_clip=SPIKE_GRAD_CLIP),
    # The lecture's GPU run, in bfloat16 autocast on CUDA (float32 with --device cpu).
    "gpu": dict(batch_size=64, block_size=256, n_embd=384, n_head=6, n_layer=6, dropout=0.2,
                learning_rate=3e-4, max_iters=5000, eval_interval=500, eval_iters=200,
                grad_clip=SPIKE_GRAD_CLIP, dtype="auto"),
    # nanoGPT's shakespeare_char recipe on CPU (its README's command line).
    "nanogpt-cpu": dict(batch_size=12, block_size=64, n_embd=128, n_head=4, n_layer=4, dropout=0.0,
                        learning_rate=1e-3, max_iters=2000, lr_schedule="cosine", warmup_iters=100,
                        min_lr=1e-4, beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250,
                        eval_iters=20),
    # nanoGPT's CPU model to nanoGPT's CPU quality (val 1.8857) in a fifth of its steps: batches of
    # 32, Muon on the blocks' matrices at a 4e-3 peak, the cosine ending soon after the target is
    # reached (docs/quick.md: the experiments).
    "quick": dict(batch_size=32, block_size=64, n_embd=128, n_head=4, n_layer=4, dropout=0.0,
                  optimizer="muon", learning_rate=4e-3, max_iters=400, lr_schedule="cosine",
                  warmup_iters=50, min_lr=1e-4, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
                  eval_interval=400, eval_iters=16, target_val_loss=1.8857),
}


def default_preset() -> str:
    import torch
    return "gpu" if torch.cuda.is_available() else "cpu"


def _kind(f: Field) -> type:
    """bool, int, float or str: what a field's flag parses its value to (an Optional one's type)."""
    kind = next((t for t in typing.get_args(f.type) if t is not type(None)), f.type)
    return kind if kind in (bool, int, float) else str


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="named hyperparameters, overridden by any flag given "
                             "(default: gpu when CUDA is available, else cpu)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        kind = _kind(f)
        if kind is bool:
            parser.add_argument(flag(f.name), action="store_true", default=argparse.SUPPRESS, help=help_text)
            continue
        parser.add_argument(flag(f.name), type=kind, default=argparse.SUPPRESS,
                            help=f"{help_text} (default: {getattr(defaults, f.name)} or the preset's)",
                            **meta)
    return parser


PATHS = ("data", "dataset", "out_dir")  # str or os.PathLike from Python


def namespace_from_settings(settings: dict) -> argparse.Namespace:
    """fastgpt.train's keywords (the flags with underscores, and preset) as the namespace that
    build_parser's flags parse to, each checked as argparse checks its flag."""
    config_fields = {f.name: f for f in fields(TrainConfig)}
    args = argparse.Namespace(preset=None)
    for name, value in settings.items():
        if name == "preset":
            check_setting(name, value, str, tuple(sorted(PRESETS)))
        elif name not in config_fields:
            close = difflib.get_close_matches(name, ["preset", *config_fields], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"unknown setting {name!r}; {hint}the settings are the flags of "
                            f"`python -m fastgpt.train --help` with underscores, and preset")
        elif name in PATHS:
            if value is not None or name == "out_dir":  # data and dataset: None is the default
                value = check_path(name, value)
        else:
            kind = _kind(config_fields[name])
            check_setting(name, value, kind, config_fields[name].metadata.get("choices"))
            value = kind(value)  # as argparse gives it: 0 for a float setting is 0.0
        setattr(args, name, value)
    return args


def config_from_args(args: argparse.Namespace, base: Optional[TrainConfig] = None) -> TrainConfig:
    """Defaults, then the preset, then the flags that were given. A resumed run passes its saved
    config as `base`: then only an explicit --preset and the given flags change it."""
    if base is None:
        base, preset = TrainConfig(), PRESETS[args.preset or default_preset()]
    else:
        preset = PRESETS[args.preset] if args.preset else {}
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return replace(base, **{**preset, **given})


def config_from_dict(saved: dict) -> TrainConfig:
    """The TrainConfig a checkpoint saved; fields added since then take their defaults."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names})


POSITIVE = ("batch_size", "max_iters", "eval_interval", "eval_iters", "log_interval", "grad_accum",
            "learning_rate")
NON_NEGATIVE = ("warmup_iters", "min_lr", "weight_decay", "grad_clip", "sample_chars")
SEED_LIMIT = 2**63 - 2**16  # torch seeds are 64-bit; data-parallel ranks add their rank


def validate(cfg: TrainConfig) -> None:
    """A UserError naming the first flag whose value cannot work."""
    for name in POSITIVE:
        check_positive(flag(name), getattr(cfg, name))
    for name in NON_NEGATIVE:
        check_range(flag(name), getattr(cfg, name), 0)
    for name in ("beta1", "beta2"):
        check_range(flag(name), getattr(cfg, name), 0.0, 1.0, below=True)
    check_range("--seed", cfg.seed, 0, SEED_LIMIT, below=True)
    try:
        cfg.model_config(vocab_size=1)
    except InvalidConfig as e:
        raise UserError(f"{flag(e.field)} {e.requirement}") from None
    if cfg.data is not None and cfg.dataset is not None:
        raise UserError("--data (a text file) and --dataset (a prepared directory) exclude each "
                        "other; pass only one of them")
