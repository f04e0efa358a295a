"""The op `fastgpt::decode_step`: sampling steps of the whole model in one call, schema and fake
(kernel: csrc/decode.cpp, on CPU only; fastgpt/decode.py is its caller and runs the model's forward
where it has no kernel).

tokens (N,) or (N, L) of N sequences at positions pos .. pos + L - 1 go through every block, their
keys and values written into `keys` and `values` (one (N, n_head, block, head size) tensor per layer,
in place), and the op returns the logits (N, vocab) of the last position. The model's tensors are
named as in fastgpt/model.py, the blocks' as one list per kind (element l: block l). The weight
matrices are float32 or float64 as the model, or bfloat16, or int8 with float32 row scales (one list
per kind of matrix and `head_scale`; empty lists and None for the other dtypes). No autograd: it
samples.
"""
import torch

from fastgpt.ops.library import LIBRARY, define

# The blocks' tensors, a list per kind: LayerNorms, then each weight matrix with its row scales and bias.
_BLOCKS = ("Tensor[] ln1_weight, Tensor[] ln1_bias, Tensor[] qkv_weight, Tensor[] qkv_scale, "
           "Tensor[] attn_proj_weight, Tensor[] attn_proj_scale, Tensor[] attn_proj_bias, "
           "Tensor[] ln2_weight, Tensor[] ln2_bias, Tensor[] fc_weight, Tensor[] fc_scale, Tensor[] fc_bias, "
           "Tensor[] mlp_proj_weight, Tensor[] mlp_proj_scale, Tensor[] mlp_proj_bias")

# CPU only: on other devices the model's own forward takes the steps (fastgpt/decode.py).
decode_step = define(
    "decode_step(Tensor tokens, int pos, Tensor token_embedding, Tensor position_embedding, "
    f"{_BLOCKS}, Tensor ln_f_weight, Tensor ln_f_bias, Tensor head_weight, Tensor? head_scale, "
    "Tensor head_bias, Tensor(a!)[] keys, Tensor(b!)[] values, int n_head, float eps) -> Tensor",
    launcher=None)


@torch.library.register_fake(decode_step, lib=LIBRARY)
def _(tokens, pos, token_embedding, *args, **kwargs):
    return token_embedding.new_empty(tokens.shape[0], token_embedding.shape[0])
