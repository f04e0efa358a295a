"""fastgpt.train: the schedule, the optimizer, what a run leaves in out_dir, and exact resume."""
import json
import math
import subprocess
import sys

import pytest
import torch

from clitools import SMALL_TEXT, TINY_RUN, run_module
from fastgpt import checkpoint
from fastgpt.training.config import PRESETS, TrainConfig, build_parser, config_from_args
from fastgpt.model import GPT, GPTConfig
from fastgpt.training.precision import Precision
from fastgpt.train import learning_rate, main
from fastgpt.training.run import make_optimizer


def train_in_process(out_dir, data, *flags):
    main([*TINY_RUN, "--data", str(data), "--out-dir", str(out_dir), *flags])


def test_constant_schedule():
    cfg = TrainConfig(learning_rate=3e-4)
    assert {learning_rate(it, cfg) for it in (0, 1, 2500, 4999)} == {3e-4}


def test_warmup_cosine_schedule():
    cfg = TrainConfig(**PRESETS["nanogpt-cpu"])  # warm-up 100, 1e-3 decaying to 1e-4 at 2000
    assert learning_rate(0, cfg) == pytest.approx(1e-3 / 101)
    assert learning_rate(99, cfg) == pytest.approx(1e-3 * 100 / 101)
    assert learning_rate(100, cfg) == pytest.approx(1e-3)
    assert learning_rate(1050, cfg) == pytest.approx((1e-3 + 1e-4) / 2)
    assert learning_rate(2000, cfg) == pytest.approx(1e-4)
    rates = [learning_rate(it, cfg) for it in range(100, 2001)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_optimizer_decays_matrices_only():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    cfg = TrainConfig(weight_decay=0.1, beta2=0.99)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert decayed["betas"] == (0.9, 0.99)


def test_presets_and_flags():
    parser = build_parser("test")
    cfg = config_from_args(parser.parse_args(["--preset", "nanogpt-cpu", "--n-layer", "2"]))
    assert (cfg.batch_size, cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.lr_schedule,
            cfg.grad_clip) == (12, 64, 128, 2, "cosine", 1.0)
    cfg = config_from_args(parser.parse_args(["--preset", "gpu"]))
    assert (cfg.batch_size, cfg.block_size, cfg.n_embd, cfg.n_head, cfg.n_layer, cfg.max_iters,
            cfg.eval_interval, cfg.grad_clip) == (64, 256, 384, 6, 6, 5000, 500, 10.0)
    assert config_from_args(parser.parse_args(["--preset", "cpu", "--grad-clip", "0"])).grad_clip == 0


def test_gpu_preset_trains_in_bfloat16_autocast_on_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # an H100
    cfg = config_from_args(build_parser("test").parse_args(["--preset", "gpu"]))
    assert Precision(cfg.dtype, torch.device("cuda")).dtype == torch.bfloat16
    assert Precision(cfg.dtype, torch.device("cpu")).dtype == torch.float32  # --device cpu
    cfg = config_from_args(build_parser("test").parse_args(["--preset", "gpu", "--dtype", "float32"]))
    assert Precision(cfg.dtype, torch.device("cuda")).dtype == torch.float32


def test_help_documents_every_flag(tmp_path):
    result = run_module("fastgpt.train", "--help", cwd=tmp_path)
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in help_text
    assert "--preset" in help_text and "nanogpt-cpu" in help_text


def test_cli_run_leaves_checkpoints_metrics_plot_and_prints_a_sample(tmp_path, data):
    out_dir = tmp_path / "out"
    result = run_module("fastgpt.train", *TINY_RUN, "--data", data, "--out-dir", out_dir,
                        "--max-iters", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "eval 4/4: train loss" in result.stdout and "attention  " in result.stdout
    assert "\r" not in result.stdout + result.stderr  # a log, not a redrawn progress bar
    sample = result.stdout.strip().splitlines()[-1]
    assert sample and set(sample) <= set(SMALL_TEXT)
    assert sorted(p.name for p in out_dir.iterdir()) == [".fastgpt.lock", "best.pt", "last.pt", "loss.png",
                                                         "metrics.jsonl"]
    assert (out_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["iter"] for row in rows] == [0, 2, 4]  # step 0: the untrained loss
    assert rows[0]["tokens_per_s"] is None
    assert all(math.isfinite(row["val_loss"]) and row["tokens_per_s"] > 0 for row in rows[1:])

    last = checkpoint.load_checkpoint(out_dir / "last.pt")
    assert last["iter"] == 4 and last["train_config"]["max_iters"] == 4
    assert {"torch", "cuda", "batches"} <= set(last["rng"]) and "state" in last["optimizer"]
    best = checkpoint.load_checkpoint(out_dir)
    assert best["best_val_loss"] == min(row["val_loss"] for row in rows)
    model, tokenizer = checkpoint.load(out_dir)
    assert rows[0]["val_loss"] == pytest.approx(math.log(tokenizer.vocab_size), abs=0.05)
    assert tokenizer.decode(tokenizer.encode("To be")) == "To be"
    assert not model.training and model.config.n_embd == 16


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_exact(tmp_path, data, optimizer):
    """8 steps in one go, or 4 steps then --resume to 8: the same losses and the same bits."""
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    train_in_process(whole, data, "--max-iters", "8", "--optimizer", optimizer)
    train_in_process(halves, data, "--max-iters", "3", "--optimizer", optimizer)  # stops between two evaluations
    main(["--resume", "--out-dir", str(halves), "--max-iters", "8"])

    def losses(out_dir):
        rows = (json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines())
        return {row["iter"]: (row["train_loss"], row["val_loss"]) for row in rows}

    assert losses(halves) == {**losses(whole), 3: losses(halves)[3]}
    a, b = (checkpoint.load_checkpoint(d / "last.pt") for d in (whole, halves))
    assert a["iter"] == b["iter"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    moments = dict(checkpoint.optimizer_tensors(b))
    assert moments and moments.keys() == dict(checkpoint.optimizer_tensors(a)).keys()
    for name, tensor in checkpoint.optimizer_tensors(a):
        assert torch.equal(tensor, moments[name]), name
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert torch.equal(a["rng"]["batches"]["generator"], b["rng"]["batches"]["generator"])


def test_resume_continues_the_saved_run_config(tmp_path, data):
    out_dir = tmp_path / "out"
    train_in_process(out_dir, data, "--max-iters", "2", "--learning-rate", "1e-3")
    main(["--resume", "--out-dir", str(out_dir), "--max-iters", "4", "--attention", "torch"])
    last = checkpoint.load_checkpoint(out_dir / "last.pt")
    assert last["train_config"]["learning_rate"] == 1e-3 and last["train_config"]["n_embd"] == 16
    assert last["iter"] == 4


def test_matplotlib_is_imported_only_to_draw_the_plot():
    """Start-up time: importing the training command does not import matplotlib."""
    code = "import sys, fastgpt.train; assert 'matplotlib' not in sys.modules, 'imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_target_val_loss_ends_the_run_at_the_evaluation_that_reaches_it(tmp_path, data, capsys):
    """A target above the untrained loss is reached at step 0; one below what a few steps reach
    lets every step run, and the line says it was not reached."""
    reached, missed = tmp_path / "reached", tmp_path / "missed"
    train_in_process(reached, data, "--max-iters", "6", "--target-val-loss", "100")
    assert "reached val loss 100.0 at step 0" in capsys.readouterr().out
    assert checkpoint.load_checkpoint(reached / "last.pt")["iter"] == 0
    train_in_process(missed, data, "--max-iters", "4", "--target-val-loss", "0.001")
    assert "did not reach val loss 0.001 in 4 steps" in capsys.readouterr().out
    assert checkpoint.load_checkpoint(missed / "last.pt")["iter"] == 4


def test_evaluation_scores_the_same_windows_in_fewer_calls(monkeypatch, data):
    """A batch a forward call, or many: the same mean loss."""
    from fastgpt import train
    from fastgpt.data.batches import RandomBatches, split
    ids = torch.tensor([ord(c) % 16 for c in SMALL_TEXT])
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8))
    batches = RandomBatches(split(ids, 8), 8, 4, 0, torch.device("cpu"))
    by_batch = {}
    for tokens in (1, 64, 1 << 20):  # 1 batch of 4 x 8 tokens a call, 2 (the last alone), all 7
        monkeypatch.setattr(train, "EVAL_TOKENS_PER_CALL", tokens)
        by_batch[tokens] = train.estimate_loss(model, batches, eval_iters=7)
    for losses in by_batch.values():
        assert losses == pytest.approx(by_batch[1], rel=1e-6)


def test_muon_takes_the_blocks_matrices_and_a_resume_keeps_the_optimizer(tmp_path, data):
    cfg = TrainConfig(optimizer="muon", n_embd=16, n_head=2, n_layer=2)
    model = GPT(cfg.model_config(vocab_size=10))
    muon, adamw = make_optimizer(model, cfg, torch.device("cpu")).optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in in_muon) == (name.startswith("blocks.") and p.dim() == 2), name
    out_dir = tmp_path / "out"
    train_in_process(out_dir, data, "--max-iters", "2", "--optimizer", "muon")
    result = run_module("fastgpt.train", "--resume", "--out-dir", out_dir, "--max-iters", "4",
                        "--optimizer", "adamw", cwd=tmp_path)
    assert result.returncode == 2 and "--optimizer adamw contradicts the checkpoint" in result.stderr
