"""Faults and bad input, as a careless or unlucky user meets them (issue 12): a run killed at any
moment can be resumed or restarted by the same command; one process per out dir; a user's files
are never replaced; non-finite values are refused and a diverging run stops; every problem is one
line and exit code 2, never a traceback. Tools run in-process (`main(argv)` under run_cli, as the
command runs it) where that is enough, in a subprocess where a real kill or a second process is
the point."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import fastgpt.data.text
from clitools import FAST_RUN, assert_refused, run_tool, snapshot
from fastgpt import checkpoint, convert, info, prepare, train
from fastgpt.training import metrics, run_dir, writer
from fastgpt.files import LOCK, atomic_write, claim_out_dir

# --- 1. A kill at any moment leaves a directory that the same command resumes or restarts ------


class Killed(BaseException):
    """What the patched writer raises: like SIGKILL, nothing after it runs (no except Exception)."""


def test_run_killed_between_best_and_last_restarts_and_cleans_up(tmp_path, data, capsys, monkeypatch):
    out_dir = tmp_path / "out"
    real_save = checkpoint.save

    def die_before_last(state, path):
        if path.name == checkpoint.LAST:
            (path.parent / f".{path.name}.killed.tmp").write_bytes(b"half")  # what a kill leaves
            raise Killed
        real_save(state, path)

    monkeypatch.setattr(checkpoint, "save", die_before_last)
    with pytest.raises(Killed):
        train.main([*FAST_RUN, "--data", str(data), "--out-dir", str(out_dir)])
    assert (out_dir / checkpoint.BEST).exists() and not (out_dir / checkpoint.LAST).exists()
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert_refused(run_tool("train", *FAST_RUN, "--data", data, "--out-dir", out_dir, "--resume",
                            capsys=capsys), "--resume needs")
    assert run_tool("train", *FAST_RUN, "--data", data, "--out-dir", out_dir, capsys=capsys)[0] == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [LOCK, *run_dir.RUN_FILES])  # the temporary file is gone
    assert [row["iter"] for row in metrics.read_metrics(out_dir / metrics.METRICS)] == [0, 2]


def test_run_killed_mid_metrics_line_resumes(tmp_path, data, capsys, monkeypatch):
    out_dir = tmp_path / "out"
    real_append = writer.append_metrics

    def die_mid_line(path, row):
        if row["iter"] == 2:
            with open(path, "a") as f:
                f.write('{"iter": 2, "train_lo')
            raise Killed
        real_append(path, row)

    monkeypatch.setattr(writer, "append_metrics", die_mid_line)
    with pytest.raises(Killed):
        train.main([*FAST_RUN, "--data", str(data), "--out-dir", str(out_dir), "--max-iters", "4"])
    monkeypatch.setattr(writer, "append_metrics", real_append)
    code, err = run_tool("train", *FAST_RUN, "--data", data, "--out-dir", out_dir, "--max-iters",
                         "4", "--resume", capsys=capsys)
    assert code == 0, err
    assert [row["iter"] for row in metrics.read_metrics(out_dir / metrics.METRICS)] == [0, 2, 4]


def test_convert_killed_mid_save_converts_again(tmp_path, capsys, monkeypatch):
    state_path, vocab_path = lecture_files(tmp_path)
    out_dir = tmp_path / "converted"

    def die_midway(obj, f):
        f.write(b"PK half")
        f.flush()
        (out_dir / ".best.pt.left.tmp").write_bytes(b"half")  # atomic_write's cleanup never ran
        raise Killed

    monkeypatch.setattr(checkpoint.torch, "save", die_midway)
    with pytest.raises(Killed):
        convert.main([str(state_path), "--vocab", str(vocab_path), "--out", str(out_dir)])
    monkeypatch.undo()
    assert run_tool("convert", state_path, "--vocab", vocab_path, "--out", out_dir, capsys=capsys)[0] == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([LOCK, checkpoint.BEST])


def kill_when(command: list[str], env: dict, happened) -> None:
    """Start `command` and SIGKILL it the moment `happened()` is true (polled every millisecond)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and not happened():
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("moment", ["temporary file", "loss.png"])  # the others: monkeypatched above
def test_sigkill_during_the_first_checkpoint_leaves_a_restartable_run(tmp_path, data, moment):
    """Real kills of a real run, inside its first evaluation's writes."""
    out_dir = tmp_path / "out"
    command = [sys.executable, "-m", "fastgpt.train", *FAST_RUN, "--data", str(data), "--out-dir",
               str(out_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if moment == "temporary file":
        kill_when(command, env, lambda: any(out_dir.glob(".*.tmp")))
    else:
        kill_when(command, env, lambda: (out_dir / moment).exists())
    resume = ["--resume"] if (out_dir / checkpoint.LAST).exists() else []
    rerun = subprocess.run([*command, *resume], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(out_dir.glob(".*.tmp"))
    assert checkpoint.load_checkpoint(out_dir / checkpoint.LAST)["iter"] == 2


# --- 2. One process at a time in an out dir ----------------------------------------------------


def test_second_process_is_refused_naming_the_holder(tmp_path, data, capsys):
    out_dir = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from fastgpt.files import claim_out_dir
        with claim_out_dir(Path({str(out_dir)!r}), "--out-dir", "train", ()):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        for tool, args in {"train": [*FAST_RUN, "--data", data, "--out-dir", out_dir],
                           "prepare": ["--data", data, "--out", out_dir]}.items():
            assert_refused(run_tool(tool, *args, capsys=capsys), "in use by another fastgpt process",
                           f"pid {holder.pid}")
        assert not (out_dir / checkpoint.LAST).exists()
    finally:
        holder.kill()
        holder.wait()
    # the OS released the dead holder's lock
    assert run_tool("train", *FAST_RUN, "--data", data, "--out-dir", out_dir, capsys=capsys)[0] == 0


def test_convert_is_refused_while_another_process_holds_the_dir(tmp_path, capsys):
    state_path, vocab_path = lecture_files(tmp_path)
    out_dir = tmp_path / "converted"
    with claim_out_dir(out_dir, "--out", "convert", ()):
        assert_refused(run_tool("convert", state_path, "--vocab", vocab_path, "--out", out_dir,
                                capsys=capsys), "in use by another fastgpt process", f"pid {os.getpid()}")
    assert not (out_dir / checkpoint.BEST).exists()


# --- 3. A user's files are never replaced -------------------------------------------------------


def test_users_loss_png_is_not_replaced(tmp_path, data, capsys):
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / "loss.png").write_bytes(b"my plot")
    before = snapshot(out_dir)
    assert_refused(run_tool("train", *FAST_RUN, "--data", data, "--out-dir", out_dir, capsys=capsys),
                   "loss.png is in the way", "--out-dir")
    assert snapshot(out_dir) == before and not (out_dir / LOCK).exists()


def test_users_train_bin_is_not_replaced(tmp_path, data, capsys):
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / "train.bin").write_bytes(b"my ids")
    before = snapshot(out_dir)
    assert_refused(run_tool("prepare", "--data", data, "--out", out_dir, capsys=capsys),
                   "train.bin is in the way", "--out")
    assert snapshot(out_dir) == before


def test_unrelated_files_and_an_unfinished_dataset_are_fine(tmp_path, data, capsys, monkeypatch):
    out_dir = tmp_path / "data"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    monkeypatch.setattr(prepare, "write_meta", lambda out, meta: (_ for _ in ()).throw(Killed))
    with pytest.raises(Killed):  # killed after train.bin and val.bin, before meta.json
        prepare.main(["--data", str(data), "--out", str(out_dir)])
    monkeypatch.undo()
    assert run_tool("prepare", "--data", data, "--out", out_dir, capsys=capsys)[0] == 0
    assert (out_dir / "notes.txt").read_text() == "mine"


# --- 4. Non-finite values -----------------------------------------------------------------------

TRAIN_FLOATS = ("--learning-rate", "--min-lr", "--weight-decay", "--beta1", "--beta2",
                "--grad-clip", "--dropout")


@pytest.mark.parametrize("flag", TRAIN_FLOATS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_train_float_flags_must_be_finite(tmp_path, data, capsys, flag, value):
    assert_refused(run_tool("train", *FAST_RUN, "--data", data, "--out-dir", tmp_path / "o",
                            f"{flag}={value}", capsys=capsys), flag)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags", [["--temperature", "inf"], ["--temperature", "nan"],
                                   ["--temperature", "1e-30"], ["--temperature", "5e-324"],
                                   ["--top-p", "nan"], ["--top-p", "inf"]])
