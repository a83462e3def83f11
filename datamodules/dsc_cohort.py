"""Reader of DSC-MRI perfusion cohorts (layout: /work/notes_tmp/perfusion_interface.md, README "simulate-dsc").

Every problem raises `CohortError` naming the file: a 3D file where the 4D series is expected, too few or too many
frames, NaN frames, a mask or map whose shape is not the series' spatial shape. The series is resampled in time to
a fixed frame count (linear, same acquisition span; the temporal networks need 64–127 frames), and the original TR
is recorded next to the resampled one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from datamodules.cohort import CohortError

MAP_NAMES = ("cbf", "cbv", "mtt", "tmax", "ttp")
#: Frame counts the temporal U-Net (6 stride-2 Conv3d) reduces to exactly one frame.
MIN_FRAMES, MAX_FRAMES = 64, 127
SERIES_NAME, MASK_NAME, META_NAME = "dsc.nii.gz", "brain_mask.nii.gz", "meta.json"


@dataclass
class DSCPatient:
    """One patient on the model's time grid. frames: (T, X, Y, Z) float32; maps: name -> (X, Y, Z) float32."""

    patient_id: str
    frames: np.ndarray
    mask: np.ndarray  # bool (X, Y, Z)
    pipeline: np.ndarray  # the chosen map as the clinical pipeline computed it (physical units)
    truth: np.ndarray  # the simulator's ground truth of the chosen map (physical units)
    tr_original: float  # seconds, as acquired
    tr: float  # seconds, after resampling to len(frames)
    te: float | None


def read_cohort_meta(root: Path) -> dict:
    path = root / "cohort.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CohortError(f"{path}: not valid JSON ({exc})") from exc


def list_patients(root: Path) -> list[str]:
    """Patient ids: those cohort.json lists (a simulated cohort), else every sub-folder holding dsc.nii.gz."""
    if not root.is_dir():
        raise CohortError(f"{root}: no such cohort folder")
    listed = read_cohort_meta(root).get("patients")
    if listed:
        missing = [p for p in listed if not (root / str(p) / SERIES_NAME).is_file()]
        if missing:
            raise CohortError(f"{root / 'cohort.json'}: lists patients without {SERIES_NAME}: {missing[:5]}")
        return sorted(str(p) for p in listed)
    ids = sorted(p.name for p in root.iterdir() if (p / SERIES_NAME).is_file())
    if not ids:
        raise CohortError(f"{root}: no patient folder with {SERIES_NAME}")
    return ids


def resample_time(series: np.ndarray, frames: int) -> np.ndarray:
    """Linear resampling of axis 0 to `frames` samples spanning the same acquisition window (first to last frame)."""
    n = series.shape[0]
    if n == frames:
        return series
    pos = np.linspace(0.0, n - 1, frames)
    i0 = np.clip(np.floor(pos).astype(np.intp), 0, n - 2)
    w = (pos - i0).astype(np.float32).reshape((-1,) + (1,) * (series.ndim - 1))
    return series[i0] * (1 - w) + series[i0 + 1] * w


def _load(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise CohortError(f"{path}: missing")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for a damaged file
        raise CohortError(f"{path}: not a readable NIfTI ({exc})") from exc


def _spatial(path: Path, shape: tuple[int, ...], what: str) -> np.ndarray:
    img = _load(path)
    if tuple(img.shape) != shape:
        raise CohortError(f"{path}: {what} has shape {tuple(img.shape)}, but the DSC series' spatial shape is {shape}")
    arr = np.asarray(img.dataobj, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise CohortError(f"{path}: {what} holds {int((~np.isfinite(arr)).sum())} non-finite voxels")
    return arr


def _tr_te(folder: Path, img: nib.Nifti1Image) -> tuple[float, float | None]:
    """TR/TE from meta.json when present (the simulator writes it), else TR from the 4th header zoom."""
    meta_path = folder / META_NAME
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except ValueError as err:
        raise CohortError(f"{meta_path}: not valid JSON ({err})") from None
    tr = float(meta.get("TR", img.header.get_zooms()[3]))
    if not tr > 0:
        raise CohortError(f"{folder / SERIES_NAME}: TR is {tr} (4th zoom / meta.json): the time step must be > 0 s")
    te = meta.get("TE")
    return tr, (float(te) if te is not None else None)


def load_dsc_patient(root: Path, patient_id: str, target_map: str, frames: int | None,
                     min_source_frames: int = 40) -> DSCPatient:
    """Read and check one patient; `frames` None keeps the acquired frames (then they must be 64–127)."""
    folder = root / patient_id
    path = folder / SERIES_NAME
    img = _load(path)
    if img.ndim != 4:
        raise CohortError(f"{path}: expected a 4D DSC series (X, Y, Z, T), found a {img.ndim}D volume "
                          f"of shape {tuple(img.shape)}")
    n = img.shape[3]
    if frames is None and not MIN_FRAMES <= n <= MAX_FRAMES:
        raise CohortError(f"{path}: {n} frames; without resampling (frames: null) the series needs "
                          f"{MIN_FRAMES}–{MAX_FRAMES} frames (the temporal convolutions reduce only those to one)")
    if frames is not None and n < min_source_frames:
        raise CohortError(f"{path}: {n} frames, fewer than min_source_frames={min_source_frames}: "
                          f"too few to resample to {frames}")
    series = np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), 3, 0)
    bad = ~np.isfinite(series).reshape(n, -1).all(axis=1)
    if bad.any():
        raise CohortError(f"{path}: NaN/Inf in frames {np.flatnonzero(bad)[:10].tolist()}")
    shape = tuple(img.shape[:3])
    mask = _spatial(folder / MASK_NAME, shape, "brain mask") > 0
    pipeline = _spatial(folder / "pipeline" / f"{target_map}.nii.gz", shape, f"pipeline {target_map} map")
    truth_path = folder / "truth" / f"{target_map}.nii.gz"
    truth = _spatial(truth_path, shape, f"true {target_map} map") if truth_path.is_file() else \
        np.full(shape, np.nan, np.float32)  # real data have no truth; metrics against it are then NaN
    tr, te = _tr_te(folder, img)
    out = series if frames is None else resample_time(series, frames)
    tr_new = tr if frames is None else tr * (n - 1) / (frames - 1)
    return DSCPatient(patient_id, np.ascontiguousarray(out, dtype=np.float32), mask, pipeline, truth, tr, tr_new, te)
