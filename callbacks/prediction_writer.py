"""Writes whole-volume predictions as NIfTI with the source affine, from test and predict runs.

2D and 3D nets alike: `SegmentationModule` returns whole (B, 1, X, Y, Z) volumes on the native grid either way.

Each rank writes the patients of its own batches; a patient a DistributedSampler padded onto two ranks is
written through a rank-specific temporary file and an atomic rename, so concurrent writes never interleave.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


def _np(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class NiftiPredictionWriter(BasePredictionWriter):
    """`<out_dir>/<patient_id>_prob.nii.gz` (float32) and `<patient_id>_pred.nii.gz` (uint8).

    Reads the dicts returned by `SegmentationModule.test_step` / `predict_step`:
    {"prob": (B,1,X,Y,Z), "pred": (B,1,X,Y,Z), "patient_id": [str], "affine": (B,4,4)}.

    Args:
        out_dir: target folder (created); None → `<test report folder>/predictions`, i.e. beside the module's
            per-patient CSV (its `report_dir`, else the trainer's log dir), so each run keeps its own predictions.
        write_prob: also write the probability map (large: float32 per voxel).
        on_test: write during `trainer.test` too, not only `trainer.predict`.
    """

    def __init__(self, out_dir: str | None = None, write_prob: bool = True, on_test: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.out_dir: Path | None = Path(out_dir) if out_dir is not None else None
        self.write_prob = write_prob
        self.on_test = on_test

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.out_dir is None:
            base = getattr(pl_module, "report_dir", None) or trainer.log_dir or trainer.default_root_dir
            self.out_dir = Path(base) / "predictions"

    def _save(self, array: np.ndarray, affine: np.ndarray, path: Path, rank: int) -> None:
        tmp = path.with_name(f".{path.name[:-len('.nii.gz')]}.rank{rank}.nii.gz")
        img = nib.Nifti1Image(array, affine)
        img.set_data_dtype(array.dtype)
        nib.save(img, tmp)
        os.replace(tmp, path)

    def write_outputs(self, outputs: dict[str, Any], rank: int = 0, threshold: float = 0.5) -> list[Path]:
        if not isinstance(outputs, dict) or "patient_id" not in outputs or "affine" not in outputs:
            raise ValueError("NiftiPredictionWriter: step outputs must be a dict with prob/pred, patient_id, affine")
        if self.out_dir is None:
            raise RuntimeError("NiftiPredictionWriter: out_dir is unset (it is resolved in setup, or pass out_dir)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prob = _np(outputs["prob"]) if "prob" in outputs else None
        pred = _np(outputs["pred"]) if "pred" in outputs else (prob >= threshold)
        affines = _np(outputs["affine"]).astype(np.float64).reshape(-1, 4, 4)
        written = []
        for i, pid in enumerate(outputs["patient_id"]):
            p = self.out_dir / f"{pid}_pred.nii.gz"
            self._save(np.asarray(pred[i, 0], dtype=np.uint8), affines[i], p, rank)
            written.append(p)
            if self.write_prob and prob is not None:
                p = self.out_dir / f"{pid}_prob.nii.gz"
                self._save(np.asarray(prob[i, 0], dtype=np.float32), affines[i], p, rank)
                written.append(p)
        return written

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.write_outputs(prediction, trainer.global_rank, getattr(pl_module, "threshold", 0.5))

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.on_test and outputs is not None:
            self.write_outputs(outputs, trainer.global_rank, getattr(pl_module, "threshold", 0.5))
