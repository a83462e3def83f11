"""Write one patient in the cohort layout (docs/ARCHITECTURE.md): image, label, brain mask, same affine."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def ras_affine(spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """RAS+ axes with the given spacing, origin at the volume centre (scanner-like, no rotation)."""
    aff = np.diag([*map(float, spacing), 1.0])
    aff[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1) / 2 * np.asarray(spacing, dtype=np.float64)
    return aff


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.with_name(path.name + ".part.nii.gz")  # atomic: a crash never leaves a truncated volume
    nib.save(img, tmp)
    tmp.replace(path)


def write_patient(
    folder: Path, image: np.ndarray, label: np.ndarray, brain_mask: np.ndarray | None, affine: np.ndarray
) -> Path:
    """Image and mask first, label last: a present label marks a completely written patient."""
    folder.mkdir(parents=True, exist_ok=True)
    _save(np.asarray(image, dtype=np.float32), affine, folder / "image.nii.gz")
    if brain_mask is not None:
        _save(np.asarray(brain_mask > 0, dtype=np.uint8), affine, folder / "brain_mask.nii.gz")
    _save(np.asarray(label > 0, dtype=np.uint8), affine, folder / "label.nii.gz")
    return folder


def patient_complete(folder: Path) -> bool:
    """A patient counts as written once its label (written last) exists."""
    return (folder / "label.nii.gz").is_file() and (folder / "image.nii.gz").is_file()
