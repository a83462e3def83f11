"""Error maps of test patients (Kossen et al. 2021, Fig. 4): TP red, FP green, FN yellow over the image.

For each test patient, the `n_slices` axial slices with the most label voxels are drawn side by side and
written to `<report_dir>/error_maps/<patient_id>.png` (report_dir: `out_dir`, else the module's
`report_dir`, else the trainer's log dir). Each rank writes the patients of its own batches (through a
rank-specific temporary file and an atomic rename, as the prediction writer does); at the end of the test
epoch the written paths are gathered and rank zero logs them to every logger with `log_image` (W&B).

Panel layout (exact pixels, no figure margins, so the PNG can be read back): an axial slice (x, y) is shown
rotated by 90° (`np.rot90`: row r, column c ↔ voxel x = c, y = Y-1-r), the usual radiological view of
RAS-ordered arrays; panels are separated by `GAP` white columns. The image is scaled to [0, 1] per patient
between its 1st and 99.5th percentile and shown in grey where there is no error colour.

2D and 3D nets alike: `SegmentationModule` predicts whole volumes either way (axial slices or 3D sliding windows),
so the maps read the same (B, 1, X, Y, Z) outputs. The prediction and label are on the native grid; an image the
net saw on another grid (`data.target_spacing`) is resampled back onto it for display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer

TP_COLOUR = (1.0, 0.0, 0.0)  # red
FP_COLOUR = (0.0, 1.0, 0.0)  # green
FN_COLOUR = (1.0, 1.0, 0.0)  # yellow
GAP = 4


def pick_slices(label: np.ndarray, n: int) -> list[int]:
    """Indices (ascending) of the `n` axial slices (last axis) with most label voxels; ties → lower z."""
    counts = np.asarray(label > 0).reshape(-1, label.shape[-1]).sum(0)
    order = np.argsort(-counts, kind="stable")[: max(n, 0)]
    return sorted(int(z) for z in order)


def scale_image(image: np.ndarray) -> np.ndarray:
    """[0, 1] between the 1st and 99.5th percentile: a few bright vessels must not darken the brain."""
    lo, hi = np.percentile(image, [1.0, 99.5])
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def error_map_rgb(image: np.ndarray, label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(H, W) image in [0, 1], binary label and prediction → (H, W, 3) RGB: grey image, TP/FP/FN coloured."""
    lab, prd = np.asarray(label) > 0, np.asarray(pred) > 0
    rgb = np.repeat(np.asarray(image, dtype=np.float32)[..., None], 3, axis=-1)
    rgb[lab & prd] = TP_COLOUR
    rgb[~lab & prd] = FP_COLOUR
    rgb[lab & ~prd] = FN_COLOUR
    return rgb


def error_map_panels(image: np.ndarray, label: np.ndarray, pred: np.ndarray, n_slices: int = 3
                     ) -> tuple[np.ndarray, list[int]]:
    """(X, Y, Z) volumes → the tiled RGB picture of the chosen slices and their z indices."""
    slices = pick_slices(label, n_slices)
    scaled = scale_image(image)
    panels = [np.rot90(error_map_rgb(scaled[..., z], label[..., z], pred[..., z])) for z in slices]
    h = panels[0].shape[0]
    gap = np.ones((h, GAP, 3), dtype=np.float32)
    tiles = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(tiles, axis=1), slices


def _np(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _native_image(batch: dict[str, Any]) -> torch.Tensor:
    """The batch image on the label's (native) grid: resampled from `model_affine` when the net saw another grid."""
    image, label = batch["image"], batch["label"]
    if tuple(image.shape[2:]) == tuple(label.shape[2:]) or batch.get("model_affine") is None:
        return image
    from datamodules.preprocess import resample_to_grid

    return torch.stack([resample_to_grid(image[b], batch["model_affine"][b], batch["affine"][b], label.shape[2:])
                        for b in range(image.shape[0])])


class ErrorMapCallback(Callback):
    """Writes (and logs) one error-map PNG per test patient from `SegmentationModule.test_step` outputs.

    Args:
        n_slices: axial slices per patient, those with the most label voxels.
        out_dir: folder that receives `error_maps/`; default the module's `report_dir` or the log dir.
    """

    def __init__(self, n_slices: int = 3, out_dir: str | None = None) -> None:
        if n_slices < 1:
            raise ValueError(f"callbacks/error_maps.py: n_slices must be ≥ 1, got {n_slices}")
        self.n_slices = n_slices
        self.out_dir = out_dir
        self._written: list[tuple[str, str]] = []
        self._folder = Path(out_dir or ".") / "error_maps"

    def folder(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        base = self.out_dir or getattr(pl_module, "report_dir", None) or trainer.log_dir or trainer.default_root_dir
        return Path(base) / "error_maps"

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._written = []
        self._folder = self.folder(trainer, pl_module)  # every rank, once: trainer.log_dir broadcasts under DDP

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "pred" not in outputs:
            raise ValueError("callbacks/error_maps.py: test_step must return a dict with 'pred' and 'patient_id'")
        from matplotlib.image import imsave  # writes the array's pixels as they are: no figure, no backend

        folder = self._folder
        folder.mkdir(parents=True, exist_ok=True)
        image, label, pred = _np(_native_image(batch)), _np(batch["label"]), _np(outputs["pred"])
        for i, pid in enumerate(outputs["patient_id"]):
            picture, slices = error_map_panels(image[i, 0], label[i, 0], pred[i, 0], self.n_slices)
            path = folder / f"{pid}.png"
            tmp = folder / f".{pid}.rank{trainer.global_rank}.png"
            imsave(tmp, picture)
            os.replace(tmp, path)
            self._written.append((str(path), f"{pid}: z = {', '.join(map(str, slices))}; TP red, FP green, FN yellow"))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        written = list(self._written)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:  # every rank calls this
            gathered: list[list[tuple[str, str]]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, written)
            written = sorted({w for part in gathered for w in part})
        if not trainer.is_global_zero or not written:
            return
        paths, captions = zip(*written)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="test/error_maps", images=list(paths), caption=list(captions))
