"""Fixed-noise sample grid per epoch: the same noise every epoch, so progress and mode collapse show.

2D samples show (image | thresholded label). 3D samples show the mid axial slice of image and label and
the axial maximum-intensity projections (MIP over z, the last axis) of both: the label MIP is what shows
disconnected vessel fragments (the 3D paper's SN-MP failure), which a single slice hides.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.run_manifest import run_dir

CAPTIONS = {4: "image | label", 5: "mid axial slice: image | label; axial MIP: image | label"}


def sample_panels(raw: torch.Tensor, threshold: float) -> np.ndarray:
    """(N, 2, H, W) → (N, 2, H, W) [image in [0, 1], label > threshold]; (N, 2, H, W, D) → (N, 4, H, W)
    [mid-z image, mid-z label, image MIP over z, label MIP over z]."""
    if raw.ndim not in (4, 5) or raw.shape[1] != 2:
        raise ValueError(f"callbacks/sample_grid.py: expected (N, 2, H, W) or (N, 2, H, W, D) samples, got {tuple(raw.shape)}")
    images = (raw[:, 0].float().clamp(-1, 1) + 1) / 2
    labels = (raw[:, 1] > threshold).float()
    if raw.ndim == 5:
        mid = raw.shape[-1] // 2
        return torch.stack([images[..., mid], labels[..., mid], images.amax(-1), labels.amax(-1)], 1).cpu().numpy()
    return torch.stack([images, labels], 1).cpu().numpy()


def pair_grid(raw: torch.Tensor, threshold: float, gap: int = 2) -> np.ndarray:
    """Generator output (N, 2, H, W) or (N, 2, H, W, D) → one gray image in [0, 1], one cell per sample holding
    the panels of `sample_panels` side by side.

    Hand-tiled with numpy because torchvision's make_grid is not installable on every machine (no CPU build here).
    """
    panels = sample_panels(raw, threshold)
    n, p, h, w = panels.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell_w = p * w + (p - 1) * gap
    grid = np.full((rows * (h + gap) + gap, cols * (cell_w + 2 * gap) + gap), 0.5, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (h + gap), gap + c * (cell_w + 2 * gap)
        for k in range(p):
            grid[y : y + h, x + k * (w + gap) : x + k * (w + gap) + w] = panels[i, k]
    return grid


class SampleGridCallback(Callback):
    """Saves `<log_dir>/samples/epoch_XXXX.png` and logs it to loggers with `log_image` (W&B), rank zero only.

    Needs a module with `sample_grid() -> (N, 2, H, W[, D])` and `label_threshold` (any `GANModule`). The grid
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

        raw = pl_module.sample_grid()
        grid = pair_grid(raw, float(pl_module.label_threshold))
        out.parent.mkdir(parents=True, exist_ok=True)
        imsave(out, grid, cmap="gray", vmin=0.0, vmax=1.0)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples/fixed_noise", images=[str(out)], step=trainer.global_step,
                                 caption=[f"epoch {trainer.current_epoch}: {CAPTIONS[raw.ndim]}"])  # fmt: skip
