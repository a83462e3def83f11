"""Fixed-noise sample grid per epoch: the same noise every epoch, so progress and mode collapse show."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.run_manifest import run_dir


def pair_grid(raw: torch.Tensor, threshold: float, gap: int = 2) -> np.ndarray:
    """(N, 2, H, W) generator output → one gray image in [0, 1]: (image | thresholded label) per cell.

    Hand-tiled with numpy because torchvision's make_grid is not installable on every machine (no CPU build here).
    """
    if raw.ndim != 4 or raw.shape[1] != 2:
        raise ValueError(f"callbacks/sample_grid.py: expected (N, 2, H, W) samples, got {tuple(raw.shape)}")
    n, _, h, w = raw.shape
    images = ((raw[:, 0].float().clamp(-1, 1) + 1) / 2).cpu().numpy()
    labels = (raw[:, 1] > threshold).float().cpu().numpy()
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell_w = 2 * w + gap
    grid = np.full((rows * (h + gap) + gap, cols * (cell_w + 2 * gap) + gap), 0.5, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (h + gap), gap + c * (cell_w + 2 * gap)
        grid[y : y + h, x : x + w] = images[i]
        grid[y : y + h, x + w + gap : x + cell_w] = labels[i]
    return grid


class SampleGridCallback(Callback):
    """Saves `<log_dir>/samples/epoch_XXXX.png` and logs it to loggers with `log_image` (W&B), rank zero only.

    Needs a module with `sample_grid() -> (N, 2, H, W)` and `label_threshold` (any `GANModule`). The grid
    noise is a checkpointed buffer, so grids before and after a resume are comparable.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"callbacks/sample_grid.py: every_n_epochs must be ≥ 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        # Every rank: resolving the run folder may broadcast under DDP (trainer.log_dir is a collective).
        out = run_dir(trainer) / "samples" / f"epoch_{trainer.current_epoch:04d}.png"
        if not trainer.is_global_zero:
            return
        from matplotlib.image import imsave  # writes the PNG directly: no figure, no GUI backend

        grid = pair_grid(pl_module.sample_grid(), float(pl_module.label_threshold))
        out.parent.mkdir(parents=True, exist_ok=True)
        imsave(out, grid, cmap="gray", vmin=0.0, vmax=1.0)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples/fixed_noise", images=[str(out)], step=trainer.global_step,
                                 caption=[f"epoch {trainer.current_epoch}: image | label"])  # fmt: skip
