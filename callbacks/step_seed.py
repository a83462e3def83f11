"""Seeds the global torch RNG before every training batch from (seed, rank, epoch, batch index).

Dropout and anything else a training step draws from the global RNG then depends on the step alone, so a
run resumed from a checkpoint (even mid-epoch) draws what the uninterrupted run drew: Lightning checkpoints
do not hold the global RNG state, and loaders, validation and sanity checks consume it differently in a
resumed process. The GAN modules draw their noise from their own per-step generators (`step_rng`) already.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def step_seed(seed: int, rank: int, epoch: int, batch_idx: int) -> int:
    """A 63-bit seed from the step's coordinates (SeedSequence mixes them; nearby steps get unrelated seeds)."""
    entropy = [seed & 0xFFFFFFFF, rank, epoch, batch_idx]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


class StepSeeding(Callback):
    """See the module docstring. `seed` None → the `seed_everything` seed (PL_GLOBAL_SEED) or 0."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if self.seed is None else self.seed
        torch.manual_seed(step_seed(seed, trainer.global_rank, trainer.current_epoch, batch_idx))  # CPU and CUDA
