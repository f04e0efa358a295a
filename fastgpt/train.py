"""Train the character-level GPT: `python -m fastgpt.train [--preset cpu|gpu|nanogpt-cpu] [--flags]`.

The lecture's loop, organised as nanoGPT's: random batches, AdamW, a constant or warm-up + cosine
learning rate, gradient clipping, and every `eval_interval` steps an evaluation that appends to
out_dir/metrics.jsonl, redraws out_dir/loss.png and writes the checkpoints last.pt and best.pt
(lowest val loss). `--resume` continues from last.pt exactly where that run was.

Beyond one process and one corpus: `--dataset DIR` trains on a memory-mapped dataset written by
`python -m fastgpt.prepare` (char or BPE); `torchrun --nproc_per_node=N -m fastgpt.train` trains
data-parallel (fastgpt.distributed); `--dtype bfloat16|float16` runs under autocast
(fastgpt.precision); `--compile` wraps the model in torch.compile.
"""
import json
import math
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fastgpt import checkpoint
from fastgpt.attention import explain
from fastgpt.cli import UserError, check_fits, flag, pick_device, run_cli
from fastgpt.config import TrainConfig, build_parser, config_from_args, config_from_dict, validate
from fastgpt.data import RandomBatches, read_text, shakespeare, split, text_sha256
from fastgpt.dataset import MemmapDataset, bits_per_char
from fastgpt.distributed import SINGLE, Processes, launched_processes, start, stop
from fastgpt.files import atomic_write, check_not_users, check_out_dir, claim_out_dir, is_fastgpt_dir
from fastgpt.model import GPT, GPTConfig
from fastgpt.precision import Precision
from fastgpt.tokenizer import CharTokenizer

METRICS, PLOT = "metrics.jsonl", "loss.png"
# What a run writes in out_dir, in the order of each evaluation: best.pt (when val improves), a
# row of metrics.jsonl, loss.png, and last.pt, which commits the evaluation. So a run can be resumed
# once last.pt exists, and a resumed run drops the metrics rows after last.pt's iteration (written
# again); before the first last.pt (a run killed in its first evaluation) out_dir holds at most
# best.pt, metrics.jsonl and loss.png of an unfinished first checkpoint, which a plain rerun of the
# command removes.
RUN_FILES = (checkpoint.BEST, METRICS, PLOT, checkpoint.LAST)
# Files that show a directory without the marker was written by fastgpt (runs older than it).
RUN_PROOF = (checkpoint.LAST, METRICS)
# The model's shape; a resumed run must keep it. (`attention` says how it runs and may change.)
MODEL_FIELDS = ("block_size", "n_layer", "n_head", "n_embd", "dropout")

# ---------------------------------------------------------------------------------------------
# Set-up: device, out_dir, data, model, optimizer
# ---------------------------------------------------------------------------------------------


def check_fresh_out_dir(out_dir: Path) -> None:
    """A new run never overwrites a run that can be resumed, nor a user's files."""
    if (out_dir / checkpoint.LAST).exists():
        existing = [name for name in RUN_FILES if (out_dir / name).exists()]
        raise UserError(f"{out_dir} already holds a run ({', '.join(existing)}); pass --resume to "
                        f"continue it, or --out-dir NEW_DIR to start another")
    check_not_users(out_dir, "--out-dir", RUN_FILES, RUN_PROOF)


def remove_unfinished_run(out_dir: Path) -> None:
    """What a new run killed before its first last.pt left (see RUN_FILES): fastgpt's files only,
    as check_fresh_out_dir proved."""
    if is_fastgpt_dir(out_dir, RUN_PROOF):
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)


