"""bench/gpu_check.sh's Python half: the attention timings, and the one JSON report of the run.

    python -m bench.gpu_check attention ROWS.json [--dry-run]
    python -m bench.gpu_check report REPORT.json --date D --junit J --attention ROWS.json \
        --train-dir DIR --step NAME=EXIT,MICROSECONDS ... [--dry-run]

`attention` times forward + backward of fastgpt's fused attention against
F.scaled_dot_product_attention (bench/bench_attention_gpu.py's calls, through the dispatch point)
with triton.testing.do_bench (CUDA events, median), and rewrites ROWS.json after each case, so a
step stopped by its timeout leaves what it measured. `report` gathers the steps' results, with
nulls for what a failed step did not produce, prints a short summary and writes REPORT.json.

--dry-run (no GPU): tiny float32 shapes on the CPU, where the fused backend is the C++ one and
the timer a wall clock: it proves the script, not the kernels.
"""
import argparse
import json
import sys
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import triton
import triton.testing

from bench.bench_attention_gpu import FLOP_FACTOR, timed_call
from fastgpt import checkpoint
from fastgpt.attention import resolve_backend
from fastgpt.cli import pick_device
from fastgpt.errors import UserError
from fastgpt.training.precision import resolve_dtype
from fastgpt.training.metrics import METRICS, read_metrics

TIMED = "forward+backward"
# (B, H, T, D), dtype, dropout p: the seed's shape, the lecture's, and two long sequences.
CASES = [((32, 4, 128, 8), "float32", 0.0), ((32, 4, 128, 8), "bfloat16", 0.0),
         ((64, 6, 256, 64), "bfloat16", 0.0), ((64, 6, 256, 64), "bfloat16", 0.2),
         ((4, 16, 4096, 64), "bfloat16", 0.0), ((2, 16, 8192, 128), "bfloat16", 0.0)]
DRY_RUN_CASES = [((2, 2, 16, 8), "float32", 0.0), ((2, 2, 16, 8), "float32", 0.2)]
FUSED = {"cuda": "triton", "cpu": "cpp"}  # the fused backend of each device


def device_type(dry_run: bool) -> str:
    return "cpu" if dry_run else "cuda"


def calls(case, device: str) -> dict:
    """The fused backend's and SDPA's timed calls of one case, on fresh random inputs."""
    shape, dtype, p = case
    q, k, v = [torch.randn(shape, device=device, dtype=getattr(torch, dtype), requires_grad=True)
               for _ in range(3)]
    ours = resolve_backend(FUSED[device], q)
    if ours != FUSED[device]:
        raise RuntimeError(f"the {FUSED[device]} backend cannot run this case; it fell back to {ours}")
    grad_out = torch.randn_like(q)
    return {name: timed_call(TIMED, name, q, k, v, grad_out, p) for name in (ours, "sdpa")}


def milliseconds(call, device: str) -> float:
    if device == "cuda":
        return triton.testing.do_bench(call, return_mode="median")
    call()  # the dry run: one warm-up, one timed call
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def warm_up(case, device: str) -> None:
    """One call of each: compiles and autotunes the Triton kernels for this case, into Triton's
    on-disk cache, where the timing process (and the training run) then find them."""
    for call in calls(case, device).values():
        call()


def time_attention(rows_path: Path, dry_run: bool) -> None:
    device = device_type(dry_run)
    cases = DRY_RUN_CASES if dry_run else CASES
    # Triton compiles each autotuning config on one core: compile every case's at once, each in
    # its own process, before timing them one by one on an otherwise idle GPU.
    with ProcessPoolExecutor(len(cases), mp_context=get_context("spawn")) as pool:
        for case in cases:  # a warm-up that fails fails again below, where it is recorded
            pool.submit(warm_up, case, device)
    rows = []
    for case in cases:
        (B, H, T, D), dtype, p = case
        row = {"shape": [B, H, T, D], "dtype": dtype, "dropout_p": p, "backend": FUSED[device],
               "ours_ms": None, "sdpa_ms": None, "ours_tflops": None, "sdpa_tflops": None,
               "speedup": None, "error": None}
        try:
            flops = FLOP_FACTOR[TIMED] * 2 * B * H * T * T * D
            ours, sdpa = (milliseconds(call, device) for call in calls(case, device).values())
            row.update(ours_ms=ours, sdpa_ms=sdpa, ours_tflops=flops / ours / 1e9,
                       sdpa_tflops=flops / sdpa / 1e9, speedup=sdpa / ours)
        except Exception as error:  # recorded; the other cases still run
            row["error"] = f"{type(error).__name__}: {error}"[:500]
        rows.append(row)
        rows_path.write_text(json.dumps(rows, indent=1))
        print(json.dumps(row), flush=True)
    if any(row["error"] for row in rows):
        sys.exit(1)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tally_tests(junit: Path) -> dict:
    """Passed, failed (failures and errors), skipped, and the failed tests' names, from pytest's
    junit XML; nulls when the test step left none. The tests a timeout interrupted are left out
    (under pytest-xdist they are nameless entries)."""
    try:
        cases = [case for case in ElementTree.parse(junit).getroot().iter("testcase") if case.get("name")]
    except (OSError, ElementTree.ParseError):
        return {"tests_passed": None, "tests_failed": None, "tests_skipped": None, "failed_tests": None}
    outcome = {"failure": "failed", "error": "failed", "skipped": "skipped"}
    outcomes = [next((outcome[c.tag] for c in case if c.tag in outcome), "passed") for case in cases]
    return {"tests_passed": outcomes.count("passed"), "tests_failed": outcomes.count("failed"),
            "tests_skipped": outcomes.count("skipped"),
            "failed_tests": [f"{case.get('classname')}::{case.get('name')}"
                             for case, o in zip(cases, outcomes) if o == "failed"]}


