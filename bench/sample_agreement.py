"""How close sampling with bfloat16 or int8 weights stays to float32, on a trained checkpoint:

    python -m bench.sample_agreement --checkpoint out/best.pt --chars 255 --samples 8

For each narrow dtype: greedy decoding from the same prompts, how many characters come out the same
as float32's before the first difference (the median over samples, and how many samples are equal
throughout); and along float32's greedy text, the KL divergence KL(float32 ‖ dtype) of the
next-character distributions, mean and maximum over every position, and how often the two
disagree on the most likely character. The prompts are single characters, spread over the
vocabulary.
"""
import argparse

import torch
import torch.nn.functional as F

from fastgpt.checkpoint import load
from fastgpt.decode import DTYPES, cached_steps


@torch.no_grad()
def step_logits(model, tokens, dtype):
    """Next-token logits (B, T, V) along tokens (B, T + 1), one cached step per position."""
    cache = model.kv_cache(tokens.size(0))
    logits = [model(tokens[:, :1], cache=cache)[0][:, -1]]
    step = cached_steps(model, cache, dtype)
    logits += [step(tokens[:, t].contiguous()) for t in range(1, tokens.size(1) - 1)]
    return torch.stack(logits, dim=1)


def first_difference(a, b) -> list[int]:
    """Per row of a, b (B, T): the index of the first differing token (T when none)."""
    differ = a != b
    return [int(row.nonzero()[0]) if row.any() else a.size(1) for row in differ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--chars", type=int, default=255)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args(argv)
    model, _ = load(args.checkpoint, "cpu")
    vocab = model.config.vocab_size
    chars = min(args.chars, model.config.block_size - 1)  # every character a cached step
    prompt = torch.linspace(0, vocab - 1, args.samples).long()[:, None]
    exact = model.generate(prompt, chars, greedy=True)
    reference = step_logits(model, exact, None).log_softmax(-1)
    print(f"{args.checkpoint}: {args.samples} greedy samples of {chars} characters")
    for dtype in DTYPES:
        greedy = model.generate(prompt, chars, greedy=True, dtype=dtype)
        same = first_difference(greedy[:, 1:], exact[:, 1:])
        narrow = step_logits(model, exact, dtype).log_softmax(-1)
        kl = F.kl_div(narrow, reference, log_target=True, reduction="none").sum(-1)
        flips = (narrow.argmax(-1) != reference.argmax(-1)).float().mean().item()
        print(f"{dtype}: greedy text equal to float32's for {sorted(same)[len(same) // 2]} characters "
              f"(median), {sum(s == chars for s in same)}/{args.samples} samples equal throughout; "
              f"KL(float32 ‖ {dtype}) mean {kl.mean():.2e}, max {kl.max():.2e} nats; "
              f"most likely character differs at {flips:.2%} of positions")


if __name__ == "__main__":
    main()