def load_resume_checkpoint(out_dir: Path) -> dict:
    path = out_dir / checkpoint.LAST
    if not path.exists():
        raise UserError(f"--resume needs {path}, which does not exist; start a new run without "
                        f"--resume or pass the --out-dir of the run to continue")
    ckpt = checkpoint.load_checkpoint(path)
    if "optimizer" not in ckpt:
        raise UserError(f"{path} holds weights but no training state, so it cannot be resumed; "
                        f"start a new run with another --out-dir")
    expected = {"iter": int, "best_val_loss": float, "train_config": dict, "model_config": dict,
                "rng": dict, "optimizer": dict}
    for key, kind in expected.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt[key], bool):
            raise UserError(f"{path} is damaged ({key} is {type(ckpt.get(key)).__name__}, not "
                            f"{kind.__name__}); resume from another copy or start a new run")
    if ckpt["iter"] < 0 or not all(isinstance(ckpt["model_config"].get(name), (int, float))
                                   for name in MODEL_FIELDS):
        raise UserError(f"{path} is damaged (its iteration or model config); resume from another "
                        f"copy or start a new run")
    return ckpt


def check_resume_matches(cfg: TrainConfig, ckpt: dict, path: Path) -> None:
    """A flag that changes the model's shape cannot apply to a resumed run."""
    saved = ckpt["model_config"]
    for name in MODEL_FIELDS:
        if getattr(cfg, name) != saved[name]:
            raise UserError(f"{flag(name)} {getattr(cfg, name)} contradicts the checkpoint {path} "
                            f"({name} = {saved[name]}); drop the flag to resume, or start a new "
                            f"run with another --out-dir")
    if cfg.max_iters <= ckpt["iter"]:
        raise UserError(f"{path} has already trained {ckpt['iter']} iterations; pass a --max-iters "
                        f"above {ckpt['iter']} to train further")


def load_text(cfg: TrainConfig) -> str:
    return read_text(cfg.data) if cfg.data is not None else shakespeare()


def encode_text(text: str, tokenizer: CharTokenizer) -> torch.Tensor:
    missing = tokenizer.unknown(text)
    if missing:
        raise UserError(f"the data has characters outside the checkpoint's vocabulary "
                        f"({''.join(missing[:20])!r}); resume with the data the run started with")
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


def check_memory(cfg: TrainConfig, vocab_size: int, device: torch.device) -> None:
    """Refuse sizes that cannot fit before trying to allocate them. A lower bound of what training
    holds: the weights, their gradients and AdamW's two moments (float32), the logits and their
    gradient, and ten activations of width n_embd per layer and position."""
    V, T, C, L, B = vocab_size, cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.batch_size
    params = 2 * V * C + T * C + 12 * L * C * C
    needed = 16 * params + 4 * B * T * (2 * V + 10 * L * C)
    check_fits(f"training {params / 1e6:,.1f}M parameters on batches of {B} x {T} tokens", needed,
               device, "pass a smaller --n-embd, --n-layer, --block-size or --batch-size")


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW as nanoGPT sets it up: weight decay on the matrices (Linear and Embedding weights) only;
    the fused kernel where this torch has one for the device, else the multi-tensor (foreach) one."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kernel = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **kernel)


