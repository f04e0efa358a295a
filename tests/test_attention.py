"""The attention dispatch point, the reference, the registered op's default body, and the mask."""
import pytest
import torch

from fastgpt.attention import (causal_attention, dropout_keep_mask, reference_attention,
                               resolve_backend)
from fastgpt.attention_op import causal_attention_op, philox_uint32


def qkv(B=2, H=3, T=17, D=8, dtype=torch.float64, requires_grad=False):
    return [torch.randn(B, H, T, D, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]


def test_philox_known_answer():
    # Random123's published vector for philox4x32_10: counter 0, key 0 -> first word 0x6627e8d5.
    assert philox_uint32(0, torch.zeros(1, dtype=torch.int64)).item() == 0x6627E8D5


def test_reference_is_causal_and_scaled():
    q, k, v = qkv()
    out = reference_attention(q, k, v)
    T, D = q.shape[-2], q.shape[-1]
    for i in (0, 5, T - 1):
        w = torch.softmax((q[..., i:i + 1, :] @ k[..., : i + 1, :].transpose(-2, -1)) / D**0.5, dim=-1)
        torch.testing.assert_close(out[..., i:i + 1, :], w @ v[..., : i + 1, :])


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("T", [1, 17, 64])
def test_op_default_body_matches_reference(T, p):
    q, k, v = qkv(T=T)
    out, lse = causal_attention_op(q, k, v, p, torch.tensor(11))
    keep = dropout_keep_mask(11, *q.shape[:3], p)
    torch.testing.assert_close(out, reference_attention(q, k, v, p, keep))
    assert lse.shape == q.shape[:3]


def test_op_gradcheck_with_dropout():
    q, k, v = qkv(T=9, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: causal_attention_op(q, k, v, 0.3, torch.tensor(5))[0],
                                    (q, k, v))


def test_op_opcheck():
    q, k, v = qkv(T=13, dtype=torch.float32, requires_grad=True)
    torch.library.opcheck(causal_attention_op, (q, k, v, 0.2, torch.tensor(7)))


def test_keep_mask_rate_and_seeds():
    a = dropout_keep_mask(1, 4, 4, 64, 0.2)
    assert a.dtype == torch.bool and a.shape == (4, 4, 64, 64)
    assert abs(a.float().mean().item() - 0.8) < 0.01
    assert torch.equal(a, dropout_keep_mask(1, 4, 4, 64, 0.2))
    assert not torch.equal(a, dropout_keep_mask(2, 4, 4, 64, 0.2))


def test_torch_backend_with_seed_uses_the_mask():
    q, k, v = qkv()
    out = causal_attention(q, k, v, 0.25, backend="torch", seed=3)
    torch.testing.assert_close(out, reference_attention(q, k, v, 0.25, dropout_keep_mask(3, *q.shape[:3], 0.25)))


def test_unknown_backend_is_refused():
    q, _, _ = qkv()
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("cuda-magic", q)