def training(train_dir: Path, seconds: float | None, exit_status: int | None) -> dict:
    """The training run: its wall time (when it finished), the last evaluation's val loss and
    iteration (also after a timeout), and the autocast dtype it ran in."""
    result = {"iters": None, "seconds": seconds if exit_status == 0 else None, "val_loss": None,
              "dtype": None, "last_eval_iter": None}
    try:
        config = checkpoint.load_checkpoint(train_dir / checkpoint.LAST)["train_config"]
        last = read_metrics(train_dir / METRICS)[-1]
    except (UserError, OSError, IndexError):  # the run stopped before its first evaluation
        return result
    result.update(iters=config["max_iters"], val_loss=last["val_loss"], last_eval_iter=last["iter"],
                  dtype=resolve_dtype(config["dtype"], pick_device(config["device"])))
    return result


def parse_step(text: str) -> tuple[str, dict]:
    """NAME=EXIT,MICROSECONDS (as gpu_check.sh records each step) -> (NAME, {exit, seconds})."""
    name, _, numbers = text.partition("=")
    exit_status, micros = numbers.split(",")
    return name, {"exit": int(exit_status), "seconds": round(int(micros) / 1e6, 2)}


def report(args) -> None:
    steps = dict(parse_step(s) for s in args.step)
    train = steps.get("train", {})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {"device": device, "date": args.date, "torch": torch.__version__,
              "triton": triton.__version__, "dry_run": args.dry_run, "steps": steps,
              **tally_tests(args.junit),
              "gpu_preset": training(args.train_dir, train.get("seconds"), train.get("exit")),
              "attention": read_json(args.attention) or []}
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(summary(result))


def summary(result: dict) -> str:
    def number(x, digits=2):
        return "-" if x is None else f"{x:.{digits}f}"

    lines = [f"{result['device']}, torch {result['torch']}, triton {result['triton']}, {result['date']}",
             "steps: " + ", ".join(f"{name} exit {s['exit']} in {s['seconds']} s"
                                   for name, s in result["steps"].items()),
             f"tests: {result['tests_passed']} passed, {result['tests_failed']} failed, "
             f"{result['tests_skipped']} skipped",
             f"gpu preset: {result['gpu_preset']}",
             "| shape | dtype | p | ours ms | sdpa ms | ours TFLOP/s | speedup |", "|---|---|---|---:|---:|---:|---:|"]
    for row in result["attention"]:
        lines.append(f"| {tuple(row['shape'])} | {row['dtype']} | {row['dropout_p']} | {number(row['ours_ms'], 3)} "
                     f"| {number(row['sdpa_ms'], 3)} | {number(row['ours_tflops'], 1)} | {number(row['speedup'])}x |"
                     + (f" {row['error']}" if row["error"] else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    attention = commands.add_parser("attention", help="time the attention cases")
    attention.add_argument("rows", type=Path)
    report_parser = commands.add_parser("report", help="write the run's JSON report")
    report_parser.add_argument("json", type=Path)
    report_parser.add_argument("--date", required=True)
    report_parser.add_argument("--junit", type=Path, required=True)
    report_parser.add_argument("--attention", type=Path, required=True)
    report_parser.add_argument("--train-dir", type=Path, required=True)
    report_parser.add_argument("--step", action="append", default=[])
    for command in (attention, report_parser):
        command.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.command == "attention":
        time_attention(args.rows, args.dry_run)
    else:
        report(args)


if __name__ == "__main__":
    main()
