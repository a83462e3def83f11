"""A callback that SIGKILLs its own `tofgan fit` process at a chosen training batch: a deterministic stand-in for
a job killed by the scheduler (no cleanup, no exception handlers, no final checkpoint)."""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class KillAtBatch(Callback):
    def __init__(self, total_batch: int) -> None:
        self.total_batch = total_batch

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if trainer.fit_loop.epoch_loop.total_batch_idx + 1 == self.total_batch:
            os.kill(os.getpid(), signal.SIGKILL)
