"""A big `--data` text, timed as the user waits for it: tiny Shakespeare repeated to SIZE GB, then
`python -m fastgpt.train --data big.txt` (the `cpu` preset, one step, one evaluation batch), and
the same command on the packaged corpus beside it. Reports the time until the first evaluation
line (the run has started), the whole command and the peak resident memory of each.

    python -m bench.big_data [--gb 1.3] [--out bench/results/NAME.json]
"""
import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fastgpt.data.text import shakespeare_bytes

ONE_STEP = ["--preset", "cpu", "--max-iters", "1", "--eval-iters", "1", "--sample-chars", "0"]


def timed_run(args: list[str], cwd: Path) -> dict:
    """Seconds to the first `eval` line and to the end, and the peak RSS of this one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "fastgpt.train", *args], cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first_eval, lines = None, []
    for line in process.stdout:
        lines.append(line.rstrip())
        if first_eval is None and line.startswith("eval "):
            first_eval = time.perf_counter() - start
    if process.wait() != 0:
        raise SystemExit("\n".join(lines))
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"started_s": first_eval, "whole_s": time.perf_counter() - start,
            "peak_rss_gb": peak_kb * 1024 / 1e9 if peak_kb > before else None,
            "output": [line for line in lines if line.startswith(("read ", "eval ", "  data"))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.3, help="size of the text, in GB")
    parser.add_argument("--out", type=Path, help="write the report here as JSON")
    args = parser.parse_args()
    corpus = shakespeare_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        big = scratch / "big.txt"
        with open(big, "wb") as f:
            for _ in range(round(args.gb * 1e9 / len(corpus))):
                f.write(corpus)
        # the packaged corpus first: the peak RSS of RUSAGE_CHILDREN only grows
        report = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
                  "torch": torch.__version__, "text_bytes": big.stat().st_size,
                  "packaged": timed_run([*ONE_STEP, "--out-dir", str(scratch / "a")], scratch),
                  "big": timed_run([*ONE_STEP, "--data", str(big), "--out-dir", str(scratch / "b")], scratch)}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
