"""bench/gpu_check.sh --dry-run: the GPU check's script on the CPU at tiny sizes (the Triton kernels
in Triton's interpreter, the C++ ones timed against SDPA, a few training steps of the gpu preset),
so that the script is not what fails on the day a GPU runs it. Its report has the GPU run's shape
and lands in $OUT only."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgpt.ops import cpu

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, run the check itself")
@pytest.mark.skipif(cpu.unsupported("cpu", torch.float32, 8) is not None,
                    reason="the dry run times the C++ kernels")
def test_dry_run_writes_the_report_in_out_only(tmp_path):
    results = sorted((ROOT / "bench" / "results").iterdir())
    # The script runs `python -m bench.gpu_check` from the checkout, as a user does (bench/ moves the
    # checkout after site-packages itself).
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("PYTHONSAFEPATH")
    run = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert sorted((ROOT / "bench" / "results").iterdir()) == results
    (report_path,) = tmp_path.glob("gpu-*.json")
    assert {p.name for p in tmp_path.iterdir()} == {report_path.name, "gpu_check.log", "tests.xml"}
    report = json.loads(report_path.read_text())
    assert report_path.name == f"gpu-{report['date']}.json"
    assert report["dry_run"] and report["device"] == "cpu" and report["torch"] == torch.__version__
    assert set(report["steps"]) == {"tests", "attention", "train"}  # no install in a dry run
    assert all(step["exit"] == 0 for step in report["steps"].values())
    assert report["tests_passed"] > 0 and report["tests_failed"] == 0
    preset = report["gpu_preset"]
    assert preset["iters"] == 4 and preset["seconds"] > 0 and preset["dtype"] == "float32"
    assert 0 < preset["val_loss"] < 5
    assert len(report["attention"]) == 2
    for row in report["attention"]:
        assert len(row["shape"]) == 4 and row["dtype"] == "float32" and row["error"] is None
        assert row["ours_ms"] > 0 and row["sdpa_ms"] > 0 and row["speedup"] > 0
    assert "| shape | dtype |" in run.stdout  # the summary table ends the log
