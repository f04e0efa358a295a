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
import io
import os
import sys
import time
from typing import Optional, TextIO, Union

import torch

from fastgpt.api import check_setting, make_callable, model_and_tokenizer
from fastgpt.cli import (ATTENTION_CHOICES, DEVICE_HELP, check_fits, check_positive, check_range,
                         pick_device, run_cli)
from fastgpt.errors import UserError
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


def sample(model_or_out_dir, prompt: str = "", max_new_tokens: int = 500, *, num_samples: int = 1,
           temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
           greedy: bool = False, seed: int = 1337, window: str = "exact", dtype: str = "float32",
           device: Optional[str] = None, attention: Optional[str] = None,
           stream: Optional[TextIO] = None) -> Union[str, list[str]]:
    """fastgpt.sample(...): the text `python -m fastgpt.sample` prints, prompt included, its flags
    as keywords. `model_or_out_dir`: a model from fastgpt.train or fastgpt.load (sampled where it
    is, in eval mode), or an out_dir (its best.pt) or checkpoint file, loaded on `device` (auto)
    with `attention` (the checkpoint's backend). With num_samples > 1, a list: sample i drawn with
    seed + i. `stream`: a text file (sys.stdout) that the first sample is written to as it is
    drawn, then the others, as the tool prints them. Bad settings raise fastgpt.UserError."""
    prompt_text, drawn = draw_samples(
        model_or_out_dir, prompt, max_new_tokens, num_samples=num_samples, temperature=temperature,
        top_k=top_k, top_p=top_p, greedy=greedy, seed=seed, window=window, dtype=dtype,
        device=device, attention=attention, stream=stream)
    texts = [prompt_text + text for text in drawn]
    return texts[0] if num_samples == 1 else texts


def draw_samples(model_or_out_dir, prompt: str, max_new_tokens: int, *, num_samples: int,
                 temperature: float, top_k: Optional[int], top_p: Optional[float], greedy: bool,
                 seed: int, window: str, dtype: str, device: Optional[str], attention: Optional[str],
                 stream: Optional[TextIO]) -> tuple[str, list[str]]:
    """What `sample` and the tool draw: (the prompt's text, each sample's drawn text)."""
    for name, value, kind in (("prompt", prompt, str), ("max_new_tokens", max_new_tokens, int),
                              ("num_samples", num_samples, int), ("temperature", temperature, float),
                              ("greedy", greedy, bool), ("seed", seed, int)):
        check_setting(name, value, kind)
    for name, value, kind in (("top_k", top_k, int), ("top_p", top_p, float)):
        if value is not None:
            check_setting(name, value, kind)
    check_setting("window", window, str, WINDOWS)
    check_setting("dtype", dtype, str, ("float32",) + DTYPES)
    check_positive("--max-new-tokens", max_new_tokens)
    check_positive("--num-samples", num_samples)
    check_range("--seed", seed, 0, 2**63 - num_samples, below=True)  # 64-bit seeds + i
    model, tokenizer = model_and_tokenizer(model_or_out_dir, device, attention)
    model.eval()  # no dropout (what fastgpt.train and fastgpt.load return is in eval mode already)
    ids = encode_prompt(tokenizer, prompt)
    where = model.lm_head.weight.device
    check_memory(model.config, len(ids), num_samples, max_new_tokens, where)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=where)  # (N, T)
    try:
        tokens = model.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p=top_p,
                                       greedy=greedy, seed=seed, window=window,
                                       dtype=None if dtype == "float32" else dtype)
    except ValueError as e:  # an option out of range, or int8 where the C++ step cannot run
        raise UserError(f"--{e}") from None
    return write_samples(tokenizer, ids, tokens, stream)


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("out_dir", "checkpoint", "stream")}
    start = time.perf_counter()
    try:
        # --no-stream: the same lines, written once the samples are drawn
        out = sys.stdout if args.stream else io.StringIO()
        _, drawn = draw_samples(args.checkpoint or args.out_dir, **options, stream=out)
        if not args.stream:
            sys.stdout.write(out.getvalue())
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader has gone (`| head`): stop quietly, as a Unix filter does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if sys.stdout.isatty():  # on stderr: piped or redirected output stays the samples alone
        seconds = time.perf_counter() - start
        chars = sum(map(len, drawn))
        print(f"{chars} characters in {seconds:.2f} s: {chars / seconds:.0f} chars/s "
              f"({args.num_samples} samples, {args.dtype}, {pick_device(args.device)}, "
              f"{torch.get_num_threads()} threads)", file=sys.stderr)


def write_samples(tokenizer, prompt: list[int], tokens, out: Optional[TextIO]) -> tuple[str, list[str]]:
    """(the prompt's text, each sample's drawn text) from the samples' tokens (N,) as they arrive.
    With `out`, the first sample is written to it as it is drawn (the prompt, then each character),
    then the others, each after a separator line."""
    def write(text: str) -> None:
        if out is not None:
            out.write(text)
            out.flush()

    prompt_text = tokenizer.decode(prompt)
    write(prompt_text)
    drawn, pending = [], []  # pending: tokens that end inside a character (byte-level BPE)
    for token in tokens:
        drawn.append(token)
        pending.append(token[0].item())
        text = tokenizer.decode(pending)
        if not text.endswith(INCOMPLETE):
            write(text)
            pending = []
    write(tokenizer.decode(pending) + "\n")
    samples = torch.stack(drawn, dim=1).tolist() if drawn else [[]]  # (N, max_new_tokens)
    texts = [tokenizer.decode(sample) for sample in samples]
    write("".join(f"{SEPARATOR}\n{prompt_text}{text}\n" for text in texts[1:]))
    return prompt_text, texts


make_callable(__name__, sample)

if __name__ == "__main__":
    run_cli(main)
