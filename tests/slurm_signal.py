"""Test callback: at a fixed training batch, rank 0 asks SLURM to send the job's requeue signal to every task
(`scancel --signal=USR1 <job>`, what `--signal=USR1@T` does before a time limit) and waits until it has arrived, so
the pre-emption lands at the same batch on every run of tests/test_slurm.py."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.slurm_requeue import SlurmPreemption


class SignalJobAtBatch(Callback):
    def __init__(self, total_batch: int, timeout_s: float = 60.0) -> None:
        self.total_batch, self.timeout_s = total_batch, timeout_s

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if (trainer.fit_loop.epoch_loop.total_batch_idx + 1 != self.total_batch or not trainer.is_global_zero
                or int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0):
            return
        (watch,) = [cb for cb in trainer.callbacks if isinstance(cb, SlurmPreemption)]
        subprocess.run(["scancel", "--signal=USR1", os.environ["SLURM_JOB_ID"]], check=True)
        deadline = time.monotonic() + self.timeout_s
        while not watch.signalled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watch.signalled, "USR1 from scancel did not arrive"
