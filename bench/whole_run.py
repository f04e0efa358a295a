"""Whole training commands timed as a user runs them: each command is a subprocess, started in
interleaved rounds (A B A B ...), its wall time split into start-up, steps, evaluations and the end,
read from what the command prints while it runs.

    python -m bench.whole_run --pairs nano,quick --nanogpt ~/nanoGPT --rounds 2   # repository root
    python -m bench.whole_run --pairs lecture --max-iters 300 --rounds 3
    python -m bench.whole_run --smoke                                        # a few seconds a run

Pairs (fastgpt's command first, its baseline second):
  lecture  `python -m fastgpt.train --preset cpu` against the lecture's gpt.py loop around the
           lecture's model (bench/lecture_script.py) with the same sizes, iterations and evaluations
  nano     `python -m fastgpt.train --preset nanogpt-cpu` against nanoGPT's own train.py with its
           README's CPU flags (--nanogpt: a nanoGPT checkout whose data/shakespeare_char is prepared)
  quick    `python -m fastgpt.train --preset quick` (or --quick-flags) against the same
           nanoGPT command
A command that two pairs share runs once per round.

How a run is split. Every line a command prints (stdout and stderr together; nanoGPT is run with
PYTHONUNBUFFERED=1, as it does not flush) is stamped with its arrival time. The time up to the
line before the first step or evaluation is start-up (interpreter, imports, data, model); the time
between two lines goes to what the later line reports: a step line (fastgpt's "step N/M", the
lecture script's and nanoGPT's "iter N") to steps, an evaluation line ("eval N/M", "step N: train
loss") to evaluations (fastgpt prints it after its checkpoints and metrics row, so those count
too; so does nanoGPT's "saving checkpoint" line). Where an evaluation line follows steps that no
step line reported, those steps are taken out at the median step time. What follows the last step
or evaluation (the sample, the process's exit) is the end. The time the target val loss was first
printed is read from the evaluation lines (and, for fastgpt, from metrics.jsonl's "time").

Results: one JSON file (bench/results/cpu-<cpu>-<N>threads-<date>-whole-run.json by default) with
the CPU model, the load average before and after each run, every run and the best and median of
each command and part.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# nanoGPT's shakespeare_char val loss after its README's 2000 CPU iterations: the quick recipe's target.
TARGET_VAL_LOSS = 1.8857

# --- what each command prints ---------------------------------------------------------------

# (kind, steps done or None, val loss or None) of one line; kind: "step", "eval", "eval_extra" or None
Parsed = tuple[Optional[str], Optional[int], Optional[float]]

FASTGPT_STEP = re.compile(r"^step (\d+)/\d+: loss")
FASTGPT_EVAL = re.compile(r"^eval (\d+)/\d+: train loss [-\d.naif]+, val loss ([-\d.naif]+)")
ITER_LINE = re.compile(r"^iter (\d+): loss")  # nanoGPT and the lecture script
STEP_EVAL = re.compile(r"^step (\d+): train loss [-\d.naif]+, val loss ([-\d.naif]+)")


def parse_fastgpt(line: str) -> Parsed:
    if m := FASTGPT_STEP.match(line):
        return "step", int(m[1]), None
    if m := FASTGPT_EVAL.match(line):
        return "eval", int(m[1]), float(m[2])
    return None, None, None


def parse_lecture(line: str) -> Parsed:
    """bench/lecture_script.py: "iter N" after N steps, "step N: ..." at the evaluation after N."""
    if m := ITER_LINE.match(line):
        return "step", int(m[1]), None
    if m := STEP_EVAL.match(line):
        return "eval", int(m[1]), float(m[2])
    return None, None, None


def parse_nanogpt(line: str) -> Parsed:
    """nanoGPT's train.py: "iter N" after its step N (N + 1 steps done, it counts from 0), "step
    N: ..." at the evaluation before step N, "saving checkpoint" after an evaluation that improved."""
    if m := ITER_LINE.match(line):
        return "step", int(m[1]) + 1, None
    if m := STEP_EVAL.match(line):
        return "eval", int(m[1]), float(m[2])
    if line.startswith("saving checkpoint"):
        return "eval_extra", None, None
    return None, None, None


