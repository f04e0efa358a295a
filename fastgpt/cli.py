"""What every command-line tool shares: the one-line error path, device choice, attention backend
names and the checks of numeric flags.

Errors a user can cause are `UserError`s (fastgpt.errors), raised where the problem is found and reported by
`run_cli` as one line (`error: <problem>; <fix>`) with exit code 2; internal invariants stay
asserts and tracebacks.
"""
import math
import os
import sys
from typing import Callable, NoReturn

import torch

from fastgpt.attention import BACKENDS
from fastgpt.errors import UserError

ATTENTION_CHOICES = ("auto", *BACKENDS)
ATTENTION_HELP = ("attention backend: auto (the fastest available), torch (the PyTorch reference), "
                  "cpp (C++ kernels, CPU), triton (Triton kernels, CUDA), or sdpa (PyTorch's "
                  "scaled_dot_product_attention, a baseline)")
DEVICE_HELP = "cpu, cuda, cuda:N, mps (an Apple GPU), or auto (cuda when available, else cpu)"


def run_cli(main: Callable[[], None]) -> NoReturn:
    """Run a command-line entry point: a UserError becomes `error: ...` on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)


def flag(name: str) -> str:
    """The command-line flag of a config field: n_embd -> --n-embd."""
    return "--" + name.replace("_", "-")


def available_devices() -> str:
    return ", ".join(["cpu", *(["cuda"] if torch.cuda.is_available() else []),
                      *(["mps"] if torch.backends.mps.is_available() else [])])


def pick_device(name: str, option: str = "--device") -> torch.device:
    """The torch device `name` (cpu, cuda, cuda:N, mps or auto) names, if this machine can run on
    it. `auto` never picks MPS: on a Mac the default (cpu) preset's small model runs fastest in the
    C++ kernels, and MPS pays off for larger models, asked for with --device mps."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{option} {name!r} is not a device fastgpt runs on; use cpu, cuda, cuda:N, "
                        f"mps or auto (here: {available_devices()})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{option} mps asks for an Apple GPU, which this machine (or this torch build) "
                        f"does not have; use one of {available_devices()}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option} {name} asks for CUDA, which this machine (or this torch build) "
                            f"does not have; use {option} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"{option} {name}: this machine has {count} CUDA device(s), cuda:0 to "
                            f"cuda:{count - 1}; pick one of them")
    return device


def check_range(option: str, value, minimum=None, maximum=None, *, above: bool = False,
                below: bool = False) -> None:
    """A UserError unless `value` is a finite number within [minimum, maximum]; `above`/`below`
    exclude the bound itself. `option` is the flag named in the message."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{option} must be a finite number, got {value}")
    too_low = minimum is not None and (value <= minimum if above else value < minimum)
    too_high = maximum is not None and (value >= maximum if below else value > maximum)
    if too_low or too_high:
        if maximum is None:
            wanted = ("positive" if minimum == 0 else f"above {minimum}") if above else f"at least {minimum}"
        elif minimum is None:
            wanted = f"below {maximum}" if below else f"at most {maximum}"
        else:
            wanted = f"in {'(' if above else '['}{minimum}, {maximum}{')' if below else ']'}"
        raise UserError(f"{option} must be {wanted}, got {value}")


def check_positive(option: str, value) -> None:
    check_range(option, value, 0, above=True)


def device_memory(device: torch.device) -> int:
    """Bytes of memory on `device`: the GPU's, or the machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(what: str, needed: int, device: torch.device, fix: str) -> None:
    """A UserError when `needed` bytes (an estimate of `what`) exceed the device's memory."""
    available = device_memory(device)
    if needed > available:
        raise UserError(f"{what} needs at least {needed / 2**30:,.1f} GiB, more than the "
                        f"{available / 2**30:,.1f} GiB of {device}; {fix}")
