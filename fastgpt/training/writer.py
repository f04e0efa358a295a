"""What a run leaves in its out_dir, and when (see fastgpt.training.run_dir for the rules): at each
evaluation best.pt (when val improves), a row of metrics.jsonl, loss.png, then last.pt; when a
signal stops the run between evaluations, last.pt of the step it stopped at."""
import shlex
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Optional

from fastgpt import checkpoint
from fastgpt.data.dataset import bits_per_char
from fastgpt.errors import UserError
from fastgpt.files import DiskFull
from fastgpt.training.config import TrainConfig
from fastgpt.training.distributed import Processes
from fastgpt.training.metrics import METRICS, PLOT, append_metrics, plot_losses, read_metrics
from fastgpt.training.run import Run, process_rng_state, rng_state


def resume_command(cfg: TrainConfig, procs: Processes) -> str:
    launcher = "torchrun <its options>" if procs.distributed else "python"
    return f"{launcher} -m fastgpt.train --resume --out-dir {shlex.quote(cfg.out_dir)}"


class RunWriter:
    """Writes the run's out_dir; rank 0 alone writes. Every process calls `gather` before an
    evaluation (a data-parallel run's checkpoint holds each process's random state) and
    `maybe_save` at the end of a stopped run. `saved`: the step last.pt holds (None: no last.pt
    yet)."""

    def __init__(self, cfg: TrainConfig, run: Run, procs: Processes, resumed: bool):
        self.cfg, self.run, self.procs = cfg, run, procs
        self.out_dir = Path(cfg.out_dir)
        self.best = run.best_val_loss
        self.rank_states: list[dict] = []
        self.saved = run.start_iter if resumed else None

    def gather(self) -> None:
        self.rank_states = self.procs.all_gather(process_rng_state()) if self.procs.distributed else []

    def state(self, iteration: int) -> dict:
        """The checkpoint of the run after `iteration` steps."""
        run = self.run
        return checkpoint.make(run.model, run.tokenizer, optimizer=run.optimizer.state_dict(),
                               iter=iteration, best_val_loss=self.best, train_config=asdict(self.cfg),
                               rng=rng_state(run.batches, self.rank_states),
                               data_sha256=run.data_sha256, scaler=run.precision.scaler.state_dict())

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

    def maybe_save(self, step: int) -> None:
        """At the end of a run a signal stopped: last.pt of `step`, unless it holds that step already
        (the step the run resumed at, or one it evaluated). Every process calls it and waits for
        the save, so that they end together."""
        if not (step == self.run.start_iter or self.cfg.evaluates_at(step)):
            self.gather()
            if self.procs.is_main:
                with self._writing():
                    checkpoint.save(self.state(step), self.out_dir / checkpoint.LAST)
                self.saved = step
        self.procs.barrier()

    def evaluation(self, iteration: int, losses: dict[str, float], lr: float,
                   tokens_per_s: Optional[float]) -> str:
        """Everything an evaluation writes; returns the bits per character, for its line."""
        with self._writing():
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
            checkpoint.save(state, self.out_dir / checkpoint.LAST)  # last: see run_dir
        self.saved = iteration
        return f"{val_bpc:.4f} bits/char"
