"""bench/whole_run.py: how it splits a run's lines, and one smoke round of the lecture pair (two
tiny processes, seconds)."""
import json

import pytest

from bench import whole_run


def stamped(*lines):
    return [(float(t), text) for t, text in lines]


def test_fastgpt_lines_split_into_startup_steps_evaluations_and_end():
    lines = stamped(
        (1, "fastgpt train -> out (new run)"), (3, "  attention  cpp"),
        (4, "eval 0/20: train loss 4.2000, val loss 4.2100 (6.07 bits/char), lr 0, ETA ?"),
        (5, "step 10/20: loss 3.0000, lr 1e-3, 1,000 tokens/s"),
        (5.5, "eval 10/20: train loss 2.9000, val loss 2.9500 (x), lr 1e-3"),
        (6.5, "step 20/20: loss 2.0000, lr 1e-3"),
        (7, "eval 20/20: train loss 1.8000, val loss 1.8800 (x), lr 1e-3"),
        (7.2, "a sample"))
    split = whole_run.split_timeline(lines, whole_run.parse_fastgpt, wall=8.0)
    assert split["startup_s"] == 3
    assert split["steps_s"] == pytest.approx(2.0)
    assert split["evals_s"] == pytest.approx(1 + 0.5 + 0.5)
    assert split["end_s"] == pytest.approx(1.0)
    assert (split["steps"], split["evals"]) == (20, 3)
    assert split["step_ms_median"] == pytest.approx(100)
    assert split["target_reached"] == {"iter": 20, "val_loss": 1.88, "at_s": 7.0}


def test_nanogpt_lines_count_from_zero_and_its_checkpoint_is_the_evaluations():
    lines = stamped(
        (2, "using fused AdamW: False"),
        (3, "step 0: train loss 4.1676, val loss 4.1649"),
        (3.1, "iter 0: loss 4.1700, time 100.00ms, mfu -100.00%"),
        (3.2, "iter 1: loss 4.0000, time 100.00ms, mfu -100.00%"),
        (4.2, "step 2: train loss 3.9000, val loss 3.9500"),
        (4.7, "saving checkpoint to out"),
        (4.8, "iter 2: loss 3.8000, time 1600.00ms, mfu 0.00%"))
    split = whole_run.split_timeline(lines, whole_run.parse_nanogpt, wall=5.0)
    assert split["startup_s"] == 2
    assert split["steps"] == 3
    assert split["steps_s"] == pytest.approx(0.3)
    assert split["evals_s"] == pytest.approx(1 + 1 + 0.5)
    assert split["val_losses"] == [[0, 4.1649], [2, 3.95]]
    assert split["target_reached"] is None


def test_steps_no_line_reported_are_taken_out_of_the_evaluation():
    lines = stamped((1, "x"), (2, "step 0: train loss 4.0, val loss 4.0"),
                    (3, "iter 10: loss 3.0, time 1000ms"), (4, "iter 20: loss 3.0, time 1000ms"),
                    (6, "step 25: train loss 2.0, val loss 2.0"))  # 5 steps unreported: 0.5 s
    split = whole_run.split_timeline(lines, whole_run.parse_lecture, wall=6.0)
    assert split["steps_s"] == pytest.approx(2.5)
    assert split["evals_s"] == pytest.approx(1 + 1.5)
    assert split["steps"] == 25


def test_cpu_slug():
    assert whole_run.cpu_slug("Intel(R) Xeon(R) Processor @ 2.80GHz") == "xeon"
    assert whole_run.cpu_slug("AMD EPYC 9B14 96-Core Processor") == "epyc"


def test_smoke_round_of_the_lecture_pair(tmp_path):
    out = tmp_path / "whole-run.json"
    report = whole_run.main(["--smoke", "--rounds", "1", "--pairs", "lecture", "--out", str(out)])
    assert json.loads(out.read_text())["cpu"] == report["cpu"]
    runs = {r["command"]: r for r in report["runs"]}
    assert set(runs) == {"fastgpt-cpu", "lecture-cpu"}
    for run in runs.values():
        assert run["rc"] == 0, run.get("tail")
        assert run["steps"] == 20 and run["evals"] == 3
        parts = run["startup_s"] + run["steps_s"] + run["evals_s"] + run["end_s"]
        assert parts == pytest.approx(run["wall_s"], abs=1e-6)
    assert "lecture" in report["summary"]["pairs"]
