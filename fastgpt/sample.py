"""Sample text from a trained checkpoint:

    python -m fastgpt.sample --out-dir out --prompt "ROMEO:" --max-new-tokens 500 \\
        --temperature 0.8 --top-k 40 --seed 1 --num-samples 3

The samples are drawn as one batch with a key/value cache (see fastgpt.generate). The first is
streamed to stdout character by character as it is drawn; the others, drawn alongside it, follow
when it ends, each after a separator line. Each sample starts with the prompt. Sample i uses its
own random generator seeded `--seed` + i, so sample i of a batch is the one-sample run with that
seed. An empty prompt starts from the first symbol of the vocabulary, as the lecture does.
"""
import argparse
import os
import sys
import time

import torch

from fastgpt.checkpoint import load
from fastgpt.cli import (ATTENTION_CHOICES, DEVICE_HELP, UserError, check_fits, check_positive,
                         check_range, pick_device, run_cli)
from fastgpt.decode import DTYPES
from fastgpt.generate import WINDOWS

SEPARATOR = "---------------"
INCOMPLETE = "\ufffd"  # what decoding part of a multi-byte character gives


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--out-dir", default="out",
                        help="training output directory: samples from its best.pt (default: out)")
    source.add_argument("--checkpoint", help="a checkpoint file (last.pt, best.pt, ...) instead")
    parser.add_argument("--prompt", default="",
                        help="text to continue (default: empty, which starts from the first "
                             "vocabulary symbol as the lecture does)")
    parser.add_argument("--max-new-tokens", type=int, default=500, help="characters to draw per sample")
    parser.add_argument("--num-samples", type=int, default=1, help="samples, drawn as one batch")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="divide the logits by this: < 1 is more conservative (default: 1)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="draw only among the k most likely characters (default: all)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="draw only among the most likely characters whose probability adds "
                             "up to p, in (0, 1] (nucleus sampling; default: all)")
    parser.add_argument("--greedy", action="store_true",
                        help="always take the most likely character (ignores temperature, top-k, top-p)")
    parser.add_argument("--seed", type=int, default=1337,
                        help="sample i draws from a generator seeded seed + i (default: 1337)")
    parser.add_argument("--window", choices=WINDOWS, default="exact",
                        help="past block_size characters: exact = the lecture's last block_size "
                             "characters at every step (a full pass per character); slide = "
                             "restart from the last block_size/2 every block_size/2 characters, "
                             "an approximation that stays fast")
    parser.add_argument("--dtype", choices=("float32",) + DTYPES, default="float32",
                        help="weights of the per-character steps: bfloat16 or int8 read half or a "
                             "quarter of float32's bytes per character, with logits close to "
                             "float32's (default: float32)")
    parser.add_argument("--no-stream", dest="stream", action="store_false",
                        help="print the first sample when it is complete, not character by character")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--attention", choices=ATTENTION_CHOICES, default=None,
                        help="attention backend for the prompt (default: the checkpoint's)")
    return parser


def check_memory(config, prompt_tokens: int, num_samples: int, max_new_tokens: int,
                 device: torch.device) -> None:
    """Refuse a batch that cannot fit: per sample its key/value cache and logits (float32), its
    prompt and the tokens kept until the end (a 0-d tensor each as it is drawn, then a row)."""
    C, T, L, V = config.n_embd, config.block_size, config.n_layer, config.vocab_size
    needed = num_samples * (4 * (2 * L * T * C + 2 * V) + 16 * (prompt_tokens + max_new_tokens))
    needed += 100 * max_new_tokens
    check_fits(f"{num_samples} samples of {max_new_tokens} tokens", needed, device,
               "pass a smaller --num-samples or --max-new-tokens")


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The prompt's tokens; an empty prompt is the first vocabulary symbol, as in the lecture."""
    if not prompt:
        return [0]
    try:
        return tokenizer.encode(prompt)
    except KeyError as e:
        raise UserError(f"the prompt has {e.args[0]}; use only characters of the training text") from None


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    check_positive("--max-new-tokens", args.max_new_tokens)
    check_positive("--num-samples", args.num_samples)
    check_range("--seed", args.seed, 0, 2**63 - args.num_samples, below=True)  # 64-bit seeds + i
    device = pick_device(args.device)
    model, tokenizer = load(args.checkpoint or args.out_dir, device, args.attention)
    prompt = encode_prompt(tokenizer, args.prompt)
    check_memory(model.config, len(prompt), args.num_samples, args.max_new_tokens, device)
    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=device)  # (N, T)
    start = time.perf_counter()
    try:
        tokens = model.generate_tokens(idx, args.max_new_tokens, args.temperature, args.top_k,
                                       top_p=args.top_p, greedy=args.greedy, seed=args.seed,
                                       window=args.window,
                                       dtype=None if args.dtype == "float32" else args.dtype)
    except ValueError as e:  # an option out of range, or int8 where the C++ step cannot run
        raise UserError(f"--{e}") from None
    try:
        chars = write_samples(tokenizer, prompt, tokens if args.stream else list(tokens), sys.stdout)
    except BrokenPipeError:
        # The reader has gone (`| head`): stop quietly, as a Unix filter does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if sys.stdout.isatty():  # on stderr: piped or redirected output stays the samples alone
        seconds = time.perf_counter() - start
        print(f"{chars} characters in {seconds:.2f} s: {chars / seconds:.0f} chars/s "
              f"({args.num_samples} samples, {args.dtype}, {device}, {torch.get_num_threads()} threads)",
              file=sys.stderr)


def write_samples(tokenizer, prompt: list[int], tokens, out) -> int:
    """Stream the first sample as its tokens (N,) arrive, then the others, after separators.
    Returns the number of characters drawn, over all samples."""
    out.write(tokenizer.decode(prompt))
    out.flush()
    drawn, pending = [], []  # pending: tokens that end inside a character (byte-level BPE)
    for token in tokens:
        drawn.append(token)
        pending.append(token[0].item())
        text = tokenizer.decode(pending)
        if not text.endswith(INCOMPLETE):
            out.write(text)
            out.flush()
            pending = []
    out.write(tokenizer.decode(pending) + "\n")
    samples = torch.stack(drawn, dim=1).tolist() if drawn else [[]]  # (N, max_new_tokens)
    for others in samples[1:]:
        out.write(f"{SEPARATOR}\n{tokenizer.decode(prompt + others)}\n")
    out.flush()
    return sum(len(tokenizer.decode(sample)) for sample in samples)

if __name__ == "__main__":
    run_cli(main)
