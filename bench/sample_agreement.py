"""How close sampling with bfloat16 or int8 weights stays to float32, and the `slide` window to the
`exact` one, on a trained checkpoint:

    python -m bench.sample_agreement --checkpoint out/best.pt --chars 255 --samples 8

For each narrow dtype: greedy decoding from the same prompts, how many characters come out the same
as float32's before the first difference (the median over samples, and how many samples are equal
throughout); and along float32's greedy text, the KL divergence KL(float32 ‖ dtype) of the
next-character distributions, mean and maximum over every position, and how often the two
disagree on the most likely character. The prompts are single characters, spread over the
vocabulary. The windows are compared the same way over --window-chars characters (default 500,
past the block): along the exact window's greedy text, the distributions each window gives.
"""
import argparse

import torch
import torch.nn.functional as F

from fastgpt.checkpoint import load
from fastgpt.decode import DTYPES, cached_steps
from fastgpt.generate import refill


@torch.no_grad()
def step_logits(model, tokens, dtype):
    """Next-token logits (B, T, V) along tokens (B, T + 1), one cached step per position."""
    cache = model.kv_cache(tokens.size(0))
    logits = [model(tokens[:, :1], cache=cache)[0][:, -1]]
    step = cached_steps(model, cache, dtype)
    logits += [step(tokens[:, t].contiguous()) for t in range(1, tokens.size(1) - 1)]
    return torch.stack(logits, dim=1)


@torch.no_grad()
def window_logits(model, tokens, window):
    """Next-token logits (B, T, V) along tokens (B, T + 1) as generation with `window` makes them:
    a cached step per position, and a refill of the cache whenever it is full."""
    cache = model.kv_cache(tokens.size(0))
    logits = [model(tokens[:, :1], cache=cache)[0][:, -1]]
    step = cached_steps(model, cache)
    for t in range(1, tokens.size(1) - 1):
        full = cache.length == model.config.block_size
        logits.append(refill(model, cache, step, tokens[:, :t + 1], window) if full else step(tokens[:, t]))
    return torch.stack(logits, dim=1)


def compare(name, greedy, exact, logits, reference, chars, samples):
    """One line: how far `name`'s greedy text follows the reference's, and the distance of its
    next-character distributions along the reference's text."""
    same = first_difference(greedy[:, 1:], exact[:, 1:])
    kl = F.kl_div(logits, reference, log_target=True, reduction="none").sum(-1)
    flips = (logits.argmax(-1) != reference.argmax(-1)).float().mean().item()
    print(f"{name}: greedy text equal to the reference's for {sorted(same)[len(same) // 2]} characters "
          f"(median), {sum(s == chars for s in same)}/{samples} samples equal throughout; "
          f"KL(reference ‖ {name}) mean {kl.mean():.2e}, max {kl.max():.2e} nats; "
          f"most likely character differs at {flips:.2%} of positions")


def first_difference(a, b) -> list[int]:
    """Per row of a, b (B, T): the index of the first differing token (T when none)."""
    differ = a != b
    return [int(row.nonzero()[0]) if row.any() else a.size(1) for row in differ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--chars", type=int, default=255)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--window-chars", type=int, default=500)
    args = parser.parse_args(argv)
    model, _ = load(args.checkpoint, "cpu")
    vocab = model.config.vocab_size
    chars = min(args.chars, model.config.block_size - 1)  # every character a cached step
    prompt = torch.linspace(0, vocab - 1, args.samples).long()[:, None]
    exact = model.generate(prompt, chars, greedy=True)
    reference = step_logits(model, exact, None).log_softmax(-1)
    print(f"{args.checkpoint}: {args.samples} greedy samples of {chars} characters, reference float32")
    for dtype in DTYPES:
        greedy = model.generate(prompt, chars, greedy=True, dtype=dtype)
        compare(dtype, greedy, exact, step_logits(model, exact, dtype).log_softmax(-1), reference, chars,
                args.samples)
    chars = args.window_chars
    exact = model.generate(prompt, chars, greedy=True, window="exact")
    reference = window_logits(model, exact, "exact").log_softmax(-1)
    print(f"windows, reference exact: {args.samples} greedy samples of {chars} characters "
          f"(block {model.config.block_size})")
    greedy = model.generate(prompt, chars, greedy=True, window="slide")
    compare("slide", greedy, exact, window_logits(model, exact, "slide").log_softmax(-1), reference, chars,
            args.samples)


if __name__ == "__main__":
    main()
