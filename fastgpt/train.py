"""Train the character-level GPT: `python -m fastgpt.train [--preset cpu|gpu|nanogpt-cpu|quick] [--flags]`.

The lecture's loop, organised as nanoGPT's: random batches, AdamW, a constant or warm-up + cosine
learning rate, gradient clipping, and every `eval_interval` steps an evaluation that appends to
out_dir/metrics.jsonl, redraws out_dir/loss.png and writes the checkpoints last.pt and best.pt
(lowest val loss). `--resume` continues from last.pt exactly where that run was. SIGTERM or SIGINT
stops a run after its current step, with a last.pt of that step. `--target-val-loss` stops a run
at the first evaluation that reaches it.

This file is the loop, in the order it runs: the learning rate, the step, the evaluation, the
loop, the command. What a run is made of lives in fastgpt/training/: its set-up and restoring
(run.py), what it writes and when (writer.py), what it prints (progress.py), the flags (config.py).

Beyond one process and one corpus: `--dataset DIR` trains on a memory-mapped dataset written by
`python -m fastgpt.prepare` (char or BPE); `torchrun --nproc_per_node=N -m fastgpt.train` trains
data-parallel; `--dtype bfloat16|float16` runs under autocast; `--compile` wraps the model in
torch.compile. From Python, `fastgpt.train(**settings)` is the same run, the flags as keywords
(docs/python.md).
"""
import argparse
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from fastgpt import checkpoint
from fastgpt.api import make_callable
from fastgpt.cli import pick_device, run_cli
from fastgpt.data.batches import RandomBatches
from fastgpt.data.tokenizer import CharTokenizer
from fastgpt.errors import UserError
from fastgpt.model import GPT
from fastgpt.notebook import in_notebook, show_images
from fastgpt.training.config import TrainConfig, build_parser, namespace_from_settings
from fastgpt.training.distributed import SINGLE, Processes, launched_processes, start, stop
from fastgpt.training.metrics import PLOT
from fastgpt.training.precision import Precision
from fastgpt.training.progress import Progress, Throughput, duration, header
from fastgpt.training.run import Run, resolve_config, set_up
from fastgpt.training.run_dir import claim_run_dir
from fastgpt.training.signals import StopSignals, Stopped
from fastgpt.training.writer import RunWriter, resume_command


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


# Evaluation scores its batches about this many tokens a forward call: the same windows and the
# same mean loss as a batch a call, in fewer calls, whose parallel regions a busy machine delays
# less (bench/results/cpu-profile-2026-12-03.md).
EVAL_TOKENS_PER_CALL = 1 << 14


