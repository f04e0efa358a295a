"""A training run's out_dir over its life: refused when it would overwrite a run or a user's files,
cleared of an unfinished first checkpoint, checked before a resume, and held by one process while
the run writes it (the rules every tool follows are fastgpt.files').

What a run writes in out_dir, in the order of each evaluation: best.pt (when val improves), a row
of metrics.jsonl, loss.png, and last.pt, which commits the evaluation. So a run can be resumed
once last.pt exists, and a resumed run drops the metrics rows after last.pt's iteration (written
again); before the first last.pt (a run killed in its first evaluation) out_dir holds at most
best.pt, metrics.jsonl and loss.png of an unfinished first checkpoint, which a plain rerun of the
command removes.
"""
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from fastgpt import checkpoint
from fastgpt.cli import flag
from fastgpt.errors import UserError
from fastgpt.files import check_not_users, claim_out_dir, is_fastgpt_dir
from fastgpt.training.config import TrainConfig
from fastgpt.training.metrics import METRICS, PLOT, check_metrics, keep_resumed_metrics

RUN_FILES = (checkpoint.BEST, METRICS, PLOT, checkpoint.LAST)
# Files that show a directory without the marker was written by fastgpt (runs older than it).
RUN_PROOF = (checkpoint.LAST, METRICS)
# The model's shape; a resumed run must keep it. (`attention` says how it runs and may change.)
MODEL_FIELDS = ("block_size", "n_layer", "n_head", "n_embd", "dropout")


def check_fresh_out_dir(out_dir: Path) -> None:
    """A new run never overwrites a run that can be resumed, nor a user's files."""
    if (out_dir / checkpoint.LAST).exists():
        existing = [name for name in RUN_FILES if (out_dir / name).exists()]
        raise UserError(f"{out_dir} already holds a run ({', '.join(existing)}); pass --resume to "
                        f"continue it, or --out-dir NEW_DIR to start another")
    check_not_users(out_dir, "--out-dir", RUN_FILES, RUN_PROOF)


def remove_unfinished_run(out_dir: Path) -> None:
    """What a new run killed before its first last.pt left (see RUN_FILES): fastgpt's files only,
    as check_fresh_out_dir proved."""
    if is_fastgpt_dir(out_dir, RUN_PROOF):
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)


def load_resume_checkpoint(out_dir: Path) -> dict:
    path = out_dir / checkpoint.LAST
    if not path.exists():
        raise UserError(f"--resume needs {path}, which does not exist; start a new run without "
                        f"--resume or pass the --out-dir of the run to continue")
    ckpt = checkpoint.load_checkpoint(path)
    checkpoint.check_finite(checkpoint.optimizer_tensors(ckpt), path)
    if "optimizer" not in ckpt:
        raise UserError(f"{path} holds weights but no training state, so it cannot be resumed; "
                        f"start a new run with another --out-dir")
    expected = {"iter": int, "best_val_loss": float, "train_config": dict, "model_config": dict,
                "rng": dict, "optimizer": dict}
    for key, kind in expected.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt[key], bool):
            raise UserError(f"{path} is damaged ({key} is {type(ckpt.get(key)).__name__}, not "
                            f"{kind.__name__}); resume from another copy or start a new run")
    if ckpt["iter"] < 0 or not all(isinstance(ckpt["model_config"].get(name), (int, float))
                                   for name in MODEL_FIELDS):
        raise UserError(f"{path} is damaged (its iteration or model config); resume from another "
                        f"copy or start a new run")
    return ckpt


def check_resume(cfg: TrainConfig, ckpt: dict, out_dir: Path) -> None:
    """Before a resumed run starts: no flag changes the model's shape, there are steps left to
    train, and metrics.jsonl can be kept (check_metrics)."""
    path = out_dir / checkpoint.LAST
    saved = ckpt["model_config"]
    for name in MODEL_FIELDS:
        if getattr(cfg, name) != saved[name]:
            raise UserError(f"{flag(name)} {getattr(cfg, name)} contradicts the checkpoint {path} "
                            f"({name} = {saved[name]}); drop the flag to resume, or start a new "
                            f"run with another --out-dir")
    saved_optimizer = ckpt["train_config"].get("optimizer", "adamw")
    if cfg.optimizer != saved_optimizer:
        raise UserError(f"--optimizer {cfg.optimizer} contradicts the checkpoint {path} (trained "
                        f"with {saved_optimizer}); drop the flag to resume, or start a new run "
                        f"with another --out-dir")
    if cfg.max_iters <= ckpt["iter"]:
        raise UserError(f"{path} has already trained {ckpt['iter']} iterations; pass a --max-iters "
                        f"above {ckpt['iter']} to train further")
    check_metrics(out_dir / METRICS, ckpt["iter"])


@contextmanager
def claim_run_dir(out_dir: Path, ckpt: Optional[dict]) -> Iterator[None]:
    """Hold out_dir for this run (fastgpt.files.claim_out_dir), then, now that no other process
    can change it, check it again and clear it: a new run removes an unfinished first checkpoint;
    a resumed one drops the metrics rows it will write again."""
    with claim_out_dir(out_dir, "--out-dir", "train", RUN_FILES, RUN_PROOF):
        if ckpt is None:
            check_fresh_out_dir(out_dir)
            remove_unfinished_run(out_dir)
        else:
            keep_resumed_metrics(out_dir / METRICS, ckpt["iter"])
        yield
