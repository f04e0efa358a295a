"""The train/val split of the token ids and random batches of windows from it."""
import math
from typing import Optional

import torch
from torch import Tensor

from fastgpt.errors import UserError

TRAIN_FRACTION = 0.9


def split(ids: Tensor, block_size: int, train_fraction: float = TRAIN_FRACTION) -> dict[str, Tensor]:
    """The first 90 % of the token ids for training, the rest for validation (as the lecture).
    Each split must hold at least one window of block_size + 1 tokens (input and target)."""
    n_train = int(train_fraction * len(ids))
    splits = {"train": ids[:n_train], "val": ids[n_train:]}
    if min(len(s) for s in splits.values()) < block_size + 1:
        # val, the smaller split, has n - floor(0.9 n) tokens: block_size + 1 once n > 10 block_size
        needed = math.floor(block_size / (1 - train_fraction)) + 1
        raise UserError(f"the text has {len(ids)} tokens, too short for block_size {block_size}: "
                        f"each split needs block_size + 1 tokens, so the text needs at least "
                        f"{needed}; use a longer text or a smaller --block-size")
    return splits


class RandomBatches:
    """Random windows of the train and val splits, drawn from a seeded generator.

    Training batches come from one generator whose state goes into every checkpoint, so a resumed
    run draws the same batches; evaluation batches come from a generator seeded afresh at each
    evaluation, so every evaluation scores the same windows and never moves the training draws.

    Data-parallel runs: every process draws the starts of the whole global batch (world_size ×
    batch_size windows) from the same seeded stream and keeps the share of its rank, so the
    processes see different windows, reproducibly, and together exactly those that one process
    with the global batch would see. Splits may hold any integer dtype (uint16 memory maps).
    """

    def __init__(self, splits: dict[str, Tensor], block_size: int, batch_size: int, seed: int,
                 device: torch.device, rank: int = 0, world_size: int = 1):
        self.splits = splits
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, split: str, generator: Optional[torch.Generator] = None,
              whole: bool = False) -> tuple[Tensor, Tensor]:
        """(x, y), each (batch_size, block_size) on the device, y is x shifted by one token: this
        process's share of the global batch, or with `whole` all world_size × batch_size rows."""
        data = self.splits[split]
        starts = torch.randint(len(data) - self.block_size, (self.world_size * self.batch_size,),
                               generator=generator or self.generator)
        if not whole:
            starts = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        positions = starts[:, None] + torch.arange(self.block_size)  # (rows, block_size)
        x, y = data[positions].long(), data[positions + 1].long()
        if self.device.type == "cuda":
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)

    def eval_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + 1)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
