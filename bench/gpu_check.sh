#!/usr/bin/env bash
# The GPU half of fastgpt proven in one run on a bare H100/H200 machine (torch and Triton installed,
# nothing to download): build and install the package, then three steps, each under its own timeout
# so that the whole run ends within about 8 minutes even if one hangs:
#   tests      pytest -m cuda: the Triton kernels against the float64 reference, their masks
#              against the C++ ones, torch.compile, a training step (on all cores with pytest-xdist)
#   attention  forward + backward against F.scaled_dot_product_attention (bench/gpu_check.py)
#   train      python -m fastgpt.train --preset gpu (5000 iterations), timed as a whole
# A failed step is recorded (its exit status, 124 after a timeout) and the next one still runs.
# Results: $OUT/gpu-YYYY-MM-DD.json (written by bench/gpu_check.py, also copied to bench/results/),
# $OUT/gpu_check.log and $OUT/tests.xml (pytest's junit XML).
#
# --dry-run: the same steps on the CPU at tiny sizes, with the Triton kernels in Triton's
# interpreter and the package as already installed; results in $OUT only. CI runs it
# (tests/test_gpu_check.py), so that the script is not what fails on the GPU.
#
#   OUT=out/gpu-check bash bench/gpu_check.sh [--dry-run]        (PYTHON: the interpreter, python3)
set -uo pipefail  # no -e: a failed step must not stop the others
cd "$(dirname "$0")/.."

case "${1:-}" in
    "") dry_run=0 ;;
    --dry-run) dry_run=1 ;;
    *) echo "usage: OUT=DIR bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
out=${OUT:-out/gpu-check}
day=$(date -u +%F)
if (( ! dry_run )) && ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "$python sees no CUDA GPU; on a CPU, run bash bench/gpu_check.sh --dry-run" >&2
    exit 2
fi
mkdir -p "$out" && out=$(cd "$out" && pwd)  # absolute: steps run in other folders
export PYTHONUNBUFFERED=1  # a step killed at its timeout leaves all it printed in the log
work=$(mktemp -d)  # the steps' own files: the training run's checkpoints are too large for $OUT
trap 'rm -rf "$work"' EXIT

# step NAME SECONDS COMMAND...: COMMAND under a timeout (SIGINT first, so that pytest still writes
# its XML and a training run its last evaluation; SIGKILL 15 s later); its exit status and
# microseconds go to the report.
steps=()
failed=0
step() {
    local name=$1 limit=$2 start=${EPOCHREALTIME/./}
    shift 2
    echo "=== $name (at most $limit s): $*"
    timeout -s INT -k 15 "$limit" "$@"
    local status=$?
    steps+=(--step "$name=$status,$(( ${EPOCHREALTIME/./} - start ))")
    (( status == 0 )) || failed=1
    echo "=== $name: exit $status"
}

run_all() {
    local tests=() train=() dry=()
    if (( dry_run )); then
        export TRITON_INTERPRET=1  # read when fastgpt is imported: the Triton kernels run on the CPU
        tests=(-k "training_step or cpp_mask")  # two of them: the interpreter is slow
        train=(--device cpu --max-iters 4 --eval-interval 2 --eval-iters 1 --batch-size 2
               --block-size 16 --n-layer 1 --n-head 2 --n-embd 16 --sample-chars 20)
        dry=(--dry-run)
    else
        # A regular install, as a user's: the C++ files compile in parallel (ninja, MAX_JOBS).
        step install 180 env MAX_JOBS="$(nproc)" "$python" -m pip install --no-build-isolation \
            --no-deps --no-index .
    fi
    # Triton compiles every autotuning config of every shape the tests meet, one core each.
    if "$python" -c "import xdist" 2>/dev/null; then
        tests+=(-n "$(nproc)")
    fi
    # Every step runs the installed fastgpt, not the checkout's fastgpt/ (no extension, no
    # fastgpt.kernels), which `python -m` would put first from the checkout's root: pytest runs
    # from tests/, training from the scratch folder, and bench/__init__.py moves the checkout last.
    step tests 120 env -C tests "$python" -m pytest -m cuda -q "${tests[@]}" --junitxml="$out/tests.xml"
    step attention 90 "$python" -m bench.gpu_check attention "$work/attention.json" "${dry[@]}"
    # After the attention step, whose lecture shapes leave the training run's kernels compiled in
    # Triton's cache (as a second run of a user's would find them).
    step train 90 env -C "$work" "$python" -m fastgpt.train --preset gpu --out-dir train "${train[@]}"
    "$python" -m bench.gpu_check report "$out/gpu-$day.json" --date "$day" --junit "$out/tests.xml" \
        --attention "$work/attention.json" --train-dir "$work/train" "${steps[@]}" "${dry[@]}" \
        || failed=1
    if (( ! dry_run )); then
        cp "$out/gpu-$day.json" bench/results/
    fi
    return "$failed"
}

run_all 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