@dataclass
class Command:
    name: str
    argv: list[str]
    parse: Callable[[str], Parsed]
    cwd: Optional[str] = None  # None: a fresh temporary directory per run
    env: dict = field(default_factory=dict)
    out_flag: Optional[str] = None  # how the command takes its output directory
    metrics: bool = False  # out_dir/metrics.jsonl rows with "time" (fastgpt)


# --- one run ----------------------------------------------------------------------------------

def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return [float("nan")] * 3 if not hasattr(os, "getloadavg") else list(os.getloadavg())


def split_timeline(lines: list[tuple[float, str]], parse: Callable[[str], Parsed], wall: float,
                   target: Optional[float] = TARGET_VAL_LOSS) -> dict:
    """start-up, steps, evaluations and end (seconds) of one run from its stamped lines."""
    events = [(t, *parse(text)) for t, text in lines]
    first = next((i for i, e in enumerate(events) if e[1] in ("step", "eval")), None)
    if first is None:
        return {"startup_s": None, "steps_s": None, "evals_s": None, "end_s": None, "steps": 0,
                "evals": 0, "step_ms_median": None, "val_losses": [], "target_reached": None}
    startup = events[first - 1][0] if first > 0 else 0.0
    step_spans: list[tuple[float, int]] = []  # (seconds, steps) of each interval ending in a step line
    eval_spans: list[tuple[float, int]] = []  # (seconds, unreported steps before the evaluation)
    val_losses: list[tuple[int, float, float]] = []  # (iteration, val loss, time of its line)
    done, previous, last_event = 0, startup, startup
    for t, kind, n, val in events[first:]:
        if kind == "step":
            step_spans.append((t - previous, n - done))
            done = n
        elif kind == "eval":
            eval_spans.append((t - previous, max(0, n - done)))
            done = max(done, n)
            val_losses.append((n, val, t))
        elif kind == "eval_extra":
            eval_spans.append((t - previous, 0))
        else:
            continue  # a line of neither (a warning): its time goes with the next step or evaluation
        previous = last_event = t
    per_step = [s / k for s, k in step_spans if k > 0]
    step_s = statistics.median(per_step) if per_step else 0.0
    steps = sum(s for s, _ in step_spans)
    evals = 0.0
    for seconds, unreported in eval_spans:
        moved = min(seconds, unreported * step_s)
        steps, evals = steps + moved, evals + seconds - moved
    reached = next(((n, v, t) for n, v, t in val_losses if target is not None and v <= target), None)
    return {
        "startup_s": startup, "steps_s": steps, "evals_s": evals, "end_s": wall - last_event,
        "steps": done, "evals": len(val_losses), "step_ms_median": step_s * 1000,
        "val_losses": [[n, v] for n, v, _ in val_losses],
        "target_reached": None if reached is None else {"iter": reached[0], "val_loss": reached[1],
                                                        "at_s": reached[2]},
    }


