#!/bin/bash
# fastgpt on aarch64 without an ARM machine, on a Debian 12 amd64 host (root): cross-compiles the C++
# extension fastgpt._C with aarch64-linux-gnu-g++ against PyPI's aarch64 torch, assembles an
# importable fastgpt around it, and runs it under QEMU user-mode emulation: `python -m fastgpt.info`,
# the kernels against the references (bench/aarch64_check.py), and a few training steps of a tiny
# model with --attention cpp.
#
#   bash bench/aarch64_qemu.sh [LOG]    (LOG: default bench/results/aarch64-qemu-DATE.log)
#
# ARM_ROOT (default /tmp/arm) holds the emulated Python 3.11 and torch (bench/aarch64_setup.sh, run
# first unless $ARM_ROOT/run.sh exists: ~2.8 GB of downloads, ~5 GB unpacked; rm -rf it to start
# from scratch), the object files and the assembled package; the checkout gets only the log. With
# HOST_PYTHON set to a Python that has fastgpt installed, the same training also runs on the host and
# the two runs' losses are printed side by side. Timings under emulation measure nothing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
A=${ARM_ROOT:-/tmp/arm}
log=${1:-$repo/bench/results/aarch64-qemu-$(date +%F).log}
start=$SECONDS

if [ ! -x "$A/run.sh" ]; then
  echo "setting up $A (bench/aarch64_setup.sh; its output goes to $A/setup.log)"
  mkdir -p "$A" && ARM_ROOT=$A bash "$repo/bench/aarch64_setup.sh" > "$A/setup.log" 2>&1
fi
setup_s=$((SECONDS - start))

run() { printf '\n$ %s\n' "$*"; "$@"; }  # each command as run, then its output
exec > >(tee "$log") 2>&1
echo "date:    $(date -u '+%F %T UTC')"
echo "host:    $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(. /etc/os-release && echo "$PRETTY_NAME")"
echo "qemu:    $(qemu-aarch64-static --version | head -1), -cpu neoverse-n1"
echo "cross:   $(aarch64-linux-gnu-g++ --version | head -1)"
echo "guest:   $("$A/run.sh" -c 'import platform, torch; print(platform.machine(), "Python", platform.python_version(), "torch", torch.__version__)')"
echo "fastgpt: $repo at commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "setup:   $setup_s s (bench/aarch64_setup.sh into $A, or already there)"
echo "Every timing below is of an emulated CPU on a shared host: none is a measurement."

echo -e "\n== 1. Cross-compile fastgpt._C: setup.py's flags (torch's extension flags use -std=c++20)"
torch_dir=$A/site/torch
cxxflags=(-O3 -ffp-contract=fast -fopenmp -fPIC -std=c++20 -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H
          -I"$torch_dir/include" -I"$torch_dir/include/torch/csrc/api/include"
          -I"$A/sysroot/usr/include/python3.11" -idirafter "$A/sysroot/usr/include")
rm -rf "$A/build" && mkdir -p "$A/build"
pids=()
for source in "$repo"/csrc/*.cpp; do
  run aarch64-linux-gnu-g++ "${cxxflags[@]}" -c "$source" -o "$A/build/$(basename "$source" .cpp).o" & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

echo -e "\n== 2. An importable fastgpt for the guest: fastgpt/, kernels/ as fastgpt.kernels, the aarch64 _C"
rm -rf "$A/pkg" && mkdir -p "$A/pkg"
cp -r "$repo/fastgpt" "$A/pkg/fastgpt" && cp -r "$repo/kernels" "$A/pkg/fastgpt/kernels"
find "$A/pkg" -name __pycache__ -prune -exec rm -rf {} +
so=$A/pkg/fastgpt/_C.cpython-311-aarch64-linux-gnu.so
# libgomp: the cross toolchain's at link time; at run time torch's own libgomp.so.1 (same soname)
run aarch64-linux-gnu-g++ -shared -fopenmp "$A"/build/*.o -o "$so" -L"$torch_dir/lib" -lc10 -ltorch -ltorch_cpu -ltorch_python
run file "$so"
printf '\n$ readelf -d %s | grep NEEDED\n' "$so" && readelf -d "$so" | grep NEEDED
echo "The instruction-set copies of the kernels in it (namespaces of its symbols), and any x86 name:"
aarch64-linux-gnu-nm -C "$so" | grep -o 'fastgpt::[a-z0-9_]*::' | sort | uniq -c
x86_names=$(aarch64-linux-gnu-nm -C "$so" | grep -c -E 'avx|_mm[0-9]*_|__m(128|256|512)' || true)
echo "  $x86_names symbols name AVX or x86 intrinsics"
[ "$x86_names" = 0 ]

echo -e "\n== 3. Under QEMU, from $A, with PYTHONPATH=$A/pkg"
cd "$A"
export PYTHONPATH=$A/pkg
run "$A/run.sh" -m fastgpt.info
run "$A/run.sh" "$repo/bench/aarch64_check.py"
train=(-m fastgpt.train --preset cpu --n-layer 2 --n-embd 64 --n-head 4 --block-size 32 --batch-size 8
       --max-iters 10 --eval-interval 5 --eval-iters 2 --log-interval 1 --attention cpp)
rm -rf "$A/train-aarch64"
run "$A/run.sh" "${train[@]}" --out-dir "$A/train-aarch64"
run cat "$A/train-aarch64/metrics.jsonl"
runs=("$A/train-aarch64/metrics.jsonl")
if [ -n "${HOST_PYTHON:-}" ]; then
  echo -e "\n== 4. The same training on the host (x86-64), for comparison"
  rm -rf "$A/train-host"
  run env -u PYTHONPATH "$HOST_PYTHON" "${train[@]}" --out-dir "$A/train-host"
  runs+=("$A/train-host/metrics.jsonl")
fi
python3 - "${runs[@]}" <<'EOF'
import json, sys
runs = [[json.loads(line) for line in open(path)] for path in sys.argv[1:]]
print("\niter  train / val loss: " + "  |  ".join(("aarch64 (QEMU)", "x86-64 host")[:len(runs)]))
for rows in zip(*runs):
    print(f"{rows[0]['iter']:>4}  " + "  |  ".join(f"{r['train_loss']:.6f} / {r['val_loss']:.6f}" for r in rows))
first, last = runs[0][0], runs[0][-1]
assert last["train_loss"] < first["train_loss"] and last["val_loss"] < first["val_loss"], "the loss did not fall"
print("the aarch64 run's loss falls")
if len(runs) > 1:
    gap = max(abs(a[k] - b[k]) for a, b in zip(*runs) for k in ("train_loss", "val_loss"))
    print(f"largest difference between the aarch64 and x86-64 losses: {gap:.1e}")
EOF
echo -e "\ntotal: $((SECONDS - start)) s (setup $setup_s s)"