def test_sampling_floats_must_be_finite_and_sane(finished_run, capsys, flags):
    out_dir, _ = finished_run
    assert_refused(run_tool("sample", "--out-dir", out_dir, "--device", "cpu",
                            "--max-new-tokens", "5", *flags, capsys=capsys), flags[0])


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, data, capsys):
    out_dir = tmp_path / "out"
    code, err = run_tool("train", *FAST_RUN, "--data", data, "--out-dir", out_dir, "--max-iters",
                         "4", "--learning-rate", "1e30", "--grad-clip", "0", capsys=capsys)
    assert_refused((code, err), "diverged", "--learning-rate")
    last = checkpoint.load_checkpoint(out_dir / checkpoint.LAST)
    assert last["iter"] == 0
    assert all(torch.isfinite(t).all() for t in last["model"].values())


# --- 5. One line instead of a traceback ---------------------------------------------------------


def test_out_dir_that_is_a_file_is_refused_before_any_work(tmp_path, data, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for tool, args in {"train": [*FAST_RUN, "--data", data, "--out-dir", a_file],
                       "prepare": ["--data", data, "--out", a_file]}.items():
        assert_refused(run_tool(tool, *args, capsys=capsys), "is a file")
    assert_refused(run_tool("train", *FAST_RUN, "--data", data, "--out-dir", a_file / "sub",
                            capsys=capsys), "cannot be made")
    state_path, vocab_path = lecture_files(tmp_path)
    assert_refused(run_tool("convert", state_path, "--vocab", vocab_path, "--out", a_file,
                            capsys=capsys), "is a file")
    assert a_file.read_text() == "x"


def test_unreadable_data_is_one_line(tmp_path, data, capsys, monkeypatch):
    def denied(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fastgpt.data.text, "open", denied, raising=False)  # root reads every file: patch instead
    assert_refused(run_tool("train", *FAST_RUN, "--data", data, "--out-dir", tmp_path / "o",
                            capsys=capsys), "cannot read", "Permission denied")


@pytest.mark.parametrize("flags, fragment", [
    (["--n-embd", str(2**20), "--n-head", "1"], "needs at least"),
    (["--batch-size", str(10**12)], "needs at least"),
    (["--n-layer", str(10**9)], "needs at least"),
    (["--seed", str(2**64)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--device", "meta"], "--device"),
    (["--device", "bogus"], "--device"),
    (["--device", "cuda:3"], "--device"),
])
def test_train_sizes_seeds_and_devices(tmp_path, data, capsys, flags, fragment):
    assert_refused(run_tool("train", *FAST_RUN, "--data", data, "--out-dir", tmp_path / "o",
                            *flags, capsys=capsys), fragment)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, fragment", [
    (["--seed", str(2**64)], "--seed"),
    (["--num-samples", str(10**12)], "needs at least"),
    (["--max-new-tokens", str(10**15)], "needs at least"),
    (["--device", "meta"], "--device"),
    (["--device", "cuda:3"], "--device"),
])
def test_sample_sizes_seeds_and_devices(finished_run, capsys, flags, fragment):
    assert_refused(run_tool("sample", "--out-dir", finished_run[0], *flags, capsys=capsys), fragment)


def test_damaged_metrics_on_resume_is_refused_at_start(tmp_path, finished_run, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for p in finished_run[0].iterdir():
        (out_dir / p.name).write_bytes(p.read_bytes())
    (out_dir / metrics.METRICS).write_text('{"iter": 0, "train_loss": 1, "val_loss": 1}\nnot json\n{}\n')
    before = snapshot(out_dir)
    assert_refused(run_tool("train", *FAST_RUN, "--data", finished_run[1], "--out-dir", out_dir,
                            "--resume", "--max-iters", "4", capsys=capsys), "line 2 is damaged")
    assert snapshot(out_dir) == before


@pytest.mark.parametrize("tamper", ["iter", "optimizer", "model_config", "rng"])
def test_tampered_checkpoint_on_resume(tmp_path, finished_run, capsys, tamper):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ckpt = checkpoint.load_checkpoint(finished_run[0] / checkpoint.LAST)
    ckpt[tamper] = {"iter": "two", "optimizer": {"state": {}, "param_groups": [{"x": 1}]},
                    "model_config": {"n_embd": "wide"}, "rng": {"torch": "x"}}[tamper]
    checkpoint.save(ckpt, out_dir / checkpoint.LAST)
    assert_refused(run_tool("train", *FAST_RUN, "--data", finished_run[1], "--out-dir", out_dir,
                            "--resume", "--max-iters", "4", capsys=capsys), "damaged")


@pytest.mark.parametrize("tamper", [lambda m: m.update(vocab_size=10**12),
                                    lambda m: m["train"].update(tokens=-5),
                                    lambda m: m.update(tokenizer={"kind": "char", "itos": 5})])
def test_tampered_meta_json(tmp_path, data, capsys, tamper):
    dataset = tmp_path / "ds"
    prepare.main(["--data", str(data), "--out", str(dataset)])
    meta = json.loads((dataset / "meta.json").read_text())
    tamper(meta)
    (dataset / "meta.json").write_text(json.dumps(meta))
    assert_refused(run_tool("train", *FAST_RUN, "--dataset", dataset, "--out-dir", tmp_path / "o",
                            capsys=capsys), "meta.json")


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s.update({"lm_head.bias": torch.empty(0)}), "is empty"),
    (lambda s: s.update({"lm_head.bias": s["lm_head.bias"].to_sparse()}), "not a dense one"),
    (lambda s: s.update({"lm_head.bias": torch.full_like(s["lm_head.bias"], float("nan"))}), "NaN"),
    (lambda s: s.update({"token_embedding_table.weight": torch.zeros(0, 24)}), "is empty"),
    (lambda s: s.update({"lm_head.bias": torch.zeros(65, dtype=torch.int64)}), "floating point"),
])
def test_convert_refuses_unusable_tensors(tmp_path, capsys, edit, fragment):
    state_path, vocab_path = lecture_files(tmp_path)
    state = torch.load(state_path)
    edit(state)
    torch.save(state, state_path)
    assert_refused(run_tool("convert", state_path, "--vocab", vocab_path, "--out", tmp_path / "c",
                            capsys=capsys), fragment)
    assert not (tmp_path / "c").exists()


# --- 6. Smaller defects -------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "f") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == mode


def test_data_and_dataset_together(tmp_path, data, capsys):
    assert_refused(run_tool("train", *FAST_RUN, "--data", data, "--dataset", tmp_path,
                            "--out-dir", tmp_path / "o", capsys=capsys),
                   "--data (a text file) and --dataset (a prepared directory) exclude each other")


def test_convert_vocab_errors_name_the_vocab_flag(tmp_path, capsys):
    state_path, vocab_path = lecture_files(tmp_path)
    code, err = run_tool("convert", state_path, "--vocab", tmp_path / "missing.txt", "--out",
                         tmp_path / "c", capsys=capsys)
    assert_refused((code, err), "--vocab")
    assert "--data" not in err


def test_info_refuses_unknown_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        info.main(["--bogus"])
    assert exit_info.value.code == 2


def lecture_files(tmp_path):
    from lecture_gpt import VOCAB_TEXT, lecture_model
    state_path, vocab_path = tmp_path / "lecture.pt", tmp_path / "input.txt"
    torch.save(lecture_model().state_dict(), state_path)
    vocab_path.write_text(VOCAB_TEXT)
    return state_path, vocab_path