def run_once(cmd: Command, scratch: Path, index: int, echo: bool = False) -> dict:
    """Start the command, stamp its lines, wait for it; its timings and the load around it."""
    out_dir = scratch / f"{cmd.name}-{index}"
    argv = list(cmd.argv)
    if cmd.out_flag:  # "--out-dir" takes the directory as the next argument, "--out_dir=" joined
        argv += ([cmd.out_flag + str(out_dir)] if cmd.out_flag.endswith("=")
                 else [cmd.out_flag, str(out_dir)])
    cwd = cmd.cwd or str(scratch)
    env = {**os.environ, **cmd.env}
    load_before = loadavg()
    lines: list[tuple[float, str]] = []
    wall_started = time.time()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for text in proc.stdout:
        lines.append((time.perf_counter() - started, text.rstrip("\n")))
        if echo:
            print(f"  [{cmd.name} {lines[-1][0]:7.2f}s] {lines[-1][1]}", file=sys.stderr)
    rc = proc.wait()
    wall = time.perf_counter() - started
    result = {"command": cmd.name, "rc": rc, "wall_s": wall, "started": wall_started,
              "load_before": load_before, "load_after": loadavg()}
    if rc != 0:
        result["tail"] = [text for _, text in lines[-15:]]
    result.update(split_timeline(lines, cmd.parse, wall))
    metrics = out_dir / "metrics.jsonl"
    if cmd.metrics and metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        hit = next((r for r in rows if r["val_loss"] <= TARGET_VAL_LOSS), None)
        result["metrics_target_reached"] = None if hit is None else {
            "iter": hit["iter"], "val_loss": hit["val_loss"], "at_s": hit["time"] - wall_started}
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


# --- the commands -------------------------------------------------------------------------------

# fastgpt's `cpu` preset, which the lecture script is given flag by flag.
CPU_PRESET = dict(batch_size=32, block_size=128, n_embd=32, n_head=4, n_layer=4, dropout=0.2,
                  learning_rate=3e-4, max_iters=5000, eval_interval=500, eval_iters=200)
NANOGPT_FLAGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                 "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
                 "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                 "--lr_decay_iters=2000", "--dropout=0.0"]
# The quick recipe (docs/quick.md); --quick-flags tries another.
QUICK_FLAGS = "--preset quick"


def with_flag(argv: list[str], name: str, value) -> list[str]:
    """argv with `--name value` set (replaced if present: argparse takes the last anyway)."""
    return argv + [name, str(value)]


def scale_fastgpt(argv: list[str], max_iters: Optional[int], eval_interval: Optional[int],
                  eval_iters: Optional[int]) -> list[str]:
    for name, value in (("--max-iters", max_iters), ("--eval-interval", eval_interval),
                        ("--eval-iters", eval_iters)):
        if value is not None:
            argv = with_flag(argv, name, value)
    return argv


def commands(args: argparse.Namespace) -> dict[str, Command]:
    py = sys.executable
    scale = (args.max_iters, args.eval_interval, args.eval_iters)
    cpu = {**CPU_PRESET, **{k: v for k, v in zip(("max_iters", "eval_interval", "eval_iters"), scale)
                            if v is not None}}
    extra = ["--sample-chars", "0"] if args.smoke else []
    if args.smoke:
        cpu.update(n_layer=1, n_embd=16, n_head=2, block_size=32, batch_size=4)
    out = {
        "fastgpt-cpu": Command("fastgpt-cpu", scale_fastgpt(
            [py, "-m", "fastgpt.train", "--preset", "cpu"] + (
                ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "32",
                 "--batch-size", "4"] if args.smoke else []) + extra, *scale),
            parse_fastgpt, out_flag="--out-dir", metrics=True),
        "lecture-cpu": Command("lecture-cpu", [py, "-m", "bench.lecture_script"] + [
            a for k, v in cpu.items() for a in (f"--{k.replace('_', '-')}", str(v))] + (
                ["--sample-chars", "0"] if args.smoke else []),
            parse_lecture, cwd=str(REPO)),
        "fastgpt-nanogpt-cpu": Command("fastgpt-nanogpt-cpu", scale_fastgpt(
            [py, "-m", "fastgpt.train", "--preset", "nanogpt-cpu"] + extra, *scale),
            parse_fastgpt, out_flag="--out-dir", metrics=True),
        "fastgpt-quick": Command("fastgpt-quick", scale_fastgpt(
            [py, "-m", "fastgpt.train", *shlex.split(args.quick_flags)] + extra,
            args.max_iters, None, None), parse_fastgpt, out_flag="--out-dir", metrics=True),
    }
    if args.nanogpt:
        flags = list(NANOGPT_FLAGS)
        if args.max_iters is not None:
            flags += [f"--max_iters={args.max_iters}", f"--lr_decay_iters={args.max_iters}"]
        if args.eval_interval is not None:
            flags.append(f"--eval_interval={args.eval_interval}")
        if args.eval_iters is not None:
            flags.append(f"--eval_iters={args.eval_iters}")
        out["nanogpt"] = Command("nanogpt", [args.nanogpt_python or py, "train.py", *flags],
                                 parse_nanogpt, cwd=str(Path(args.nanogpt).resolve()),
                                 env={"PYTHONUNBUFFERED": "1"}, out_flag="--out_dir=")
    return out


PAIRS = {"lecture": ("fastgpt-cpu", "lecture-cpu"), "nano": ("fastgpt-nanogpt-cpu", "nanogpt"),
         "quick": ("fastgpt-quick", "nanogpt")}
PARTS = ("wall_s", "startup_s", "steps_s", "evals_s", "end_s", "step_ms_median")


def summarise(runs: list[dict], names: list[str], pairs: list[str]) -> dict:
    summary: dict = {"commands": {}, "pairs": {}}
    for name in names:
        mine = [r for r in runs if r["command"] == name and r["rc"] == 0]
        if not mine:
            continue
        entry = {"runs": len(mine)}
        for part in PARTS:
            values = [r[part] for r in mine if r.get(part) is not None]
            if values:
                entry[part] = {"best": min(values), "median": statistics.median(values)}
        reached = [r["target_reached"]["at_s"] for r in mine if r.get("target_reached")]
        if reached:
            entry["target_reached_s"] = {"best": min(reached), "median": statistics.median(reached),
                                         "runs": len(reached)}
        entry["final_val_loss"] = [r["val_losses"][-1][1] for r in mine if r["val_losses"]]
        summary["commands"][name] = entry
    for pair in pairs:
        a, b = PAIRS[pair]
        ca, cb = summary["commands"].get(a), summary["commands"].get(b)
        if ca and cb:
            summary["pairs"][pair] = {
                "fastgpt": a, "baseline": b,
                "wall_ratio_median": ca["wall_s"]["median"] / cb["wall_s"]["median"],
                "wall_ratio_best": ca["wall_s"]["best"] / cb["wall_s"]["best"]}
    return summary


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cpu_slug(model: str) -> str:
    words = model.lower().replace("(r)", "").replace("(tm)", "").split()
    for known in ("xeon", "epyc", "ryzen", "core", "graviton", "neoverse", "apple"):
        if known in words:
            return known
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:20] or "cpu"


