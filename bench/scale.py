"""Processes, threads, bfloat16 and bits per character on CPU, run as real `fastgpt.train` commands
(from the repository root; the text is tiny Shakespeare unless --data names another):

    python -m bench.scale throughput [--data FILE] [--steps 30] [--repeats 3]
    python -m bench.scale bpc [--data FILE] [--max-iters 500] [--vocab-size 512]

`throughput`: tokens/s of the `cpu` preset (global batch 32 × 128) for 1 process × 1 thread,
2 gloo processes × 1 thread (torchrun, batch 16 each), 1 process × 2 threads, and bfloat16 against
float32. The number is the training loop's own (global tokens of the steps over their time,
evaluation excluded), the median over `repeats` runs taken in turn so that load from other work on
the machine spreads over every configuration.

`bpc`: val loss in bits per character of the `cpu` preset on a char and a byte-level BPE dataset
prepared from the same text, comparable across the two tokenizers.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# name -> (processes, threads per process, extra flags)
THROUGHPUT_RUNS = {
    "1 process x 1 thread, float32": (1, 1, ["--batch-size", "32"]),
    "2 gloo processes x 1 thread, float32": (2, 1, ["--batch-size", "16"]),
    "1 process x 2 threads, float32": (1, 2, ["--batch-size", "32"]),
    "1 process x 2 threads, bfloat16": (1, 2, ["--batch-size", "32", "--dtype", "bfloat16"]),
    "1 process x 1 thread, bfloat16": (1, 1, ["--batch-size", "32", "--dtype", "bfloat16"]),
}


def train_command(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "fastgpt.train"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", "-m", "fastgpt.train"]


def run_train(processes: int, threads: int, flags: list[str], out_dir: Path) -> dict:
    """The last metrics row of one training run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*train_command(processes), "--preset", "cpu", "--device", "cpu", "--sample-chars", "0",
                    "--out-dir", str(out_dir), *flags], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])


def throughput(args) -> None:
    steps = ["--max-iters", str(args.steps), "--eval-interval", str(args.steps), "--eval-iters", "1"]
    tokens_per_s = {name: [] for name in THROUGHPUT_RUNS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for i, (name, (processes, threads, flags)) in enumerate(THROUGHPUT_RUNS.items()):
                out = Path(tmp) / f"{repeat}-{i}"
                data = ["--data", args.data] if args.data else []
                row = run_train(processes, threads, [*data, *steps, *flags], out)
                tokens_per_s[name].append(row["tokens_per_s"])
                print(f"{name}: {row['tokens_per_s']:,.0f} tokens/s", file=sys.stderr, flush=True)
    base = statistics.median(tokens_per_s["1 process x 1 thread, float32"])
    print(f"cpu preset, {args.steps} steps, median of {args.repeats}:")
    for name, values in tokens_per_s.items():
        median = statistics.median(values)
        print(f"  {name:40s} {median:9,.0f} tokens/s  ({median / base:.2f}x)")


def bpc(args) -> None:
    from fastgpt.data.text import shakespeare
    from fastgpt.prepare import prepare
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(args.data) if args.data else Path(tmp) / "tinyshakespeare.txt"
        if not args.data:
            text.write_text(shakespeare(), encoding="utf-8")
        for kind in ("char", "bpe"):
            dataset = Path(tmp) / kind
            meta = prepare(text, kind, dataset, vocab_size=args.vocab_size)
            row = run_train(1, args.threads, ["--dataset", str(dataset), "--max-iters", str(args.max_iters),
                                              "--eval-interval", str(args.max_iters),
                                              "--eval-iters", str(args.eval_iters)], Path(tmp) / f"run-{kind}")
            print(f"{kind} (vocab {meta['vocab_size']}): cpu preset, {args.max_iters} iterations, "
                  f"{args.eval_iters} eval batches: val loss {row['val_loss']:.4f} nats/token = "
                  f"{row['val_bpc']:.4f} bits/char", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--data", default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("bpc")
    p.add_argument("--data", default=None)
    p.add_argument("--max-iters", type=int, default=500)
    p.add_argument("--eval-iters", type=int, default=200)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    {"throughput": throughput, "bpc": bpc}[args.command](args)


if __name__ == "__main__":
    main()
