"""The one-call sampling step, the op fastgpt::decode_step (fastgpt/ops/decode.py, csrc/decode.cpp,
called by fastgpt.decode), against the model's own passes, and opcheck of the op.

Its logits are the full pass's up to summation order (float64 ~1e-15, float32 ~1e-6), so greedy
decoding gives the lecture's characters; bfloat16 and int8 weights move the logits by more, and
how far is measured here with a bound that catches a broken kernel, not asserted equal.
"""
import pytest
import torch

from lecture_gpt import GPTLanguageModel
from clitools import needs_cpp
from fastgpt.convert import gpt_from_lecture
from fastgpt.decode import Decoder, cached_steps, packed, unsupported
from fastgpt.model import GPT, GPTConfig
from fastgpt import ops
from fastgpt.ops import cpu


def model_of(dtype=torch.float64, n_embd=24, n_head=3, vocab_size=13, block_size=16, n_layer=2) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                       n_embd=n_embd, dropout=0.0, attention="torch")
    model = GPT(config).to(dtype).eval()
    with torch.no_grad():  # LayerNorm weights and biases away from 1 and 0, so that a mix-up shows
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.normal_(0, 0.1)
    return model


def step_logits(model, idx, dtype=None):
    """Logits (B, T - 1, V) of positions 1.. of idx (B, T): the first token as a prompt pass,
    then one step per token."""
    cache = model.kv_cache(idx.size(0))
    with torch.no_grad():
        model(idx[:, :1], cache=cache)
        step = cached_steps(model, cache, dtype)
        return torch.stack([step(idx[:, t].contiguous()) for t in range(1, idx.size(1))], dim=1)


def full_logits(model, idx):
    with torch.no_grad():
        return model(idx)[0][:, 1:]


@needs_cpp
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B", [1, 2, 5])  # odd batches: the kernels' row-pair tails
@pytest.mark.parametrize("n_embd,n_head", [(24, 3), (32, 2), (64, 4)])  # head sizes 8, 16, 16
def test_step_gives_the_full_pass_logits(dtype, tol, B, n_embd, n_head):
    model = model_of(dtype, n_embd, n_head)
    assert unsupported(model) is None
    idx = torch.randint(0, 13, (B, 16))
    torch.testing.assert_close(step_logits(model, idx), full_logits(model, idx), rtol=tol, atol=tol)


@needs_cpp
@pytest.mark.parametrize("dtype", [None, "bfloat16", "int8"])
def test_a_block_of_positions_in_one_call_is_the_steps_one_by_one(dtype):
    """A refill: L positions in one call give the last position's logits and the cache of L single
    steps, bit for bit."""
    model = model_of(torch.float32)
    idx = torch.randint(0, 13, (3, 11))
    caches, logits = [model.kv_cache(3), model.kv_cache(3)], []
    with torch.no_grad():
        one_call = cached_steps(model, caches[0], dtype)
        logits.append(one_call(idx))
        steps = cached_steps(model, caches[1], dtype)
        logits.append([steps(idx[:, t].contiguous()) for t in range(11)][-1])
    assert torch.equal(logits[0], logits[1]) and caches[0].length == caches[1].length == 11
    for a, b in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(a.keys[:, :, :11], b.keys[:, :, :11]) and torch.equal(a.values[:, :, :11], b.values[:, :, :11])


@needs_cpp
def test_positions_past_the_cache_are_refused():
    model = model_of(torch.float32)
    cache = model.kv_cache(1)
    with torch.no_grad(), pytest.raises(RuntimeError, match="past the cache"):
        cached_steps(model, cache)(torch.zeros(1, 17, dtype=torch.long))


@needs_cpp
def test_the_step_runs_in_the_extension_and_writes_the_cache_in_place():
    model = model_of()
    cache = model.kv_cache(2)
    step = cached_steps(model, cache)
    assert isinstance(step, Decoder)
    buffers = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    with torch.no_grad():
        for t in range(5):
            step(torch.tensor([t, t + 1]))
    assert cache.length == 5
    assert buffers == [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]