def learning_rate(it: int, cfg: TrainConfig) -> float:
    """The rate of step `it`: constant (the lecture), or nanoGPT's linear warm-up over warmup_iters
    then cosine decay to min_lr at max_iters."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.max_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


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
# The loop
# ---------------------------------------------------------------------------------------------


def gradient_sync(model: nn.Module, sync: bool):
    """DDP all-reduces the gradients in every backward; accumulating micro-batches skip it until
    the last one."""
    if sync or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches: RandomBatches,
               cfg: TrainConfig, precision: Optional[Precision] = None) -> torch.Tensor:
    """One optimisation step on grad_accum training batches of this process (DDP averages the
    gradients over the processes); returns their mean loss (a 0-d tensor)."""
    precision = precision or Precision("float32", batches.device)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=batches.device)
    for micro in range(cfg.grad_accum):
        x, y = batches.batch("train")
        with gradient_sync(model, micro == cfg.grad_accum - 1):
            with precision.autocast():
                _, loss = model(x, y)
            precision.scaler.scale(loss / cfg.grad_accum).backward()
        total += loss.detach()
    precision.scaler.unscale_(optimizer)  # clip the true gradients, not the float16-scaled ones
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    precision.scaler.step(optimizer)
    precision.scaler.update()
    return total / cfg.grad_accum


@torch.no_grad()
def estimate_loss(model: nn.Module, batches: RandomBatches, eval_iters: int,
                  precision: Optional[Precision] = None) -> dict[str, float]:
    """Mean loss over eval_iters batches of each split, in eval mode (no dropout). The batches are
    whole global batches, so a data-parallel run scores what one process would."""
    precision = precision or Precision("float32", batches.device)
    model.eval()
    losses = {}
    for name in ("train", "val"):
        generator = batches.eval_generator()
        total = torch.zeros(())
        for _ in range(eval_iters):
            with precision.autocast():
                _, loss = model(*batches.batch(name, generator, whole=True))
            total += loss.float().cpu()
        losses[name] = total.item() / eval_iters
    model.train()
    return losses


# on_eval(iteration, {"train": loss, "val": loss}, lr, training tokens/s since the last evaluation
# (None at step 0)) -> text to add to the evaluation's line, or None
EvalCallback = Callable[[int, dict[str, float], float, Optional[float]], Optional[str]]


def duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Where a run is. On a terminal a tqdm bar (loss, lr and tokens/s every log_interval steps);
    elsewhere (a log file, CI, nohup) plain lines, one every log_interval steps and one per
    evaluation, with no carriage-return redraws. Silent when not `enabled` (ranks other than 0)."""

    def __init__(self, start_iter: int, total: int, enabled: bool):
        self.enabled, self.start_iter, self.total = enabled, start_iter, total
        self.started = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=start_iter, desc="train", unit="it",
                            dynamic_ncols=True)

    def _times(self, done: int) -> str:
        elapsed = time.perf_counter() - self.started
        rate = (done - self.start_iter) / elapsed if done > self.start_iter else 0.0
        eta = duration((self.total - done) / rate) if rate else "?"
        return f"elapsed {duration(elapsed)}, ETA {eta}"

    def step(self, done: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
        elif self.enabled:
            print(f"step {done}/{self.total}: loss {loss:.4f}, lr {lr:.2e}, {tokens_per_s:,.0f} "
                  f"tokens/s, {self._times(done)}", flush=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def evaluation(self, done: int, losses: dict[str, float], lr: float,
                   tokens_per_s: Optional[float], extra: Optional[str]) -> None:
        speed = "" if tokens_per_s is None else f", {tokens_per_s:,.0f} tokens/s"
        line = (f"eval {done}/{self.total}: train loss {losses['train']:.4f}, val loss "
                f"{losses['val']:.4f}{'' if extra is None else ' (' + extra + ')'}, lr {lr:.2e}"
                f"{speed}, {self._times(done)}")
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def training_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: RandomBatches,
                  cfg: TrainConfig, start_iter: int, on_eval: EvalCallback,
                  precision: Optional[Precision] = None, procs: Processes = SINGLE,
                  before_eval: Callable[[], None] = lambda: None) -> None:
    """Steps start_iter .. max_iters - 1. A new run evaluates first (the untrained loss), then
    after every eval_interval-th step and the last; each evaluation calls on_eval and prints a line.
    Data-parallel: every process calls before_eval, then rank 0 alone evaluates and reports
    (tokens/s counts the global batch); `model` is the DDP-wrapped one."""
    precision = precision or Precision("float32", batches.device)
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * procs.world_size
    eval_model = model.module if isinstance(model, DistributedDataParallel) else model
    progress = Progress(start_iter, cfg.max_iters, procs.is_main)

    def evaluate(done: int, lr: float, tokens_per_s: Optional[float]) -> None:
        before_eval()
        if procs.is_main:
            losses = estimate_loss(eval_model, batches, cfg.eval_iters, precision)
            if not all(map(math.isfinite, losses.values())):
                raise UserError(f"the evaluation at step {done} gives losses {losses}: the run "
                                f"diverged and stops without a checkpoint of it; --resume with a "
                                f"lower --learning-rate (or a --grad-clip)")
            progress.evaluation(done, losses, lr, tokens_per_s, on_eval(done, losses, lr, tokens_per_s))

    if start_iter == 0:
        evaluate(0, learning_rate(0, cfg), None)
    model.train()
    step_time, steps_timed, log_time, log_steps = 0.0, 0, 0.0, 0
    for it in range(start_iter, cfg.max_iters):
        lr = learning_rate(it, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        # .item() waits for the GPU: the time below is the step's
        loss = train_step(model, optimizer, batches, cfg, precision).item()
        if not math.isfinite(loss):
            raise UserError(f"the training loss became {loss} at step {it + 1}: the run diverged "
                            f"and stops; the checkpoint of the last evaluation is kept: --resume "
                            f"with a lower --learning-rate (or a --grad-clip)")
        elapsed = time.perf_counter() - started
        step_time, steps_timed = step_time + elapsed, steps_timed + 1
        log_time, log_steps = log_time + elapsed, log_steps + 1
        done = it + 1
        progress.advance()
        if log_steps == cfg.log_interval:
            progress.step(done, loss, lr, tokens_per_step * log_steps / log_time)
            log_time, log_steps = 0.0, 0
        if done % cfg.eval_interval == 0 or done == cfg.max_iters:
            evaluate(done, lr, tokens_per_step * steps_timed / step_time)
            step_time, steps_timed = 0.0, 0
    progress.close()


# ---------------------------------------------------------------------------------------------
# What each evaluation leaves in out_dir
# ---------------------------------------------------------------------------------------------


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def resumed_metrics(path: Path, iteration: int) -> list[dict]:
    """The rows of metrics.jsonl a run resumed at `iteration` keeps: those of the evaluations
    up to it (not 0 itself, which a run resumed there evaluates again); later rows are of an
    evaluation killed before its last.pt. A last line without its newline is an append that a kill
    cut short and goes; any other damage is a UserError."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}); delete it to resume without the old "
                        f"metrics") from None
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines[:-1], 1):  # lines[-1]: after the last newline
        try:
            row = json.loads(line)
            assert isinstance(row, dict) and isinstance(row["iter"], int)
            assert all(isinstance(row[k], (int, float)) for k in ("train_loss", "val_loss"))
        except (ValueError, KeyError, TypeError, AssertionError):
            raise UserError(f"{path} line {number} is damaged; repair or delete that line (or the "
                            f"file) and resume again") from None
        if row["iter"] < iteration or row["iter"] == iteration > 0:
            rows.append(row)
    return rows


def plot_losses(metrics: list[dict], path: Path) -> None:
    """Train and val loss against iteration, as a PNG (matplotlib without a display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    iters = [row["iter"] for row in metrics]
    ax.plot(iters, [row["train_loss"] for row in metrics], label="train")
    ax.plot(iters, [row["val_loss"] for row in metrics], label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)


def sample_text(model: GPT, tokenizer: CharTokenizer, n_chars: int, device: torch.device) -> str:
    """n_chars characters generated after a newline (the lecture starts from token 0)."""
    start = 0 if tokenizer.unknown("\n") else tokenizer.encode("\n")[0]
    model.eval()
    idx = model.generate(torch.tensor([[start]], device=device), max_new_tokens=n_chars)
    return tokenizer.decode(idx[0, 1:].tolist())


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def text_splits(cfg: TrainConfig, ckpt: Optional[dict]):
    """(splits, tokenizer, data hash, chars per token) of the text file, encoded in memory."""
    text = load_text(cfg)
    data_hash = text_sha256(text)
    if ckpt is None:
        tokenizer = CharTokenizer.from_text(text)
    else:
        if ckpt.get("data_sha256") not in (None, data_hash):
            raise UserError(f"the data differs from the data the checkpoint was trained on; resume "
                            f"with the same --data (it was {ckpt['train_config'].get('data')})")
        tokenizer = checkpoint.tokenizer_from_checkpoint(ckpt)
    ids = encode_text(text, tokenizer)
    return split(ids, cfg.block_size), tokenizer, data_hash, len(text) / len(ids)


def dataset_splits(cfg: TrainConfig, ckpt: Optional[dict]):
    """(splits, tokenizer, data hash, chars per token) of a prepared dataset, memory-mapped."""
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


@dataclass
class Run:
    """What a training run works with, fresh or restored from a checkpoint."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: RandomBatches
    tokenizer: CharTokenizer
    data_sha256: str
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
              chars_per_token=chars_per_token)
    if ckpt is not None:
        try:
            run.model.load_state_dict(ckpt["model"])
            run.optimizer.load_state_dict(ckpt["optimizer"])
            set_rng_state(ckpt["rng"], batches, procs)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            detail = " ".join(str(e).split())[:200]
            raise UserError(f"the training state in the checkpoint is damaged ({type(e).__name__}: "
                            f"{detail}); resume from another copy or start a new run") from None
        run.start_iter, run.best_val_loss = ckpt["iter"], ckpt["best_val_loss"]
    return run


def header(cfg: TrainConfig, run: Run, device: torch.device, precision: Precision,
           procs: Processes) -> str:
    """What this run is: printed once at its start."""
    n_params = sum(p.numel() for p in run.model.parameters())
    tokens = {name: split.numel() for name, split in run.batches.splits.items()}
    processes = f" x {procs.world_size} processes" if procs.distributed else ""
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    attention = explain(cfg.attention, device.type, precision.dtype, cfg.n_embd // cfg.n_head)
    return "\n".join([
        f"fastgpt train -> {cfg.out_dir} "
        f"({'resuming at iteration ' + str(run.start_iter) if run.start_iter else 'new run'})",
        f"  model      {n_params / 1e6:.3f}M parameters: {cfg.n_layer} layers, {cfg.n_head} heads, "
        f"n_embd {cfg.n_embd}, block {cfg.block_size}, vocab {run.tokenizer.vocab_size}",
        f"  data       {cfg.dataset or cfg.data or 'tiny Shakespeare'}: {tokens['train']:,} train and "
        f"{tokens['val']:,} val tokens",
        f"  step       {cfg.batch_size} x {cfg.block_size} x {cfg.grad_accum}{processes} = "
        f"{cfg.batch_size * cfg.block_size * cfg.grad_accum * procs.world_size:,} tokens",
        f"  device     {device}{threads}, {precision.name}",
        f"  attention  {attention}",
    ])


def resolve_config(args) -> tuple[TrainConfig, Optional[dict]]:
    """The run's config and, with --resume, the checkpoint it continues."""
    cfg = config_from_args(args)
    out_dir = Path(cfg.out_dir)
    check_out_dir(out_dir, "--out-dir")
    ckpt = None
    if cfg.resume:
        ckpt = load_resume_checkpoint(out_dir)
        cfg = config_from_args(args, base=config_from_dict(ckpt["train_config"]))
    validate(cfg)
    if ckpt is None:
        check_fresh_out_dir(out_dir)
    else:
        check_resume_matches(cfg, ckpt, out_dir / checkpoint.LAST)
        resumed_metrics(out_dir / METRICS, ckpt["iter"])
    return cfg, ckpt


@contextmanager
def claim_run_dir(out_dir: Path, ckpt: Optional[dict]) -> Iterator[None]:
    """Hold out_dir for this run (fastgpt.files.claim_out_dir), then, now that no other process
    can change it, check it again and clear it: a new run removes an unfinished first checkpoint;
    a resumed one drops the metrics rows it will write again."""
    with claim_out_dir(out_dir, "--out-dir", "train", RUN_FILES, RUN_PROOF):
        if ckpt is None:
            check_fresh_out_dir(out_dir)
            remove_unfinished_run(out_dir)
        else:
            if (out_dir / METRICS).exists():
                rows = resumed_metrics(out_dir / METRICS, ckpt["iter"])
                with atomic_write(out_dir / METRICS) as f:
                    f.write("".join(json.dumps(row) + "\n" for row in rows).encode())
        yield


def wrap_for_training(model: nn.Module, cfg: TrainConfig, procs: Processes,
                      device: torch.device) -> nn.Module:
    """The module the steps call: compiled with --compile, then DDP-wrapped under torchrun. The
    plain `model` (shared weights) is what checkpoints save and sampling uses."""
    if cfg.compile:
        model = torch.compile(model)
    if procs.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def train(cfg: TrainConfig, ckpt: Optional[dict] = None, procs: Processes = SINGLE) -> GPT:
    """Train as `cfg` says (continuing `ckpt` if given); returns the trained model. Every process of
    a data-parallel run calls this; only rank 0 prints and writes out_dir."""
    out_dir = Path(cfg.out_dir)
    device = start(procs, pick_device(cfg.device))
    precision = Precision(cfg.dtype, device)
    run = set_up(cfg, ckpt, procs=procs, device=device)
    model, optimizer, batches, tokenizer = run.model, run.optimizer, run.batches, run.tokenizer
    if ckpt is not None and "scaler" in ckpt:
        precision.scaler.load_state_dict(ckpt["scaler"])
    if procs.is_main:
        print(header(cfg, run, device, precision, procs), flush=True)
    best = run.best_val_loss
    rank_states: list[dict] = []

    def gather_rank_states() -> None:  # every process, at each evaluation
        rank_states[:] = procs.all_gather(process_rng_state()) if procs.distributed else []

    def on_eval(iteration: int, losses: dict[str, float], lr: float,
                tokens_per_s: Optional[float]) -> str:
        try:
            return write_evaluation(iteration, losses, lr, tokens_per_s)
        except OSError as e:
            raise UserError(f"cannot write in {out_dir} ({e.strerror or e}); the checkpoint of the "
                            f"evaluation before is kept: free space and --resume") from None

    def write_evaluation(iteration: int, losses: dict[str, float], lr: float,
                         tokens_per_s: Optional[float]) -> str:
        nonlocal best
        state = checkpoint.make(model, tokenizer, optimizer=optimizer.state_dict(), iter=iteration,
                                best_val_loss=min(best, losses["val"]), train_config=asdict(cfg),
                                rng=rng_state(batches, rank_states), data_sha256=run.data_sha256,
                                scaler=precision.scaler.state_dict())
        if losses["val"] < best:
            best = losses["val"]
            checkpoint.save(state, out_dir / checkpoint.BEST)
        val_bpc = bits_per_char(losses["val"], run.chars_per_token)
        append_metrics(out_dir / METRICS, {"iter": iteration, "train_loss": losses["train"],
                                           "val_loss": losses["val"], "val_bpc": val_bpc, "lr": lr,
                                           "tokens_per_s": tokens_per_s, "time": time.time()})
        plot_losses(read_metrics(out_dir / METRICS), out_dir / PLOT)
        checkpoint.save(state, out_dir / checkpoint.LAST)  # last: see RUN_FILES
        return f"{val_bpc:.4f} bits/char"

    with claim_run_dir(out_dir, ckpt) if procs.is_main else nullcontext():
        training_loop(wrap_for_training(model, cfg, procs, device), optimizer, batches, cfg,
                      run.start_iter, on_eval, precision, procs, gather_rank_states)
    if cfg.sample_chars and procs.is_main:
        print(sample_text(model, tokenizer, cfg.sample_chars, batches.device))
    return model


def main(argv: Optional[list[str]] = None) -> None:
    args = build_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg, ckpt = resolve_config(args)
    procs = launched_processes()
    try:
        train(cfg, ckpt, procs)
    finally:
        stop(procs)


if __name__ == "__main__":
    run_cli(main)
