"""Train the character-level GPT: `python -m fastgpt.train [--preset cpu|gpu|nanogpt-cpu] [--flags]`.

The lecture's loop, organised as nanoGPT's: random batches, AdamW, a constant or warm-up + cosine
learning rate, gradient clipping, and every `eval_interval` steps an evaluation that appends to
out_dir/metrics.jsonl, redraws out_dir/loss.png and writes the checkpoints last.pt and best.pt
(lowest val loss). `--resume` continues from last.pt exactly where that run was. SIGTERM or SIGINT
stops a run after its current step, with a last.pt of that step (fastgpt.signals).

This file holds what runs, in the order it runs: the set-up, the learning-rate schedule, the step,
the evaluation and the loop. The out_dir's life is fastgpt.run_dir's, the metrics and plot
fastgpt.metrics', what the run prints fastgpt.progress'.

Beyond one process and one corpus: `--dataset DIR` trains on a memory-mapped dataset written by
`python -m fastgpt.prepare` (char or BPE); `torchrun --nproc_per_node=N -m fastgpt.train` trains
data-parallel (fastgpt.distributed); `--dtype bfloat16|float16` runs under autocast
(fastgpt.precision); `--compile` wraps the model in torch.compile.

From Python, `fastgpt.train(**settings)` (train_from_settings) is the same run, the flags as
keywords (docs/python.md).
"""
import argparse
import math
import shlex
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from fastgpt import checkpoint
from fastgpt.api import make_callable
from fastgpt.cli import UserError, check_fits, pick_device, run_cli
from fastgpt.config import (TrainConfig, build_parser, config_from_args, config_from_dict,
                            namespace_from_settings, validate)
from fastgpt.data import RandomBatches, TextSource, encode_chars, split
from fastgpt.dataset import MemmapDataset, bits_per_char
from fastgpt.distributed import SINGLE, Processes, launched_processes, start, stop
from fastgpt.files import DiskFull, check_out_dir
from fastgpt.metrics import METRICS, PLOT, append_metrics, plot_losses, read_metrics, resumed_metrics
from fastgpt.model import GPT, GPTConfig
from fastgpt.notebook import in_notebook, show_images
from fastgpt.precision import Precision
from fastgpt.progress import Progress, header
from fastgpt.run_dir import (RUN_FILES, check_fresh_out_dir, check_resume_matches, claim_run_dir,
                             load_resume_checkpoint)  # RUN_FILES, METRICS: still train's names too
from fastgpt.signals import StopSignals, Stopped
from fastgpt.tokenizer import CharTokenizer


# ---------------------------------------------------------------------------------------------
# Set-up: config, data, model, optimizer, restored state
# ---------------------------------------------------------------------------------------------


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


def text_splits(cfg: TrainConfig, ckpt: Optional[dict], show_progress: bool = True):
    """(splits, tokenizer, data hash, chars per token) of the text file, encoded in memory."""
    source = TextSource.file(cfg.data) if cfg.data is not None else TextSource.packaged()
    if ckpt is None:
        ids, tokenizer, data_hash = encode_chars(source, show_progress=show_progress)
    else:
        ids, tokenizer, data_hash = encode_chars(source, checkpoint.tokenizer_from_checkpoint(ckpt),
                                                 ckpt.get("data_sha256"), show_progress)
    return split(ids, cfg.block_size), tokenizer, data_hash, 1.0


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
# Set-up: the run, fresh or restored
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The learning-rate schedule, the step, the evaluation
# ---------------------------------------------------------------------------------------------


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


def evaluate(model: nn.Module, batches: RandomBatches, cfg: TrainConfig, done: int,
             precision: Precision) -> dict[str, float]:
    """The evaluation after `done` steps; a run whose losses are not finite stops here."""
    losses = estimate_loss(model, batches, cfg.eval_iters, precision)
    if not all(map(math.isfinite, losses.values())):
        raise UserError(f"the evaluation at step {done} gives losses {losses}: the run diverged and "
                        f"stops without a checkpoint of it; --resume with a lower --learning-rate "
                        f"(or a --grad-clip)")
    return losses


