"""Generation with the key/value cache against the lecture's no-cache loop.

Token equality needs the cached and uncached logits to agree far below the gaps that decide a draw.
In float32 they agree to ~1e-6 (the decode step sums in another order than the full pass), which a
draw landing that close to a boundary of the cumulative distribution could flip; in float64 they
agree to ~1e-15, so the token comparisons run on float64 models and are robust, while the logits
themselves are also compared in float32 with a tolerance.
"""
import pytest
import torch
import torch.nn.functional as F

from fastgpt import generate
from fastgpt.decode import cached_steps
from fastgpt.generate import check_options, draw, filter_logits
from fastgpt.model import GPT, GPTConfig

BLOCK = 16
VOCAB = 13


def tiny_model(dtype=torch.float64, attention="torch", block_size=BLOCK) -> GPT:
    config = GPTConfig(vocab_size=VOCAB, block_size=block_size, n_layer=2, n_head=2, n_embd=16,
                       dropout=0.1, attention=attention)
    return GPT(config).to(dtype).eval()


def prompt(B, T):
    return torch.randint(0, VOCAB, (B, T))


@torch.no_grad()
def lecture_generate(model, idx, max_new_tokens, temperature=1.0, top_k=None):
    """The lecture's loop, verbatim: the whole context through the model for every token."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size:])
        logits = logits[:, -1, :] / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("Inf")
        probs = F.softmax(logits, dim=-1)
        idx_next = torch.multinomial(probs, num_samples=1)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


@torch.no_grad()
def uncached_generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                      greedy=False, seed=None, window="exact"):
    """No cache: the model sees its whole context at every step. window='slide' restarts the context
    at the last block_size/2 + 1 tokens whenever it would pass block_size, as documented."""
    block_size = model.config.block_size
    generators = None if seed is None else [torch.Generator().manual_seed(seed + i)
                                            for i in range(idx.size(0))]
    start = max(0, idx.size(1) - block_size)  # where the context begins
    for _ in range(max_new_tokens):
        if idx.size(1) - start > block_size:
            start = idx.size(1) - (block_size if window == "exact" else block_size // 2 + 1)
        logits = model(idx[:, start:])[0][:, -1, :]
        if greedy:
            token = logits.argmax(dim=-1)
        else:
            token = draw(filter_logits(logits, temperature, top_k, top_p), generators)
        idx = torch.cat((idx, token[:, None]), dim=1)
    return idx


# -- the cache gives the full pass's logits ----------------------------------------------------


# the prompt goes through every CPU backend (cpp falls back to torch, with a warning, where the
# extension is not built)
@pytest.mark.parametrize("attention", ["torch", "cpp", "sdpa"])
@pytest.mark.parametrize("T", [1, 5, BLOCK - 1, BLOCK])
def test_cached_logits_match_full_pass_float32(T, attention):
    model = tiny_model(torch.float32, attention)
    idx = prompt(3, BLOCK)
    cache = model.kv_cache(3)
    with torch.no_grad():
        steps = [model(idx[:, :T], cache=cache)[0]]  # the prompt in one pass
        steps += [model(idx[:, t - 1:t], cache=cache)[0] for t in range(T + 1, BLOCK + 1)]
        for t, logits in zip(range(T, BLOCK + 1), steps):
            full = model(idx[:, :t])[0]
            assert logits.shape == (3, 1, VOCAB)
            torch.testing.assert_close(logits[:, 0], full[:, -1], rtol=1e-5, atol=1e-6)


def test_cache_is_written_in_place():
    model = tiny_model()
    caches = []
    make_cache = model.kv_cache
    model.kv_cache = lambda B: caches.append(make_cache(B)) or caches[-1]
    tokens = model.generate_tokens(prompt(2, 3), 3 * BLOCK)
    next(tokens)
    buffers = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in caches[0].layers]
    list(tokens)
    assert len(caches) == 1
    assert buffers == [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in caches[0].layers]


def positions_per_pass(model, monkeypatch, **options):
    """How many positions each pass of a generation runs: the model's full passes, and the positions
    of each call of the cached steps (fastgpt.decode's, whether the C++ step or the model's forward
    takes it)."""
    passes, in_step = [], []
    forward = model.forward
    model.forward = lambda idx, **kw: in_step or passes.append(idx.size(1)) or forward(idx, **kw)

    def counted(model, cache, dtype):
        step = cached_steps(model, cache, dtype)

        def counted_step(tokens):
            passes.append(tokens.size(1) if tokens.dim() == 2 else 1)
            in_step.append(True)
            try:
                return step(tokens)
            finally:
                in_step.clear()
        return counted_step

    monkeypatch.setattr(generate, "cached_steps", counted)
    model.generate(prompt(1, 3), 3 * BLOCK, **options)
    return passes


def test_decoding_is_one_position_per_token_until_block_size(monkeypatch):
    passes = positions_per_pass(tiny_model(), monkeypatch)
    assert passes[:BLOCK - 2] == [3] + [1] * (BLOCK - 3)  # prompt, then one position per token
    assert passes[BLOCK - 2:] == [BLOCK] * (2 * BLOCK + 2)  # exact: the cropped window every token


def test_slide_window_refills_every_half_block(monkeypatch):
    passes = positions_per_pass(tiny_model(), monkeypatch, window="slide")
    half = BLOCK // 2
    assert passes[:BLOCK - 2] == [3] + [1] * (BLOCK - 3)
    assert passes[BLOCK - 2:] == ([half + 1] + [1] * (half - 1)) * 4 + [half + 1, 1]


# -- same characters as the no-cache loop ------------------------------------------------------


@pytest.mark.parametrize("T", [1, 7, BLOCK, BLOCK + 9])
@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 4)])
def test_generate_draws_what_the_lecture_loop_draws(T, temperature, top_k):
    model = tiny_model()
    idx = prompt(3, T)
    n = 2 * BLOCK + 3  # crosses block_size whatever the prompt
    torch.manual_seed(11)
    expected = lecture_generate(model, idx, n, temperature, top_k)
    torch.manual_seed(11)
    assert torch.equal(model.generate(idx, n, temperature, top_k), expected)


@pytest.mark.parametrize("T", [1, BLOCK - 1, BLOCK + 9])
@pytest.mark.parametrize("window", ["exact", "slide"])
@pytest.mark.parametrize("options", [dict(greedy=True), dict(top_p=0.8, seed=3),
                                     dict(temperature=1.3, top_k=5, top_p=0.9, seed=4)])
def test_generate_matches_the_uncached_loop(T, window, options):
    model = tiny_model()
    idx = prompt(2, T)
    n = 2 * BLOCK + 5
    expected = uncached_generate(model, idx, n, window=window, **options)
    assert torch.equal(model.generate(idx, n, window=window, **options), expected)


def test_windows_agree_until_block_size():
    model = tiny_model()
    idx = prompt(2, 4)
    exact = model.generate(idx, BLOCK - 4, seed=1)
    assert torch.equal(model.generate(idx, BLOCK - 4, seed=1, window="slide"), exact)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_equals_samples_one_by_one_with_seed_plus_i(dtype):
    model = tiny_model(dtype)
    idx = prompt(1, 5)
    n = BLOCK + 10
    batch = model.generate(idx.repeat(4, 1), n, 0.9, 6, top_p=0.95, seed=21)
    for i in range(4):
        assert torch.equal(batch[i:i + 1], model.generate(idx, n, 0.9, 6, top_p=0.95, seed=21 + i))


def test_seeded_generation_ignores_the_global_generator():
    model = tiny_model()
    idx = prompt(2, 3)
    torch.manual_seed(1)
    first = model.generate(idx, 20, seed=7)
    torch.manual_seed(2)
    assert torch.equal(model.generate(idx, 20, seed=7), first)


def test_streamed_tokens_are_the_generated_ones():
    model = tiny_model()
    idx = prompt(2, 4)
    streamed = torch.stack(list(model.generate_tokens(idx, 25, seed=5, top_k=3)), dim=1)
    assert torch.equal(torch.cat((idx, streamed), dim=1), model.generate(idx, 25, seed=5, top_k=3))


def test_zero_new_tokens_returns_the_prompt():
    idx = prompt(2, 4)
    assert torch.equal(tiny_model().generate(idx, 0), idx)


def test_generate_runs_without_dropout_and_restores_training_mode():
    model = tiny_model()
    idx = prompt(2, 4)
    expected = model.generate(idx, 10, seed=2)
    model.train()
    assert torch.equal(model.generate(idx, 10, seed=2), expected)
    assert model.training
    with pytest.raises(ValueError, match="eval"):
        next(model.generate_tokens(idx, 10))


# -- sampling filters --------------------------------------------------------------------------


def test_top_k_keeps_the_k_largest():
    logits = torch.randn(4, VOCAB, dtype=torch.float64)
    kept = filter_logits(logits, top_k=3).isfinite()
    assert kept.sum(dim=-1).tolist() == [3] * 4
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, logits.topk(3).indices, True))


@pytest.mark.parametrize("top_p,kept", [(1e-9, [0]), (0.49, [0]), (0.51, [0, 3]), (0.79, [0, 3]),
                                        (0.81, [0, 3, 1]), (0.99, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_nucleus(top_p, kept):
    probs = torch.tensor([[0.5, 0.15, 0.05, 0.3]], dtype=torch.float64)
    filtered = filter_logits(probs.log(), top_p=top_p)
    assert sorted(filtered[0].isfinite().nonzero()[:, 0].tolist()) == sorted(kept)
    torch.testing.assert_close(filtered[0, kept], probs.log()[0, kept])


def test_temperature_divides_the_logits():
    logits = torch.randn(2, VOCAB, dtype=torch.float64)
    torch.testing.assert_close(filter_logits(logits, temperature=0.5), logits * 2)


def test_draw_with_generators_is_per_row():
    logits = torch.randn(3, VOCAB, dtype=torch.float64)
    together = draw(logits, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    alone = [draw(logits[i:i + 1], [torch.Generator().manual_seed(s)]) for i, s in enumerate((1, 2, 3))]
    assert torch.equal(together, torch.cat(alone))


@pytest.mark.parametrize("options,message", [
    (dict(max_new_tokens=-1), "max-new-tokens"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top-k"),
    (dict(top_k=VOCAB + 1), "top-k"),
    (dict(top_p=0.0), "top-p"),
    (dict(top_p=1.5), "top-p"),
    (dict(window="wrap"), "window"),
    (dict(dtype="float16"), "dtype"),
])
def test_bad_options_are_refused(options, message):
    given = dict(max_new_tokens=5, temperature=1.0, top_k=None, top_p=None, greedy=False,
                 window="exact", dtype=None) | options
    with pytest.raises(ValueError, match=message):
        check_options(VOCAB, **given)
    with pytest.raises(ValueError, match=message):
        tiny_model().generate(prompt(1, 2), **given)


def test_greedy_needs_no_temperature():
    model = tiny_model()
    idx = prompt(1, 3)
    assert torch.equal(model.generate(idx, 10, temperature=0.0, greedy=True),
                       uncached_generate(model, idx, 10, greedy=True))
