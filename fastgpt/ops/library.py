"""The `fastgpt` operator namespace: the library that defines every op's schema, and the ops' names."""
import torch

LIBRARY = torch.library.Library("fastgpt", "DEF")

# Every op, by its qualified name: each has a CPU kernel (csrc/) and a CUDA kernel (kernels/).
OPS = ("fastgpt::causal_attention", "fastgpt::causal_attention_backward", "fastgpt::causal_attention_qkv",
       "fastgpt::causal_attention_qkv_backward", "fastgpt::dropout_add", "fastgpt::dropout_add_backward")