@torch.no_grad()
def estimate_loss(model: nn.Module, batches: RandomBatches, eval_iters: int,
                  precision: Optional[Precision] = None) -> dict[str, float]:
    """Mean loss over eval_iters batches of each split, in eval mode (no dropout). The batches are
    whole global batches, so a data-parallel run scores what one process would."""
    precision = precision or Precision("float32", batches.device)
    batch_tokens = batches.world_size * batches.batch_size * batches.block_size
    per_call = max(1, EVAL_TOKENS_PER_CALL // batch_tokens)
    model.eval()
    losses = {}
    for name in ("train", "val"):
        generator = batches.eval_generator()
        total = 0.0
        for first in range(0, eval_iters, per_call):
            drawn = [batches.batch(name, generator, whole=True) for _ in range(min(per_call, eval_iters - first))]
            with precision.autocast():
                _, loss = model(torch.cat([x for x, _ in drawn]), torch.cat([y for _, y in drawn]))
            total += loss.float().item() * len(drawn)  # a mean over equal batches
        losses[name] = total / eval_iters
    model.train()
    return losses


def evaluate(model: nn.Module, run: Run, cfg: TrainConfig, done: int) -> dict[str, float]:
    """The evaluation after `done` steps; a run whose losses are not finite stops here."""
    losses = estimate_loss(model, run.batches, cfg.eval_iters, run.precision)
    if not all(map(math.isfinite, losses.values())):
        raise UserError(f"the evaluation at step {done} gives losses {losses}: the run diverged and "
                        f"stops without a checkpoint of it; --resume with a lower --learning-rate "
                        f"(or a --grad-clip)")
    return losses


# on_eval(iteration, {"train": loss, "val": loss}, lr, training tokens/s since the last evaluation
# (None at step 0)) -> text to add to the evaluation's line, or None
EvalCallback = Callable[[int, dict[str, float], float, Optional[float]], Optional[str]]


def training_loop(model: nn.Module, run: Run, cfg: TrainConfig, on_eval: EvalCallback,
                  procs: Processes = SINGLE, before_eval: Callable[[], None] = lambda: None,
                  signals: Optional[StopSignals] = None) -> int:
    """Steps start_iter .. max_iters - 1 of `run`, on `model` (the run's model, or it compiled or
    DDP-wrapped). A new run evaluates first (the untrained loss), then after every eval_interval-th
    step and the last; each evaluation calls on_eval and prints a line. Data-parallel: every
    process calls before_eval, then rank 0 alone evaluates and reports. The loop ends early, on
    every process alike, after the step a stop signal came in (`signals`) or at the evaluation that
    reaches --target-val-loss. Returns the steps done."""
    eval_model = model.module if isinstance(model, DistributedDataParallel) else model
    progress = Progress(cfg, run.start_iter, procs.is_main)
    throughput = Throughput(cfg.batch_size * cfg.block_size * cfg.grad_accum * procs.world_size)
    done, lr = run.start_iter, learning_rate(run.start_iter, cfg)
    model.train()
    while True:
        # a resumed run starts from a state that the run which saved it evaluated
        if cfg.evaluates_at(done) and (done == 0 or done > run.start_iter):
            before_eval()
            reached = False
            if procs.is_main:
                tokens_per_s = throughput.take("evaluation")
                losses = evaluate(eval_model, run, cfg, done)
                progress.evaluation(done, losses, lr, tokens_per_s, on_eval(done, losses, lr, tokens_per_s))
                reached = cfg.target_val_loss is not None and losses["val"] <= cfg.target_val_loss
            if cfg.target_val_loss is not None and procs.max(int(reached), run.batches.device):
                break
        if done == cfg.max_iters or (signals is not None and signals.requested(procs, run.batches.device)):
            break
        lr = learning_rate(done, cfg)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        with throughput.step():  # .item() waits for the GPU: the time is the step's
            loss = train_step(model, run.optimizer, run.batches, cfg, run.precision).item()
        if not math.isfinite(loss):
            raise UserError(f"the training loss became {loss} at step {done + 1}: the run diverged "
                            f"and stops; its last.pt is kept: --resume with a lower "
                            f"--learning-rate (or a --grad-clip)")
        done += 1
        progress.advance()
        if throughput.steps("log") == cfg.log_interval:
            progress.step(done, loss, lr, throughput.take("log"))
    progress.close()
    return done


def wrap_for_training(model: nn.Module, cfg: TrainConfig, procs: Processes,
                      device: torch.device) -> nn.Module:
    """The module the steps call: compiled with --compile, then DDP-wrapped under torchrun. The
    plain `model` (shared weights) is what checkpoints save and sampling uses."""
    if cfg.compile:
        model = torch.compile(model)
    if procs.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def sample_text(model: GPT, tokenizer: CharTokenizer, n_chars: int, device: torch.device) -> str:
    """n_chars characters generated after a newline (the lecture starts from token 0)."""
    start = 0 if tokenizer.unknown("\n") else tokenizer.encode("\n")[0]
    model.eval()
    idx = model.generate(torch.tensor([[start]], device=device), max_new_tokens=n_chars)
    return tokenizer.decode(idx[0, 1:].tolist())


def train(cfg: TrainConfig, ckpt: Optional[dict] = None, procs: Processes = SINGLE) -> GPT:
    """Train as `cfg` says (continuing `ckpt` if given); returns the trained model, carrying its
    tokenizer. Every process of a data-parallel run calls this; only rank 0 prints and writes
    out_dir, and in a notebook shows the loss curve at the end."""
    started = time.perf_counter()
    device = start(procs, pick_device(cfg.device))
    run = set_up(cfg, ckpt, procs=procs, device=device)
    if procs.is_main:
        print(header(cfg, run, procs), flush=True)
    writer = RunWriter(cfg, run, procs, resumed=ckpt is not None)
    with claim_run_dir(Path(cfg.out_dir), ckpt) if procs.is_main else nullcontext(), \
            StopSignals() as signals:
        done = training_loop(wrap_for_training(run.model, cfg, procs, device), run, cfg,
                             writer.evaluation, procs, writer.gather, signals)
        if signals.agreed:
            writer.maybe_save(done)
            raise Stopped(signals.agreed, f"stopped by {signals.name} after step {done} of "
                                          f"{cfg.max_iters}, saved in {writer.out_dir / checkpoint.LAST}; "
                                          f"resume with `{resume_command(cfg, procs)}`")
    if procs.is_main and cfg.target_val_loss is not None:
        reached = writer.best <= cfg.target_val_loss
        print(f"{'reached' if reached else 'did not reach'} val loss {cfg.target_val_loss} "
              f"{'at step ' + str(done) if reached else 'in ' + str(done) + ' steps'}, "
              f"{duration(time.perf_counter() - started)} after the run started", flush=True)
    if cfg.sample_chars and procs.is_main:
        print(sample_text(run.model, run.tokenizer, cfg.sample_chars, device))
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
    fastgpt.training.signals.Stopped (fastgpt.train(resume=True, out_dir=...) continues it)."""
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
