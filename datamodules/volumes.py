"""Whole-volume dataset for test/predict (sliding-window inference needs the full volume and its affine)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.cohort import PatientRecord, load_patient
from datamodules.preprocess import prepare_volume


class VolumeDataset(Dataset):
    """One item per patient: {"image","label","brain_mask"} (1,X,Y,Z) float32, "has_brain_mask" bool,
    "patient_id", "affine" (4,4) f64, "spacing" (3,) f64, "image_path", and the grid the net sees:
    "model_affine" (4,4), "model_spacing" (3,), "skull_strip" bool.

    "image" is the volume as the net sees it (the record's `prep`: resampled to the target spacing,
    skull-stripped), on the grid of "model_affine"; "label", "brain_mask", "affine" and "spacing" stay on the
    native grid, so predictions are mapped back (`datamodules.preprocess.resample_to_grid`) and scored there.
    With skull stripping the native label is cut to the brain mask, as in training. Without `prep` both grids
    are the same.

    A missing brain mask is given as ones with has_brain_mask=False, so default collate always sees the
    same keys and intracranial evaluation can tell "no mask" from "mask covers everything".
    """

    def __init__(self, records: Sequence[PatientRecord]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        vol = load_patient(record, prepared=False)
        seen = prepare_volume(vol, record.prep)
        skull_strip = bool(record.prep is not None and record.prep.skull_strip)
        if skull_strip:  # the net's volume checked the mask exists; cut the native label as training did
            vol = replace(vol, label=vol.label * vol.brain_mask)
        has_mask = vol.brain_mask is not None
        mask = vol.brain_mask if has_mask else np.ones(vol.image.shape, dtype=bool)
        return {
            "image": torch.from_numpy(seen.image[None].astype(np.float32, copy=False)),
            "label": torch.from_numpy(vol.label[None].astype(np.float32)),
            "brain_mask": torch.from_numpy(mask[None].astype(np.float32)),
            "has_brain_mask": has_mask,
            "patient_id": vol.patient_id,
            "affine": torch.as_tensor(vol.affine, dtype=torch.float64),
            "spacing": torch.tensor(vol.spacing, dtype=torch.float64),
            "image_path": vol.image_path,
            "model_affine": torch.as_tensor(seen.affine, dtype=torch.float64),
            "model_spacing": torch.tensor(seen.spacing, dtype=torch.float64),
            "skull_strip": skull_strip,
        }
