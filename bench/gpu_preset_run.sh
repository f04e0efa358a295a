#!/usr/bin/env bash
# The whole `--preset gpu` run (5000 iterations) with --attention triton and with --attention torch
# on one CUDA GPU: wall time and best val loss of each, appended as table rows to
# bench/results/gpu_preset.md. Usage: bash bench/gpu_preset_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'this run needs a CUDA GPU')"
stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
device=$(python -c "import torch; print(torch.cuda.get_device_name())")
results=bench/results/gpu_preset.md
if [ ! -f "$results" ]; then
    printf '| date | device | attention | wall time | best val loss |\n|---|---|---|---:|---:|\n' > "$results"
fi
for attention in triton torch; do
    out_dir="out/gpu-preset-$attention-${stamp//:/}"
    start=$(date +%s)
    python -m fastgpt.train --preset gpu --attention "$attention" --out-dir "$out_dir"
    seconds=$(( $(date +%s) - start ))
    best=$(python -c "import json, sys; print(min(json.loads(l)['val_loss'] for l in open(sys.argv[1])))" \
           "$out_dir/metrics.jsonl")
    printf '| %s | %s | %s | %s s | %.4f |\n' "$stamp" "$device" "$attention" "$seconds" "$best" \
        | tee -a "$results"
done
