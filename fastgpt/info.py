"""`python -m fastgpt.info`: versions, devices, which attention backends can run here and why not.

Lists each backend for float32 inputs with the head size of the cpu preset, on the CPU and, when
present, on CUDA; then what `auto` picks, whether residual dropout is fused, and the instruction set
the C++ kernels use."""
import argparse
import importlib.metadata
import platform
from typing import Optional

import torch

import fastgpt
from fastgpt.attention import backend_status, explain, residual_dropout_status
from fastgpt.cli import run_cli
from fastgpt.ops import cpu, cuda

HEAD_SIZE = 8  # the cpu preset's (n_embd 32 / n_head 4)


def device_types() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + \
        (["mps"] if torch.backends.mps.is_available() else [])


def versions() -> str:
    # The installed version, read without importing Triton (slow, and of no use without CUDA).
    triton_version = "not installed" if cuda.missing else importlib.metadata.version("triton")
    return (f"fastgpt {fastgpt.__version__}, torch {torch.__version__}, triton {triton_version}, "
            f"Python {platform.python_version()}")


def report() -> str:
    lines = [versions(), f"CPU: {platform.machine()}, {torch.get_num_threads()} torch threads",
             f"C++ kernels: {cpu.build_summary()}"]
    for device_type in device_types():
        name = {"cpu": "cpu", "mps": "Apple GPU"}.get(device_type) or torch.cuda.get_device_name()
        lines.append(f"\n{device_type} ({name}), float32, head size {HEAD_SIZE}:")
        for backend, reason in backend_status(device_type, torch.float32, HEAD_SIZE).items():
            lines.append(f"  {backend:<7} {'available' if reason is None else 'unavailable: ' + reason}")
        lines.append(f"  auto -> {explain('auto', device_type, torch.float32, HEAD_SIZE)}")
        reason = residual_dropout_status(device_type)
        lines.append(f"  residual dropout: {'fused' if reason is None else 'reference: ' + reason}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    print(report())


if __name__ == "__main__":
    run_cli(main)
