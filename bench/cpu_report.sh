#!/usr/bin/env bash
# Every CPU report behind the README's table and docs/benchmarks.md, in one run on an otherwise idle
# machine: bench/results/cpu-<cpu>-<threads>threads-<date>-<kind>.json for kind train, attention,
# sample, startup and threads, the profile of a cpu-preset step at 1 and at all threads
# (cpu-profile-<date>.md), and `uptime` before and after (load.txt). Then `python -m bench.table
# --write` makes the README's table from them.
#
#     bash bench/cpu_report.sh          # FASTGPT_BENCH_THREADS (default 2) threads
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${FASTGPT_BENCH_THREADS:-2}
export FASTGPT_BENCH_THREADS=$threads
cpu=$(python -c "import cpuinfo" 2>/dev/null && python -c "import cpuinfo; print(cpuinfo.get_cpu_info()['brand_raw'].split()[1].lower())" || echo cpu)
stem=bench/results/cpu-$cpu-${threads}threads-$(date -u +%F)
{
  lscpu | grep -E "^(Model name|CPU family|Model|Thread|Core|Socket)" | tr -s " "
  echo "instruction sets: $(grep -o -w -E "avx2|fma|avx512f|avx512bw|avx512_bf16|amx_tile" /proc/cpuinfo | sort -u | tr "\n" " ")"
  echo "before: $(uptime)"
} > "$stem-load.txt"
run() {  # kind, pytest arguments
  local kind=$1; shift
  pytest -q -p no:randomly "$@" --benchmark-columns=median,rounds --benchmark-json="$stem-$kind.json"
}
run train bench/bench_train.py
run attention bench/bench_attention_cpu.py -k "forward+backward and (seed or lecture)"
run sample bench/bench_sample.py -k "1-255-exact or 1-255-lecture or 8-255-exact-3-float32 or cpu_preset or bandwidth"
run startup bench/bench_startup.py
run threads bench/bench_threads.py
{
  for t in 1 "$(python -c 'import os; print(os.cpu_count())')"; do
    echo "## a cpu-preset step, $t thread(s), the cpp backend"; echo
    python -m bench.profile_step --threads "$t" --steps 30
    echo
  done
} > "bench/results/cpu-profile-$(date -u +%F).md"
echo "after: $(uptime)" >> "$stem-load.txt"
python -m bench.table
