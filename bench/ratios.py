"""Speed ratios of one pytest-benchmark run: `python -m bench.ratios report.json`.

For every group (one shape, p and pass, or the training step) prints each benchmark's median and
how many times faster than the others in the same group it is, so that the ratios compare
timings taken in the same run, on the same machine load."""
import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        report = json.load(f)
    groups = defaultdict(dict)
    for bench in report["benchmarks"]:
        name = bench["name"].split("[")[-1].rstrip("]").split("-")[-1]
        groups[bench["group"]][name] = bench["stats"]["median"]
    threads = report["machine_info"].get("torch_threads")
    print(f"medians, {threads} threads")
    for group, medians in groups.items():
        fastest = min(medians, key=medians.get)
        cells = ", ".join(f"{name} {median * 1e3:.2f} ms" for name, median in medians.items())
        speedups = ", ".join(f"{medians[other] / medians[fastest]:.2f}x {other}"
                             for other in medians if other != fastest)
        print(f"{group}: {cells} | {fastest} is {speedups}")


if __name__ == "__main__":
    main(sys.argv[1])
