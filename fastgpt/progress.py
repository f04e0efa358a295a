"""What a training run shows while it runs: a header of what runs, then a progress bar on a
terminal or plain log lines elsewhere, and one line per evaluation."""
import sys
import time
from typing import TYPE_CHECKING, Optional

import torch
from tqdm import tqdm

from fastgpt.attention import explain
from fastgpt.config import TrainConfig
from fastgpt.distributed import Processes
from fastgpt.precision import Precision

if TYPE_CHECKING:
    from fastgpt.train import Run


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



def header(cfg: TrainConfig, run: "Run", device: torch.device, precision: Precision,
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
