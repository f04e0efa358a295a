"""Benchmarks run with an explicit CPU thread count (FASTGPT_BENCH_THREADS, default 2), recorded in
pytest-benchmark's machine_info so every saved report says how many threads it used."""
import os
import sys
from pathlib import Path

import torch

# The installed fastgpt runs (pytest's importlib mode leaves sys.path alone); the checkout is
# appended after site-packages for the bench package itself.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from fastgpt.ops import cpu  # noqa: E402  (after the path change above)

THREADS = int(os.environ.get("FASTGPT_BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["torch_version"] = torch.__version__
    machine_info["fastgpt_isa"] = cpu.instruction_set()  # the C++ kernels' copy: AVX-512, AVX2 + FMA, ...
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None


def pytest_report_header(config):
    return f"fastgpt benchmarks: torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
