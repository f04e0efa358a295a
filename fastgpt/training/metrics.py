"""What a training run records of its evaluations: out_dir/metrics.jsonl, one JSON row per
evaluation, and out_dir/loss.png drawn from it.

A row is appended at each evaluation; a run resumed at an iteration keeps only the rows up to it
(the later ones are of an evaluation killed before its last.pt, and are written again).
"""
import json
from pathlib import Path

from fastgpt.errors import UserError
from fastgpt.files import DiskFull, atomic_write, is_disk_full

METRICS, PLOT = "metrics.jsonl", "loss.png"


def append_metrics(path: Path, row: dict) -> None:
    """One row at the end of metrics.jsonl. Not atomic: a line that a kill or a full disk cuts
    short has no newline, and the run that resumes drops it (resumed_metrics)."""
    line = json.dumps(row) + "\n"
    try:
        with open(path, "a") as f:
            f.write(line)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(path, len(line)) from None
        raise


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def resumed_metrics(path: Path, iteration: int) -> list[dict]:
    """The rows of metrics.jsonl a run resumed at `iteration` keeps: those of the evaluations
    up to it (not 0 itself, which a run resumed there evaluates again); later rows are of an
    evaluation killed before its last.pt. A last line without its newline is an append that a kill
    cut short and goes; any other damage is a UserError."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}); delete it to resume without the old "
                        f"metrics") from None
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines[:-1], 1):  # lines[-1]: after the last newline
        try:
            row = json.loads(line)
            assert isinstance(row, dict) and isinstance(row["iter"], int)
            assert all(isinstance(row[k], (int, float)) for k in ("train_loss", "val_loss"))
        except (ValueError, KeyError, TypeError, AssertionError):
            raise UserError(f"{path} line {number} is damaged; repair or delete that line (or the "
                            f"file) and resume again") from None
        if row["iter"] < iteration or row["iter"] == iteration > 0:
            rows.append(row)
    return rows


def check_metrics(path: Path, iteration: int) -> None:
    """A UserError now, before a resumed run starts, if it could not keep metrics.jsonl's rows."""
    resumed_metrics(path, iteration)


def keep_resumed_metrics(path: Path, iteration: int) -> None:
    """Rewrite metrics.jsonl (atomically) with the rows a run resumed at `iteration` keeps."""
    if path.exists():
        rows = resumed_metrics(path, iteration)
        with atomic_write(path) as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows).encode())


def plot_losses(metrics: list[dict], path: Path) -> None:
    """Train and val loss against iteration, as a PNG (matplotlib without a display; imported here
    because it takes longer to import than the rest of a run's start-up)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    iters = [row["iter"] for row in metrics]
    ax.plot(iters, [row["train_loss"] for row in metrics], label="train")
    ax.plot(iters, [row["val_loss"] for row in metrics], label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
