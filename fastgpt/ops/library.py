"""The `fastgpt` operator namespace: the library that holds every op's schema, and `define`, the one
place an op is named.

Defining an op registers its schema and its CUDA kernel's launcher together, so the list of ops
(`OPS`) and the CUDA registrations (`fastgpt.ops.cuda`) follow from the definitions. Every op has a
CPU kernel in fastgpt._C (csrc/<op>.cpp, TORCH_LIBRARY_IMPL); tests/test_cuda_registrations.py
checks both tables against the dispatcher.
"""
from typing import Optional

import torch

LIBRARY = torch.library.Library("fastgpt", "DEF")

# (module of fastgpt.kernels, function): an op's CUDA kernel, a Triton launcher with the op's schema
Launcher = tuple[str, str]

# Every op by its qualified name, in the order defined, with its CUDA launcher (None: CPU only).
OPS: dict[str, Optional[Launcher]] = {}


def define(schema: str, *, launcher: Optional[Launcher]) -> torch._ops.OpOverload:
    """Defines the op `fastgpt::<name>` of `schema` ("name(args) -> returns") and returns it as
    Python calls it (an OpOverload, called without a Python frame of ours). `launcher` is its CUDA
    kernel, or None for an op that runs on CPU only: its callers say what runs elsewhere."""
    name = schema[:schema.index("(")]
    LIBRARY.define(schema)
    OPS[f"fastgpt::{name}"] = launcher
    return getattr(torch.ops.fastgpt, name).default
