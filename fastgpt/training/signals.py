"""Stopping a training run cleanly: SIGTERM (what a cluster scheduler, Kubernetes or a spot VM sends
before it kills) and SIGINT (Ctrl-C) ask the run to stop. It finishes the step it is in, saves a
checkpoint of that step and exits, so that `--resume` continues as if nothing happened.

Once a run is stopping, further signals are ignored: a scheduler that signals twice, or torchrun
forwarding Ctrl-C as SIGTERM to workers that the terminal already sent SIGINT, must not interrupt
the save. SIGKILL still can; the save is atomic, so the previous checkpoint is then kept.
"""
import signal
import threading

import torch

from fastgpt.training.distributed import Processes

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While entered (a context manager), SIGTERM and SIGINT are recorded instead of ending the
    process; `requested` tells the loop, once per step, whether to stop."""

    def __init__(self):
        self.received = 0  # the first signal this process received; 0: none
        self.agreed = 0  # the signal the processes stop for (any process's); 0: not stopping
        self._previous = {}

    def _record(self, signum: int, frame) -> None:
        self.received = self.received or signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # the only one Python signals
            self._previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, procs: Processes, device: torch.device) -> bool:
        """Whether to stop now: a signal came to this process or, in a data-parallel run, to any
        (one all_reduce), so that every process stops after the same step. Every process calls it
        at the same points."""
        self.agreed = procs.max(self.received, device)
        return self.agreed != 0

    @property
    def name(self) -> str:
        return signal.Signals(self.agreed).name


class Stopped(Exception):
    """A run that a signal stopped once its checkpoint was saved. The exit code is the one the
    signal itself would have given (128 + its number), so a scheduler sees the run as stopped,
    not finished."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum
