"""The README's performance table, made from the pytest-benchmark reports in bench/results/.

    python -m bench.table            # print the table of the newest CPU reports
    python -m bench.table --write    # replace the table in README.md with it

The newest report of each kind (`cpu-*-train.json`, `cpu-*-attention.json`, `cpu-*-sample.json`,
newest by file name, which starts with the date) gives one row per comparison below: the median of
fastgpt's benchmark against the median of its baseline in the same report, so both were measured in
the same run, and the goal the project set for it. tests/test_readme.py checks that README.md holds
exactly this table.
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- performance-table: made by `python -m bench.table --write` -->", "<!-- /performance-table -->"


@dataclass(frozen=True)
class Row:
    kind: str  # which report: train, attention or sample
    group: str  # the pytest-benchmark group
    what: str
    ours: str  # provider names (the last part of a benchmark's id)
    baseline: str
    baseline_name: str
    goal: float  # the ratio the project aims at
    baseline_group: str = ""  # the baseline's group, when it is not `group`


ROWS = [
    Row("train", "train step, cpu preset", "training step, `cpu` preset (dropout 0.2)", "cpp",
        "lecture", "the lecture's model", 8.0),
    Row("train", "train step, cpu preset", "training step, `cpu` preset (dropout 0.2)", "cpp",
        "sdpa", "fastgpt with SDPA attention", 3.0),
    Row("attention", "forward+backward seed (32, 4, 128, 8) p=0.2",
        "attention fwd+bwd (32, 4, 128, 8), p = 0.2", "cpp", "sdpa", "SDPA", 8.0),
    Row("attention", "forward+backward seed (32, 4, 128, 8) p=0.0",
        "attention fwd+bwd (32, 4, 128, 8), p = 0", "cpp", "sdpa", "SDPA", 3.0),
    Row("attention", "forward+backward lecture (64, 6, 256, 64) p=0.2",
        "attention fwd+bwd (64, 6, 256, 64), p = 0.2", "cpp", "sdpa", "SDPA", 3.0),
    Row("attention", "forward+backward lecture (64, 6, 256, 64) p=0.0",
        "attention fwd+bwd (64, 6, 256, 64), p = 0", "cpp", "sdpa", "SDPA", 1.5),
    Row("sample", "cpu preset, 1 sample, 500 chars, window exact",
        "sampling, `cpu` preset, 500 chars (past the block), float32", "float32", "lecture",
        "the lecture's loop", 10.0),
    Row("sample", "1 samples, 255 chars, window exact", "sampling, `gpu` size, 1 sample, 255 chars, float32",
        "float32", "lecture", "the lecture's loop", 20.0),
    Row("sample", "1 samples, 255 chars, window exact", "sampling, `gpu` size, 1 sample, 255 chars, bfloat16",
        "bfloat16", "float32", "float32 weights", 1.8),
    Row("sample", "1 samples, 255 chars, window exact", "sampling, `gpu` size, 1 sample, 255 chars, int8 weights",
        "int8", "lecture", "the lecture's loop", 20.0),
    Row("sample", "8 samples, 255 chars, window exact", "sampling, `gpu` size, 8 samples of 255 chars against 1 (0.33x: 3 times its time)",
        "float32", "float32", "1 sample of 255 chars", 1 / 3, "1 samples, 255 chars, window exact"),
]


def provider(benchmark: dict) -> str:
    return benchmark["name"].split("[")[-1].rstrip("]").split("-")[-1]


def newest(kind: str) -> Path:
    reports = sorted(RESULTS.glob(f"cpu-*-{kind}.json"))
    if not reports:
        raise SystemExit(f"no bench/results/cpu-*-{kind}.json: run the benchmarks first (docs/benchmarks.md)")
    return reports[-1]


def load(kind: str) -> tuple[Path, dict]:
    path = newest(kind)
    return path, json.loads(path.read_text())


def median(report: dict, group: str, name: str) -> float:
    for bench in report["benchmarks"]:
        if bench["group"] == group and provider(bench) == name:
            return bench["stats"]["median"]
    raise SystemExit(f"no benchmark {name!r} in group {group!r}")


def seconds(value: float) -> str:
    return f"{value * 1e3:.1f} ms" if value < 10 else f"{value:.1f} s"


def table() -> str:
    reports = {kind: load(kind) for kind in ("train", "attention", "sample")}
    lines = [BEGIN, ""]
    for kind, (path, report) in reports.items():
        info = report["machine_info"]
        lines.append(f"- `{path.name}`: {info['cpu']['brand_raw']}, {info['cpu']['count']} cores, "
                     f"{info['torch_threads']} torch threads, C++ kernels {info.get('fastgpt_isa', '?')}, "
                     f"torch {info['torch_version']}, {report['datetime'][:10]}")
    lines += ["", "| what (CPU, medians) | fastgpt | baseline | ratio | goal |",
              "|---|---:|---:|---:|---:|"]
    for row in ROWS:
        report = reports[row.kind][1]
        ours = median(report, row.group, row.ours)
        base = median(report, row.baseline_group or row.group, row.baseline)
        lines.append(f"| {row.what} | {seconds(ours)} | {seconds(base)} ({row.baseline_name}) | "
                     f"**{base / ours:.2f}x** | {row.goal:.2g}x |")
    lines += ["", END]
    return "\n".join(lines)


def readme_table(text: str) -> str:
    """The table as README.md holds it now."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def main(argv: list[str]) -> None:
    made = table()
    if argv == ["--write"]:
        text = README.read_text()
        README.write_text(text.replace(readme_table(text), made))
    else:
        print(made)


if __name__ == "__main__":
    main(sys.argv[1:])
