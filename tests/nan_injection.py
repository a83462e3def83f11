"""Test helper: a callback that poisons chosen training batches with NaN (the real data path of a NaN cohort
or store, without depending on which loader check would refuse such data first)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class InjectNaN(Callback):
    def __init__(self, batches: list[int], key: str = "image", rank: int | None = None) -> None:
        """rank: poison only on this DDP global rank (None: every rank)."""
        self.batches = set(batches)
        self.key = key
        self.rank = rank
        self.seen = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.seen in self.batches and self.rank in (None, trainer.global_rank):
            batch[self.key].fill_(float("nan"))
        self.seen += 1
