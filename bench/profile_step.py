"""Where a training step's time goes: torch.profiler over steps of a preset (default `cpu`), printed as
a Markdown table of the top operators in ms per step (self CPU time, so nothing is counted twice).

    python -m bench.profile_step                       # cpp backend, 2 threads, 20 steps
    python -m bench.profile_step --attention torch --threads 1 --steps 50
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench.bench_train import make_model
from fastgpt.training.config import PRESETS, TrainConfig
from fastgpt.data.batches import RandomBatches, split
from fastgpt.train import train_step
from fastgpt.training.run import make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--attention", default="cpp", help="attention backend, or `lecture` for the lecture's model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(**PRESETS[args.preset])
    torch.manual_seed(0)
    ids = torch.randint(65, (200_000,))
    batches = RandomBatches(split(ids, cfg.block_size), cfg.block_size, cfg.batch_size, 0, torch.device("cpu"))
    name = "lecture" if args.attention == "lecture" else f"fastgpt-{args.attention}"
    model = make_model(name, cfg, 65)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    for _ in range(3):  # warm up
        train_step(model, optimizer, batches, cfg)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            train_step(model, optimizer, batches, cfg)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
    print(f"`--preset {args.preset}`, {name}, {args.threads} threads, {args.steps} steps: "
          f"{total:.1f} ms/step of operator self time\n")
    print("| op | ms/step | % | calls/step |\n|---|---:|---:|---:|")
    for e in events[:args.top]:
        ms = e.self_cpu_time_total / 1e3 / args.steps
        print(f"| `{e.key}` | {ms:.2f} | {100 * ms / total:.1f} | {e.count / args.steps:g} |")


if __name__ == "__main__":
    main()
