"""The total gradient norm of every training step, before any clipping: the distribution from which
the `cpu` and `gpu` presets' --grad-clip is chosen (docs/training.md).

    python -m bench.grad_norms --preset cpu --max-iters 2000
    python -m bench.grad_norms --preset gpu --device cpu --max-iters 200 --eval-interval 200 --eval-iters 2

Takes `python -m fastgpt.train`'s flags and trains with clipping off (--grad-clip 0 is appended),
so each recorded norm is the one clip_grad_norm_ would compare with its threshold. Prints the
percentiles of the norms over all steps and over the steps after the first 100 (the first steps
of a fresh model have the largest gradients), how many steps a threshold would have clipped, and
the final val loss: a preset whose threshold never bites must reach exactly this val loss.
--norms-out FILE also writes the norms, one line per step as it is taken. Ctrl-C or SIGTERM stops
training early and reports the steps taken so far (the `gpu` preset takes minutes per step on a
CPU).
"""
import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from fastgpt.train import main as train_main

PERCENTILES = (50, 90, 99, 99.9, 100)
THRESHOLDS = (1.0, 2.0, 5.0, 10.0)
SETTLED_AFTER = 100  # steps


def record_norms(norms: list[float], log: TextIO):
    """Append the 2-norm of all gradients, as clip_grad_norm_ computes it, before every optimizer
    step (after any GradScaler unscaling, which happens before clipping too)."""
    def hook(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        print(norms[-1], file=log, flush=True)
    return register_optimizer_step_pre_hook(hook)


def summary(norms: list[float], label: str) -> str:
    t = torch.tensor(norms, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.float64))
    cells = "  ".join(f"p{p:g} {v:.3f}" for p, v in zip(PERCENTILES, q.tolist()))
    above = "  ".join(f">{c:g}: {int((t > c).sum())}" for c in THRESHOLDS)
    return f"{label} ({len(norms)} steps): {cells}\n  steps above: {above}"


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--norms-out", type=Path, default=None)
    parser.add_argument("--out-dir", default=None)
    args, train_args = parser.parse_known_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops early as Ctrl-C does
    norms: list[float] = []
    final = None
    with tempfile.TemporaryDirectory() as tmp, open(args.norms_out or "/dev/null", "w") as log:
        out_dir = Path(args.out_dir or tmp)
        handle = record_norms(norms, log)
        try:
            train_main([*train_args, "--out-dir", str(out_dir), "--sample-chars", "0", "--grad-clip", "0"])
            final = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
        except KeyboardInterrupt:
            print(f"\nstopped after {len(norms)} steps")
        handle.remove()
    print(summary(norms, "all steps"))
    if len(norms) > SETTLED_AFTER:
        print(summary(norms[SETTLED_AFTER:], f"steps after the first {SETTLED_AFTER}"))
    print("largest: " + ", ".join(f"step {i + 1}: {n:.3f}" for i, n in
                                  sorted(enumerate(norms), key=lambda x: -x[1])[:5]))
    if final:
        print(f"val loss at step {final['iter']}: {final['val_loss']:.4f} (unclipped)")

if __name__ == "__main__":
    sys.exit(main())
