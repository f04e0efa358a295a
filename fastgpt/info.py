"""`python -m fastgpt.info`: which attention backends can run here, and why not.

Lists each backend for float32 inputs with the head sizes of the presets, on the CPU and, when
present, on CUDA; then torch's version and thread count, and what `auto` picks."""
import torch

from fastgpt import cpp_attention
from fastgpt.attention import backend_status, resolve_backend
from fastgpt.errors import run_cli

HEAD_SIZE = 8  # the cpu preset's (n_embd 32 / n_head 4)


def device_types() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def report() -> str:
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"]
    if cpp_attention.instruction_set() is not None:
        lines.append(f"C++ kernels: {cpp_attention.instruction_set()}")
    for device_type in device_types():
        name = torch.cuda.get_device_name() if device_type == "cuda" else "cpu"
        lines.append(f"\n{device_type} ({name}), float32, head size {HEAD_SIZE}:")
        for backend, reason in backend_status(device_type, torch.float32, HEAD_SIZE).items():
            lines.append(f"  {backend:<7} {'available' if reason is None else 'unavailable: ' + reason}")
        probe = torch.empty(1, 1, 1, HEAD_SIZE, device=device_type)
        lines.append(f"  auto -> {resolve_backend('auto', probe)}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    run_cli(main)
