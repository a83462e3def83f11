"""Full-state checkpoints a killed run can resume from, written so that a kill mid-write loses nothing.

`ResumeCheckpoint` keeps `<run>/checkpoints/last.ckpt` (both optimisers, loop progress, data-loader position)
up to date at every epoch end and every `every_n_train_batches` training batches. Lightning 2.6's
`ModelCheckpoint(save_last=True, save_top_k=0)` writes `last.ckpt` only when training ends (it refreshes
"last" only after a top-k save), and its step trigger counts optimiser steps, which a GAN makes one or two
of per batch; hence this subclass, which reuses the rest (folder under the logger's version, state, paths).

`AtomicCheckpointIO` writes a checkpoint to a temporary file beside the target and renames it over the
target (`os.replace`, atomic on one filesystem). Lightning's `_atomic_save` writes through an fsspec
transaction whose temporary file lies in the system temp folder; when that is another filesystem (node-local
/tmp, checkpoints on a network drive) the final move is a copy into the target, which a kill can cut short.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to `.<name>.tmp-<pid>` in the target's folder, fsync, then rename over the target.

    Temporary files left by a killed earlier write to the same target are removed first.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO.save_checkpoint takes no storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        for orphan in target.parent.glob(f".{target.name}.tmp-*"):
            orphan.unlink(missing_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


class ResumeCheckpoint(ModelCheckpoint):
    """`last.ckpt` with the full training state at every epoch end, every `every_n_train_batches` batches
    (None: epoch ends only) and at the end of training; see the module docstring.

    Args:
        dirpath: folder of `last.ckpt`; None → `<logger save_dir>/<name>/<version>/checkpoints`, as ModelCheckpoint.
        every_n_train_batches: also save after every this many training batches (counted over the whole run).
    """

    def __init__(self, dirpath: _PATH | None = None, every_n_train_batches: int | None = None) -> None:
        if every_n_train_batches is not None and every_n_train_batches < 1:
            raise ValueError(
                f"ResumeCheckpoint: every_n_train_batches must be >= 1 or None, got {every_n_train_batches}"
            )
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_epochs=1)
        self.every_n_train_batches = every_n_train_batches

    @property
    def state_key(self) -> str:
        """Distinct per trigger, so a run may keep two of these (e.g. another folder saved more often)."""
        return self._generate_state_key(every_n_train_batches=self.every_n_train_batches)

    def _save_last(self, trainer: Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        n, epoch_loop = self.every_n_train_batches, trainer.fit_loop.epoch_loop
        # Not after an epoch's last batch: the epoch-end save follows, after that epoch's validation.
        if n and (epoch_loop.total_batch_idx + 1) % n == 0 and not epoch_loop.batch_progress.is_last_batch:
            self._save_last(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Every epoch, validated or not (an epoch's validation runs before this hook)."""
        self._save_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Nothing: the epoch-end save follows (ModelCheckpoint would save here)."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The final state (e.g. when max_steps stops training between two saves)."""
        if self._last_global_step_saved != trainer.global_step:
            self._save_last(trainer)

