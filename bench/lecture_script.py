"""The lecture's whole training script (Karpathy's `gpt.py`, "Let's build GPT") around
tests/lecture_gpt.py's GPTLanguageModel: read the text, the char tokenizer, a 90/10 split, the
lecture's get_batch, estimate_loss every eval_interval steps (and at the last) with eval_iters
random batches per split, AdamW at a constant learning rate, then a sample. Its sizes,
iterations and evaluation plan are flags, so that it runs what `python -m fastgpt.train --preset
cpu` runs; bench/whole_run.py times the two as whole commands.

    python -m bench.lecture_script --batch-size 32 --block-size 128 --n-embd 32 --n-head 4 \\
        --n-layer 4 --dropout 0.2 --learning-rate 3e-4 --max-iters 5000 --eval-interval 500 \\
        --eval-iters 200                                          # from the repository root

What it adds to the lecture's script, for the timing only: a line per `--log-interval` steps
("iter N: loss L", as nanoGPT prints), flushed, so that a reader of its output can tell the steps
from the evaluations. (bench/train_lecture_baseline.py is the other baseline: the lecture's model
inside fastgpt's own loop.)

Differences from the lecture kept on purpose: the evaluation schedule is fastgpt's (step 0, every
eval_interval, and after the last step; the lecture evaluates before its last step: the same count
of evaluations), and the sample's length is a flag (fastgpt's default, 200 characters; the lecture
prints 500).
"""
import argparse
import gzip
import importlib.util
import os
import sys
import time

import torch

try:
    from tests.lecture_gpt import GPTLanguageModel
except ImportError:  # run as a file: python bench/lecture_script.py
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from lecture_gpt import GPTLanguageModel


def packaged_corpus() -> str:
    """fastgpt's tiny Shakespeare (fastgpt/data/tinyshakespeare.txt.gz), found without importing fastgpt."""
    spec = importlib.util.find_spec("fastgpt")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("lecture_script: fastgpt not found; pass --data FILE")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "tinyshakespeare.txt.gz")


def read_text(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="UTF-8 text (default: fastgpt's tiny Shakespeare)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--n-embd", type=int, default=32)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--max-iters", type=int, default=5000)
    p.add_argument("--eval-interval", type=int, default=500)
    p.add_argument("--eval-iters", type=int, default=200)
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--sample-chars", type=int, default=200)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    batch_size, block_size, device = args.batch_size, args.block_size, args.device
    max_iters, eval_interval, eval_iters = args.max_iters, args.eval_interval, args.eval_iters
    torch.manual_seed(args.seed)

    text = read_text(args.data or packaged_corpus())
    # here are all the unique characters that occur in this text
    chars = sorted(list(set(text)))
    vocab_size = len(chars)
    # create a mapping from characters to integers
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    encode = lambda s: [stoi[c] for c in s]  # noqa: E731
    decode = lambda l: "".join([itos[i] for i in l])  # noqa: E731

    # Train and test splits
    data = torch.tensor(encode(text), dtype=torch.long)
    n = int(0.9 * len(data))  # first 90% will be train, rest val
    train_data = data[:n]
    val_data = data[n:]

    # data loading
    def get_batch(split):
        # generate a small batch of data of inputs x and targets y
        data = train_data if split == "train" else val_data
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([data[i:i + block_size] for i in ix])
        y = torch.stack([data[i + 1:i + block_size + 1] for i in ix])
        x, y = x.to(device), y.to(device)
        return x, y

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ["train", "val"]:
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                X, Y = get_batch(split)
                logits, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean()
        model.train()
        return out

    model = GPTLanguageModel(vocab_size, block_size, args.n_embd, args.n_head, args.n_layer,
                             args.dropout)
    m = model.to(device)
    # print the number of parameters in the model
    print(sum(p.numel() for p in m.parameters()) / 1e6, "M parameters", flush=True)

    # create a PyTorch optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)

    started = time.perf_counter()
    for iter in range(max_iters + 1):
        # every once in a while evaluate the loss on train and val sets
        if iter % eval_interval == 0 or iter == max_iters:
            losses = estimate_loss()
            print(f"step {iter}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}",
                  flush=True)
        if iter == max_iters:
            break

        # sample a batch of data
        xb, yb = get_batch("train")

        # evaluate the loss
        logits, loss = model(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (iter + 1) % args.log_interval == 0:
            now = time.perf_counter()
            print(f"iter {iter + 1}: loss {loss.item():.4f}, time {(now - started) * 1000:.2f}ms",
                  flush=True)
            started = now

    # generate from the model
    if args.sample_chars:
        context = torch.zeros((1, 1), dtype=torch.long, device=device)
        print(decode(m.generate(context, max_new_tokens=args.sample_chars)[0].tolist()), flush=True)


if __name__ == "__main__":
    main()