@needs_cpp
def test_greedy_text_is_the_lecture_loops_in_float32():
    """The lecture's model and its loop (argmax in place of the draw) against GPT.generate, both
    float32, from the lecture's weights."""
    torch.manual_seed(3)
    lecture = GPTLanguageModel(vocab_size=65, block_size=64, n_embd=64, n_head=4, n_layer=2, dropout=0.0).eval()
    model = gpt_from_lecture(lecture.state_dict(), dropout=0.0).eval()
    idx = torch.zeros(2, 1, dtype=torch.long)
    expected = idx
    with torch.no_grad():
        for _ in range(63):
            logits, _ = lecture(expected[:, -64:])
            expected = torch.cat((expected, logits[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
    assert torch.equal(model.generate(idx, 63, greedy=True), expected)


def agreement(model, idx, dtype):
    """Max |logit difference| and mean KL(float32 ‖ dtype) of the next-token distributions."""
    exact, narrow = step_logits(model, idx), step_logits(model, idx, dtype)
    kl = torch.nn.functional.kl_div(narrow.log_softmax(-1), exact.log_softmax(-1), log_target=True,
                                    reduction="none").sum(-1)
    return (narrow - exact).abs().max().item(), kl.mean().item()


@needs_cpp
@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_narrow_weights_stay_close_to_float32(dtype):
    model = model_of(torch.float32, 64, 4, vocab_size=65, block_size=32)
    with torch.no_grad():  # logits spread over a few units, as a trained model's (init's: ~0.1)
        model.lm_head.weight.mul_(30)
    diff, kl = agreement(model, torch.randint(0, 65, (3, 32)), dtype)
    assert 0 < diff < 0.1
    assert kl < 1e-3


def test_without_the_extension_the_model_takes_the_steps(monkeypatch):
    model = model_of()
    idx = torch.randint(0, 13, (2, 16))
    monkeypatch.setattr(cpu, "missing", "the C++ extension fastgpt._C is not built")
    assert "not built" in unsupported(model)
    torch.testing.assert_close(step_logits(model, idx), full_logits(model, idx), rtol=1e-12, atol=1e-12)
    float32 = model_of(torch.float32)
    torch.testing.assert_close(step_logits(float32, idx, "bfloat16"), full_logits(float32, idx), rtol=0.05,
                               atol=0.05)  # under autocast
    with pytest.raises(ValueError, match="int8 needs the C\\+\\+ step, and .*; use bfloat16"):
        float32.generate(idx, 3, dtype="int8")


@needs_cpp
@pytest.mark.parametrize("n_embd,n_head,dtype,reason", [
    (12, 3, torch.float32, "head size"),
    (24, 3, torch.bfloat16, "float32 or float64"),
])
def test_unsupported_models_say_why(n_embd, n_head, dtype, reason):
    assert reason in unsupported(model_of(dtype, n_embd, n_head))


@needs_cpp
def test_narrow_weights_need_a_float32_model():
    assert "float32 model" in unsupported(model_of(torch.float64), "bfloat16")


@needs_cpp
def test_narrow_weights_follow_changes_to_the_model():
    model = model_of(torch.float32)
    idx = torch.randint(0, 13, (2, 16))
    before = step_logits(model, idx, "bfloat16")
    assert torch.equal(step_logits(model, idx, "bfloat16"), before)  # packed once, reused
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # in place, as an optimizer step
    torch.testing.assert_close(step_logits(model, idx, "bfloat16"), full_logits(model, idx), rtol=0.02,
                               atol=0.02)


def op_arguments(model, cache, dtype=None) -> dict:
    """The op's keyword arguments for `model` and `cache`, as fastgpt.decode passes them."""
    return dict(packed(model, dtype), keys=[layer.keys for layer in cache.layers],
                values=[layer.values for layer in cache.layers], n_head=model.config.n_head, eps=model.ln_f.eps)


@needs_cpp
@pytest.mark.parametrize("dtype", [None, "bfloat16", "int8"])
def test_opcheck(dtype):
    """The schema (the cache lists written in place, nothing else), the fake and tracing, with the
    model's tensors as fastgpt.decode names them, for each kind of weights."""
    model = model_of(torch.float32)
    cache = model.kv_cache(2)
    with torch.no_grad():
        model(torch.randint(0, 13, (2, 3)), cache=cache)
    kwargs = op_arguments(model, cache, dtype)
    assert (kwargs["head_scale"] is not None) == (dtype == "int8")
    torch.library.opcheck(ops.decode_step, (torch.randint(0, 13, (2, 2)), 3), kwargs)


@needs_cpp
def test_the_op_refuses_lists_of_another_length():
    model = model_of(torch.float32)
    cache = model.kv_cache(1)
    kwargs = op_arguments(model, cache)
    kwargs["fc_bias"] = kwargs["fc_bias"][:1]
    with pytest.raises(RuntimeError, match="one tensor per layer"):
        ops.decode_step(torch.zeros(1, dtype=torch.long), 0, **kwargs)