def table(summary: dict) -> str:
    rows = ["| command | runs | wall best / median (s) | start-up | steps | evaluations | end | "
            "step (ms) | target reached (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in summary["commands"].items():
        def bm(part, fmt="{:.1f}"):
            if part not in c:
                return "-"
            return f"{fmt.format(c[part]['best'])} / {fmt.format(c[part]['median'])}"
        rows.append(f"| {name} | {c['runs']} | {bm('wall_s')} | {bm('startup_s')} | {bm('steps_s')} "
                    f"| {bm('evals_s')} | {bm('end_s')} | {bm('step_ms_median')} "
                    f"| {bm('target_reached_s')} |")
    for pair, p in summary["pairs"].items():
        rows.append(f"\n{pair}: {p['fastgpt']} / {p['baseline']} wall = "
                    f"{p['wall_ratio_median']:.3f} (medians), {p['wall_ratio_best']:.3f} (bests)")
    return "\n".join(rows)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--pairs", default="lecture", help="comma-separated: lecture, nano, quick")
    p.add_argument("--rounds", type=int, default=2, help="rounds; each runs every command once")
    p.add_argument("--nanogpt", default=None, help="a nanoGPT checkout with shakespeare_char prepared")
    p.add_argument("--nanogpt-python", default=None, help="the Python that runs nanoGPT "
                   "(default: this one)")
    p.add_argument("--quick-flags", default=QUICK_FLAGS, help="the quick recipe's flags")
    p.add_argument("--max-iters", type=int, default=None, help="every command's iterations")
    p.add_argument("--eval-interval", type=int, default=None)
    p.add_argument("--eval-iters", type=int, default=None)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every command")
    p.add_argument("--smoke", action="store_true", help="tiny models, 20 iterations: checks the "
                   "harness, measures nothing")
    p.add_argument("--out", default=None, help="results JSON (default: bench/results/"
                   "cpu-<cpu>-<threads>threads-<date>-whole-run.json; none with --smoke)")
    p.add_argument("--echo", action="store_true", help="print every line of every command")
    args = p.parse_args(argv)
    if args.smoke:
        args.max_iters = args.max_iters or 20
        args.eval_interval = args.eval_interval or 10
        args.eval_iters = args.eval_iters or 2
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    for pair in pairs:
        if pair not in PAIRS:
            raise SystemExit(f"whole_run: unknown pair {pair!r}; the pairs are {', '.join(PAIRS)}")
    available = commands(args)
    names: list[str] = []
    for pair in pairs:
        for name in PAIRS[pair]:
            if name not in available:
                raise SystemExit(f"whole_run: pair {pair} needs --nanogpt DIR (a nanoGPT checkout "
                                 f"with data/shakespeare_char prepared)")
            if name not in names:
                names.append(name)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    model = cpu_model()
    report = {"date": datetime.date.today().isoformat(), "cpu": model, "nproc": os.cpu_count(),
              "threads": args.threads, "torch": importlib.metadata.version("torch"),
              "python": sys.version.split()[0], "target_val_loss": TARGET_VAL_LOSS,
              "argv": sys.argv[1:] if argv is None else argv,
              "commands": {n: {"argv": available[n].argv, "cwd": available[n].cwd,
                               "env": available[n].env} for n in names},
              "load_start": loadavg(), "runs": []}
    print(f"whole_run: {model}, {args.threads} threads, load {report['load_start']}; "
          f"{args.rounds} rounds of {', '.join(names)}", file=sys.stderr)
    out = args.out
    if out is None and not args.smoke:
        out = RESULTS / (f"cpu-{cpu_slug(model)}-{args.threads}threads-{report['date']}-whole-run.json")
    with tempfile.TemporaryDirectory(prefix="whole-run-") as scratch:
        for r in range(args.rounds):
            for name in names:
                result = run_once(available[name], Path(scratch), r, echo=args.echo)
                result["round"] = r
                report["runs"].append(result)
                reached = result.get("target_reached")
                print(f"round {r} {name}: rc {result['rc']}, wall {result['wall_s']:.1f} s "
                      f"(start-up {result['startup_s'] or 0:.1f}, steps {result['steps_s'] or 0:.1f}"
                      f", evaluations {result['evals_s'] or 0:.1f}, end {result['end_s'] or 0:.1f}), "
                      f"{result['steps']} steps, val {result['val_losses'][-1][1] if result['val_losses'] else '-'}"
                      f"{', target at %.1f s' % reached['at_s'] if reached else ''}, "
                      f"load {result['load_before'][0]:.2f}->{result['load_after'][0]:.2f}",
                      file=sys.stderr)
                if result["rc"] != 0:
                    print("\n".join(result.get("tail", [])), file=sys.stderr)
                write(report, out, names, pairs)  # after every run: a stopped measurement keeps its runs
    write(report, out, names, pairs)
    print(table(report["summary"]))
    if out:
        print(f"wrote {out}", file=sys.stderr)
    return report


def write(report: dict, out: Optional[str], names: list[str], pairs: list[str]) -> None:
    report["load_end"] = loadavg()
    report["summary"] = summarise(report["runs"], names, pairs)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
