"""What a training run shows while it runs: a header of what runs, then a progress bar (in a
terminal, or a notebook's) or plain log lines elsewhere, and one line per evaluation, each with the
time left."""
import statistics
import sys
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from tqdm import tqdm

from fastgpt.attention import explain
from fastgpt.training.config import TrainConfig
from fastgpt.training.distributed import Processes
from fastgpt.notebook import in_notebook
from fastgpt.training.run import Run

# The ETA's step time is the median of the last STEP_WINDOW steps: the first steps (warm-up) and a
# step that waited on the OS or a log write do not drag it, and it follows a run that speeds up.
STEP_WINDOW = 100
# Until a run has measured an evaluation (one resumed between two), its cost is guessed from the
# step time: 2 x eval_iters forward passes, each about a third of a training micro-batch (forward
# + backward + optimizer step).
FORWARD_PER_STEP = 1 / 3
# tqdm's own bar without its remaining time, which counts evaluations as slow steps: the postfix
# carries this module's ETA.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_bar(start_iter: int, total: int) -> Optional[tqdm]:
    """A notebook's bar in Jupyter or Colab, tqdm's bar on a terminal, None elsewhere (a log file,
    CI, nohup: plain lines)."""
    options = dict(total=total, initial=start_iter, desc="train", unit="it", bar_format=BAR_FORMAT)
    if in_notebook():
        try:
            from tqdm.notebook import tqdm as notebook_tqdm
            return notebook_tqdm(**options)
        except ImportError:  # a notebook without ipywidgets: plain lines in the cell
            return None
    if sys.stderr.isatty():
        return tqdm(**options, dynamic_ncols=True)
    return None


class Throughput:
    """Training tokens per second, timed around the steps alone (evaluations and checkpoints not
    counted), over two windows: since the last evaluation (its line) and since the last log line."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.windows = {"evaluation": [0.0, 0], "log": [0.0, 0]}  # name -> [seconds, steps]

    @contextmanager
    def step(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        for window in self.windows.values():
            window[0] += elapsed
            window[1] += 1

    def steps(self, window: str) -> int:
        return self.windows[window][1]

    def take(self, window: str) -> Optional[float]:
        """Tokens/s over `window`, which starts again; None when no step was timed in it."""
        seconds, steps = self.windows[window]
        self.windows[window] = [0.0, 0]
        return self.tokens_per_step * steps / seconds if steps else None


class Progress:
    """Where a run is and how long it has left. A bar (loss, lr, tokens/s and the ETA every
    log_interval steps) or, without one, plain lines, one every log_interval steps and one per
    evaluation, with no carriage-return redraws. Silent when not `enabled` (ranks other than 0).

    The ETA is the steps left times the step time plus the evaluations left times the last
    evaluation's cost, both measured on `clock` between the calls of `advance` (a step ended) and
    `evaluation` (an evaluation ended)."""

    def __init__(self, cfg: TrainConfig, start_iter: int, enabled: bool,
                 clock: Callable[[], float] = time.perf_counter):
        self.cfg, self.start_iter, self.total, self.enabled = cfg, start_iter, cfg.max_iters, enabled
        self.clock = clock
        self.started = self.last = clock()
        self.step_seconds: deque[float] = deque(maxlen=STEP_WINDOW)
        self.evaluation_seconds: Optional[float] = None
        self.evaluated: Optional[int] = None  # the step of the last evaluation
        self.bar = progress_bar(start_iter, self.total) if enabled else None

    def _lap(self) -> float:
        """Seconds since the last step or evaluation ended."""
        now = self.clock()
        seconds, self.last = now - self.last, now
        return seconds

    def seconds_left(self, done: int) -> Optional[float]:
        """The ETA after `done` steps (and the evaluation at `done`, if it has run); None until a
        step has been timed."""
        if not self.step_seconds:
            return None
        step = statistics.median(self.step_seconds)
        evaluation = self.evaluation_seconds
        if evaluation is None:
            evaluation = step * 2 * self.cfg.eval_iters * FORWARD_PER_STEP / self.cfg.grad_accum
        evaluations = (self.cfg.evaluations_after(done)
                       + (self.cfg.evaluates_at(done) and self.evaluated != done))
        return (self.total - done) * step + evaluations * evaluation

    def _times(self, done: int) -> str:
        left = self.seconds_left(done)
        return (f"elapsed {duration(self.clock() - self.started)}, "
                f"ETA {'?' if left is None else duration(left)}")

    def step(self, done: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            left = self.seconds_left(done)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                                 ETA="?" if left is None else duration(left))
        elif self.enabled:
            print(f"step {done}/{self.total}: loss {loss:.4f}, lr {lr:.2e}, {tokens_per_s:,.0f} "
                  f"tokens/s, {self._times(done)}", flush=True)

    def advance(self) -> None:
        self.step_seconds.append(self._lap())
        if self.bar is not None:
            self.bar.update()

    def evaluation(self, done: int, losses: dict[str, float], lr: float,
                   tokens_per_s: Optional[float], extra: Optional[str]) -> None:
        self.evaluation_seconds, self.evaluated = self._lap(), done
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


def header(cfg: TrainConfig, run: Run, procs: Processes) -> str:
    """What this run is: printed once at its start."""
    device, precision = run.batches.device, run.precision
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