# ---------------------------------------------------------------------------------------------
# What a run leaves in out_dir
# ---------------------------------------------------------------------------------------------


def resume_command(cfg: TrainConfig, procs: Processes) -> str:
    launcher = "torchrun <its options>" if procs.distributed else "python"
    return f"{launcher} -m fastgpt.train --resume --out-dir {shlex.quote(cfg.out_dir)}"


class RunWriter:
    """What a run leaves in out_dir (see fastgpt.run_dir): at each evaluation best.pt (when val
    improves), a row of metrics.jsonl, loss.png, then last.pt; when a signal stops the run between
    evaluations, last.pt of the step it stopped at (best.pt stays the best evaluation's). Every
    process calls `gather` before a checkpoint (a data-parallel run's checkpoint holds each
    process's random state); rank 0 alone writes. `saved`: the step last.pt holds (None: no
    last.pt yet)."""

    def __init__(self, cfg: TrainConfig, run: Run, precision: Precision, procs: Processes,
                 saved: Optional[int]):
        self.cfg, self.run, self.precision, self.procs = cfg, run, precision, procs
        self.out_dir = Path(cfg.out_dir)
        self.best = run.best_val_loss
        self.rank_states: list[dict] = []
        self.saved = saved

    def gather(self) -> None:
        self.rank_states = self.procs.all_gather(process_rng_state()) if self.procs.distributed else []

    def state(self, iteration: int) -> dict:
        """The checkpoint of the run after `iteration` steps."""
        run = self.run
        return checkpoint.make(run.model, run.tokenizer, optimizer=run.optimizer.state_dict(),
                               iter=iteration, best_val_loss=self.best, train_config=asdict(self.cfg),
                               rng=rng_state(run.batches, self.rank_states),
                               data_sha256=run.data_sha256, scaler=self.precision.scaler.state_dict())

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write is one line saying what is kept and how to go on."""
        if self.saved is None:  # a new run before its first last.pt: a rerun starts it again
            then = "run the command again"
        else:
            then = (f"resume with `{resume_command(self.cfg, self.procs)}` ({checkpoint.LAST} of "
                    f"step {self.saved} is kept)")
        try:
            yield
        except DiskFull as e:
            raise DiskFull(e.path, e.needed, then) from None
        except OSError as e:
            raise UserError(f"cannot write in {self.out_dir} ({e.strerror or e}); {then}") from None

    def save_last(self, iteration: int) -> None:
        """last.pt of step `iteration`, which a run stopped at."""
        with self._writing():
            checkpoint.save(self.state(iteration), self.out_dir / checkpoint.LAST)
        self.saved = iteration

    def evaluation(self, iteration: int, losses: dict[str, float], lr: float,
                   tokens_per_s: Optional[float]) -> str:
        """training_loop's on_eval; returns the bits per character, for the evaluation's line."""
        with self._writing():
            bpc = self._write_evaluation(iteration, losses, lr, tokens_per_s)
        self.saved = iteration
        return bpc

    def _write_evaluation(self, iteration: int, losses: dict[str, float], lr: float,
                          tokens_per_s: Optional[float]) -> str:
        improved = losses["val"] < self.best
        self.best = min(self.best, losses["val"])
        state = self.state(iteration)
        if improved:
            checkpoint.save(state, self.out_dir / checkpoint.BEST)
        val_bpc = bits_per_char(losses["val"], self.run.chars_per_token)
        append_metrics(self.out_dir / METRICS, {"iter": iteration, "train_loss": losses["train"],
                                                "val_loss": losses["val"], "val_bpc": val_bpc,
                                                "lr": lr, "tokens_per_s": tokens_per_s,
                                                "time": time.time()})
        plot_losses(read_metrics(self.out_dir / METRICS), self.out_dir / PLOT)
        checkpoint.save(state, self.out_dir / checkpoint.LAST)  # last: see fastgpt.run_dir
        return f"{val_bpc:.4f} bits/char"


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def wrap_for_training(model: nn.Module, cfg: TrainConfig, procs: Processes,
                      device: torch.device) -> nn.Module:
    """The module the steps call: compiled with --compile, then DDP-wrapped under torchrun. The
    plain `model` (shared weights) is what checkpoints save and sampling uses."""
    if cfg.compile:
        model = torch.compile(model)
    if procs.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


# on_eval(iteration, {"train": loss, "val": loss}, lr, training tokens/s since the last evaluation
# (None at step 0)) -> text to add to the evaluation's line, or None
EvalCallback = Callable[[int, dict[str, float], float, Optional[float]], Optional[str]]


def training_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: RandomBatches,
                  cfg: TrainConfig, start_iter: int, on_eval: EvalCallback,
                  precision: Optional[Precision] = None, procs: Processes = SINGLE,
                  before_eval: Callable[[], None] = lambda: None,
                  signals: Optional[StopSignals] = None) -> int:
    """Steps start_iter .. max_iters - 1. A new run evaluates first (the untrained loss), then
    after every eval_interval-th step and the last; each evaluation calls on_eval and prints a line.
    Data-parallel: every process calls before_eval, then rank 0 alone evaluates and reports
    (tokens/s counts the global batch); `model` is the DDP-wrapped one. With `signals`, a stop
    signal ends the loop after the step (and evaluation) it came in, on every process alike.
    Returns the steps done."""
    precision = precision or Precision("float32", batches.device)
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * procs.world_size
    eval_model = model.module if isinstance(model, DistributedDataParallel) else model
    progress = Progress(cfg, start_iter, procs.is_main)
    done, lr = start_iter, learning_rate(start_iter, cfg)
    step_time, steps_timed, log_time, log_steps = 0.0, 0, 0.0, 0
    model.train()
    while True:
        # a resumed run starts from a state that the run which saved it evaluated
        if cfg.evaluates_at(done) and (done == 0 or done > start_iter):
            before_eval()
            if procs.is_main:
                tokens_per_s = tokens_per_step * steps_timed / step_time if steps_timed else None
                losses = evaluate(eval_model, batches, cfg, done, precision)
                progress.evaluation(done, losses, lr, tokens_per_s,
                                    on_eval(done, losses, lr, tokens_per_s))
            step_time, steps_timed = 0.0, 0
        if done == cfg.max_iters or (signals is not None and signals.requested(procs, batches.device)):
            break
        lr = learning_rate(done, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        # .item() waits for the GPU: the time below is the step's
        loss = train_step(model, optimizer, batches, cfg, precision).item()
        if not math.isfinite(loss):
            raise UserError(f"the training loss became {loss} at step {done + 1}: the run diverged "
                            f"and stops; its last.pt is kept: --resume with a lower "
                            f"--learning-rate (or a --grad-clip)")
        elapsed = time.perf_counter() - started
        step_time, steps_timed = step_time + elapsed, steps_timed + 1
        log_time, log_steps = log_time + elapsed, log_steps + 1
        done += 1
        progress.advance()
        if log_steps == cfg.log_interval:
            progress.step(done, loss, lr, tokens_per_step * log_steps / log_time)
            log_time, log_steps = 0.0, 0
    progress.close()
    return done


def sample_text(model: GPT, tokenizer: CharTokenizer, n_chars: int, device: torch.device) -> str:
    """n_chars characters generated after a newline (the lecture starts from token 0)."""
    start = 0 if tokenizer.unknown("\n") else tokenizer.encode("\n")[0]
    model.eval()
    idx = model.generate(torch.tensor([[start]], device=device), max_new_tokens=n_chars)
    return tokenizer.decode(idx[0, 1:].tolist())


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def save_stopped_run(writer: RunWriter, done: int, start_iter: int, cfg: TrainConfig,
                     procs: Processes) -> None:
    """last.pt of the step a signal stopped the run at, unless it holds that step already (the
    step the run resumed at, or one it evaluated). Every process calls it and waits for the save,
    so that they end together."""
    if not (done == start_iter or cfg.evaluates_at(done)):
        writer.gather()
        if procs.is_main:
            writer.save_last(done)
    procs.barrier()


def train(cfg: TrainConfig, ckpt: Optional[dict] = None, procs: Processes = SINGLE) -> GPT:
    """Train as `cfg` says (continuing `ckpt` if given); returns the trained model, carrying its
    tokenizer. Every process of a data-parallel run calls this; only rank 0 prints and writes
    out_dir, and in a notebook shows the loss curve at the end."""
    device = start(procs, pick_device(cfg.device))
    precision = Precision(cfg.dtype, device)
    run = set_up(cfg, ckpt, procs=procs, device=device)
    if ckpt is not None and "scaler" in ckpt:
        precision.scaler.load_state_dict(ckpt["scaler"])
    if procs.is_main:
        print(header(cfg, run, device, precision, procs), flush=True)
    writer = RunWriter(cfg, run, precision, procs, saved=None if ckpt is None else run.start_iter)
    with claim_run_dir(Path(cfg.out_dir), ckpt) if procs.is_main else nullcontext(), \
            StopSignals() as signals:
        done = training_loop(wrap_for_training(run.model, cfg, procs, device), run.optimizer,
                             run.batches, cfg, run.start_iter, writer.evaluation, precision, procs,
                             writer.gather, signals)
        if signals.agreed:
            save_stopped_run(writer, done, run.start_iter, cfg, procs)
            raise Stopped(signals.agreed, f"stopped by {signals.name} after step {done} of "
                                          f"{cfg.max_iters}, saved in {writer.out_dir / checkpoint.LAST}; "
                                          f"resume with `{resume_command(cfg, procs)}`")
    if cfg.sample_chars and procs.is_main:
        print(sample_text(run.model, run.tokenizer, cfg.sample_chars, run.batches.device))
    if procs.is_main and in_notebook():
        show_images([writer.out_dir / PLOT])
    run.model.tokenizer = run.tokenizer
    return run.model


def train_from_args(args: argparse.Namespace, procs: Processes) -> GPT:
    """The run that parsed flags or fastgpt.train's keywords describe: both entry points run this."""
    cfg, ckpt = resolve_config(args)
    try:
        model = train(cfg, ckpt, procs)
        procs.barrier()  # no rank tears its process group down while another still uses it
    finally:
        stop(procs)
    return model


def train_from_settings(**settings) -> GPT:
    """fastgpt.train(**settings): a run with the settings of `python -m fastgpt.train` as keywords,
    the flags with underscores (n_embd=64, preset="cpu"); returns the trained model in eval mode,
    carrying its tokenizer (fastgpt.sample takes it as it is). In Jupyter or Colab the progress is a
    notebook bar and the loss curve shows at the end. Bad settings raise fastgpt.UserError; a stop
    signal (a notebook's interrupt) stops the run after its step, saves last.pt and raises
    fastgpt.signals.Stopped (fastgpt.train(resume=True, out_dir=...) continues it)."""
    return train_from_args(namespace_from_settings(settings), launched_processes()).eval()


def main(argv: Optional[list[str]] = None) -> None:
    args = build_parser(__doc__.splitlines()[0]).parse_args(argv)
    procs = launched_processes()
    try:
        train_from_args(args, procs)
    except Stopped as e:
        if procs.is_main:
            print(e, file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


make_callable(__name__, train_from_settings)

if __name__ == "__main__":
    run_cli(main)
