"""Tiny NIfTI cohorts for tests: a few bright straight tubes (the label) in a dim noisy head."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

TINY_SHAPE = (40, 40, 12)
TINY_SPACING = (0.5, 0.5, 0.7)


def tiny_affine(spacing: tuple[float, float, float] = TINY_SPACING) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = [-10.0, -12.0, 5.0]
    return aff


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), tiny_affine() if affine is None else affine), str(path))
    return path


def tiny_patient(shape: tuple[int, int, int] = TINY_SHAPE, seed: int = 0, n_tubes: int = 3
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image f32, label u8, brain_mask u8): tubes along z and x inside an ellipsoidal brain."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    c = (np.asarray(shape) - 1) / 2
    brain = (((x - c[0]) / (0.45 * shape[0])) ** 2 + ((y - c[1]) / (0.45 * shape[1])) ** 2
             + ((z - c[2]) / (0.6 * shape[2])) ** 2) <= 1
    label = np.zeros(shape, np.uint8)
    for t in range(n_tubes):
        px, py = rng.integers(shape[0] // 4, 3 * shape[0] // 4), rng.integers(shape[1] // 4, 3 * shape[1] // 4)
        if t % 2 == 0:  # tube along z
            label[(x - px) ** 2 + (y - py) ** 2 <= 2] = 1
        else:  # tube along x
            pz = rng.integers(min(2, shape[2] - 1), max(shape[2] - 2, min(2, shape[2] - 1) + 1))
            label[(y - py) ** 2 + (z - pz) ** 2 <= 1] = 1
    label &= brain.astype(np.uint8)
    image = (0.2 * brain + 0.02 * rng.standard_normal(shape) + 0.8 * label).astype(np.float32) * 100.0
    return image, label, brain.astype(np.uint8)


def write_tiny_cohort(root: str | Path, n_patients: int = 6, shape: tuple[int, int, int] = TINY_SHAPE,
                      with_brain_mask: bool = True, manifest: bool = False, seed: int = 0,
                      prefix: str = "p") -> Path:
    """Write a cohort in the folder layout (or, with manifest=True, files under data/ plus cohort.csv)."""
    root = Path(root)
    rows = []
    for i in range(n_patients):
        pid = f"{prefix}{i:03d}"
        image, label, brain = tiny_patient(shape, seed=seed * 1000 + i)
        folder = root / ("data" if manifest else pid)
        stem = f"{pid}_" if manifest else ""
        img_p = write_nifti(folder / f"{stem}image.nii.gz", image)
        lab_p = write_nifti(folder / f"{stem}label.nii.gz", label)
        mask_p = write_nifti(folder / f"{stem}brain_mask.nii.gz", brain) if with_brain_mask else None
        rows.append({"patient_id": pid, "image": img_p.relative_to(root), "label": lab_p.relative_to(root),
                     "brain_mask": mask_p.relative_to(root) if mask_p else ""})
    if manifest:
        with open(root / "cohort.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["patient_id", "image", "label", "brain_mask"])
            writer.writeheader()
            writer.writerows(rows)
    return root
