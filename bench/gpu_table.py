"""Markdown table of a bench_attention_gpu.py report: `python -m bench.gpu_table report.json`.

One row per (pass, shape, p, implementation): ms per call, TFLOP/s and, for Triton, how many times
faster than SDPA (default choice and flash forced) it was in the same run."""
import json
import sys


def main(path: str) -> None:
    with open(path) as f:
        report = json.load(f)
    rows = [bench["extra_info"] for bench in report["benchmarks"]]
    device = rows[0]["device"] if rows else "no benchmarks"
    print(f"{device}, bf16, causal; {report['datetime']}; torch {report['machine_info'].get('torch_version', '?')}\n")
    print("| pass | shape (B, H, T, D) | p | implementation | ms | TFLOP/s | vs sdpa | vs sdpa-flash |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        ratios = [f"{r[key]:.2f}x" if key in r else "" for key in ("speedup_vs_sdpa", "speedup_vs_sdpa-flash")]
        print(f"| {r['timed']} | {tuple(r['shape'])} | {r['p']} | {r['implementation']} | "
              f"{r['ms_per_call']:.3f} | {r['tflops']:.1f} | {ratios[0]} | {ratios[1]} |")


if __name__ == "__main__":
    main(sys.argv[1])
