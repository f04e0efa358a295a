"""The op layer: every fused op of fastgpt, defined, registered and tested the same way.

Each op is a schema in the `fastgpt` namespace, defined by `library.define` with its CUDA launcher
(or none, for an op that runs on CPU only), with a fake (for torch.compile and opcheck) and, where
it is differentiable, an autograd formula; no default body. An op's files share its name:
fastgpt/ops/<op>.py, csrc/<op>.cpp (+ <op>_kernels.h), kernels/<op>.py, tests/test_<op>.py.

- `attention.py`: fastgpt::causal_attention, ::causal_attention_qkv (the model's packed layout),
  their backward ops, and ::attention_keep_mask (the dropout mask their kernels draw).
- `dropout_add.py`: fastgpt::dropout_add, residual dropout fused with the residual add, and its
  backward op.
- `decode.py`: fastgpt::decode_step, the sampling steps of the whole model in one call (CPU only).
- `cpu.py`: the C++ kernels of every op (fastgpt._C, csrc/), registered in C++ when it is imported.
- `cuda.py`: the Triton kernels (fastgpt.kernels, kernels/) of every op that names one.
- `mask.py`: the dropout masks every kernel draws (Philox-4x32-7), `layout.py`: the views between
  the packed (B, T, 3C) layout and (B, H, T, D).

A device without a kernel is the caller's business (the dispatch point `fastgpt.attention`,
`fastgpt.decode`): it calls an op only where a kernel is registered, and says what runs instead.
"""
from fastgpt.ops.attention import (attention_keep_mask, causal_attention, causal_attention_backward,
                                   causal_attention_qkv, causal_attention_qkv_backward)
from fastgpt.ops.decode import decode_step
from fastgpt.ops.dropout_add import dropout_add, dropout_add_backward
from fastgpt.ops.library import LIBRARY, OPS
from fastgpt.ops import cpu, cuda  # noqa: E402  (registers the kernels)

__all__ = ["LIBRARY", "OPS", "attention_keep_mask", "causal_attention", "causal_attention_backward",
           "causal_attention_qkv", "causal_attention_qkv_backward", "decode_step", "dropout_add",
           "dropout_add_backward", "cpu", "cuda"]
