"""Whole-volume dataset for test/predict (sliding-window inference needs the full volume and its affine)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.cohort import PatientRecord, load_patient


class VolumeDataset(Dataset):
    """One item per patient: {"image","label","brain_mask"} (1,X,Y,Z) float32, "has_brain_mask" bool,
    "patient_id", "affine" (4,4) f64, "spacing" (3,) f64, "image_path".

    A missing brain mask is given as ones with has_brain_mask=False, so default collate always sees the
    same keys and intracranial evaluation can tell "no mask" from "mask covers everything".
    """

    def __init__(self, records: Sequence[PatientRecord]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        vol = load_patient(self.records[index])
        has_mask = vol.brain_mask is not None
        mask = vol.brain_mask if has_mask else np.ones(vol.image.shape, dtype=bool)
        return {
            "image": torch.from_numpy(vol.image[None].astype(np.float32, copy=False)),
            "label": torch.from_numpy(vol.label[None].astype(np.float32)),
            "brain_mask": torch.from_numpy(mask[None].astype(np.float32)),
            "has_brain_mask": has_mask,
            "patient_id": vol.patient_id,
            "affine": torch.as_tensor(vol.affine, dtype=torch.float64),
            "spacing": torch.tensor(vol.spacing, dtype=torch.float64),
            "image_path": vol.image_path,
        }
