"""Cohort reader: find patients (folder layout or cohort.csv) and load their NIfTI volumes with validation.

Validation is strict on purpose: a silently resampled, cast or mis-paired volume corrupts every patch and
metric downstream without any visible failure, so every problem raises `CohortError` naming the file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    from datamodules.preprocess import VolumePrep

#: Affines of image, label and brain mask must agree to this absolute tolerance (mm); header round-off of
#: float32 qform/sform stays far below it, a real misregistration or flip does not.
AFFINE_ATOL = 1e-3

IMAGE_NAMES = ("image.nii.gz", "image.nii")
LABEL_NAMES = ("label.nii.gz", "label.nii")
MASK_NAMES = ("brain_mask.nii.gz", "brain_mask.nii")
MANIFEST_NAME = "cohort.csv"
MANIFEST_COLUMNS = ("patient_id", "image", "label", "brain_mask")


class CohortError(ValueError):
    """Bad input data; the message names the file and the problem."""


@dataclass(frozen=True)
class PatientRecord:
    """A patient's files; `prep` (set by the DataModule, not part of the files) is the resampling / skull
    stripping `load_patient` applies (`datamodules.preprocess`)."""

    patient_id: str
    image: Path
    label: Path
    brain_mask: Path | None = None
    prep: VolumePrep | None = None

    def files(self) -> dict[str, Path]:
        out = {"image": self.image, "label": self.label}
        if self.brain_mask is not None:
            out["brain_mask"] = self.brain_mask
        return out


@dataclass
class PatientVolume:
    patient_id: str
    image: np.ndarray  # float32 (x, y, z), raw intensities
    label: np.ndarray  # uint8 (x, y, z) in {0, 1}
    brain_mask: np.ndarray | None  # bool (x, y, z) or None
    affine: np.ndarray  # (4, 4) float64
    spacing: tuple[float, float, float]
    image_path: str


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def has_cohort_files(root: str | Path) -> bool:
    """True if `root` holds a cohort.csv or at least one `<patient>/image.nii[.gz]`."""
    root = Path(root)
    if not root.is_dir():
        return False
    if (root / MANIFEST_NAME).is_file():
        return True
    return any(p.is_dir() and _first_existing(p, IMAGE_NAMES) for p in root.iterdir())


def _read_manifest(csv_path: Path) -> list[PatientRecord]:
    # utf-8-sig drops the byte-order mark Excel writes; skipinitialspace + strip accept "a, b, c" headers/rows.
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        reader.fieldnames = [name.strip() for name in (reader.fieldnames or [])]
        missing = [c for c in MANIFEST_COLUMNS[:3] if c not in (reader.fieldnames or [])]
        if missing:
            raise CohortError(f"{csv_path}: manifest lacks column(s) {missing}; expected {list(MANIFEST_COLUMNS)}")
        records = []
        for line_no, row in enumerate(reader, start=2):
            pid = (row.get("patient_id") or "").strip()
            if not pid:
                raise CohortError(f"{csv_path}:{line_no}: empty patient_id")
            paths = {}
            for col in ("image", "label", "brain_mask"):
                value = (row.get(col) or "").strip()
                if not value:
                    if col != "brain_mask":
                        raise CohortError(f"{csv_path}:{line_no}: patient {pid!r} has an empty {col} path")
                    paths[col] = None
                    continue
                path = Path(value)
                paths[col] = path if path.is_absolute() else (csv_path.parent / path)
            records.append(PatientRecord(pid, paths["image"], paths["label"], paths["brain_mask"]))
    return records


def _read_folders(root: Path) -> list[PatientRecord]:
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        image = _first_existing(folder, IMAGE_NAMES)
        label = _first_existing(folder, LABEL_NAMES)
        if image is None and label is None:
            continue  # not a patient folder
        if image is None:
            raise CohortError(f"{folder / IMAGE_NAMES[0]}: missing file (patient folder has a label but no image)")
        if label is None:
            raise CohortError(f"{folder / LABEL_NAMES[0]}: missing file (patient folder has an image but no label)")
        records.append(PatientRecord(folder.name, image, label, _first_existing(folder, MASK_NAMES)))
    return records


def discover_cohort(root: str | Path) -> list[PatientRecord]:
    """List the patients of a cohort, sorted by patient_id; checks files exist and ids are unique."""
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"{root}: cohort folder does not exist")
    manifest = root / MANIFEST_NAME
    records = _read_manifest(manifest) if manifest.is_file() else _read_folders(root)
    if not records:
        raise CohortError(f"{root}: no patients found (expected {MANIFEST_NAME} or <patient_id>/image.nii.gz folders)")
    seen: set[str] = set()
    for rec in records:
        if rec.patient_id in seen:
            where = manifest if manifest.is_file() else root
            raise CohortError(f"{where}: duplicate patient_id {rec.patient_id!r}")
        seen.add(rec.patient_id)
        for kind, path in rec.files().items():
            if not path.is_file():
                raise CohortError(f"{path}: missing file ({kind} of patient {rec.patient_id!r})")
    return sorted(records, key=lambda r: r.patient_id)


def _load_nifti(path: Path, kind: str) -> nib.spatialimages.SpatialImage:
    if not path.is_file():
        raise CohortError(f"{path}: missing file ({kind})")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise CohortError(f"{path}: cannot read {kind} as NIfTI ({exc})") from exc
    if len(img.shape) != 3:
        raise CohortError(f"{path}: {kind} must be a 3D volume, got {len(img.shape)}D shape {tuple(img.shape)}")
    return img


def _voxels(img: nib.spatialimages.SpatialImage, path: Path, kind: str) -> np.ndarray:
    """Read the voxels: nib.load reads only the header, so a truncated or corrupt .nii.gz fails here
    (EOFError, zlib.error, ...), and the error must still name the file."""
    try:
        if kind == "image":
            return np.asarray(img.get_fdata(dtype=np.float32))
        return np.asanyarray(img.dataobj)
    except Exception as exc:
        raise CohortError(f"{path}: cannot read the {kind} voxels (truncated or corrupt file? "
                          f"{type(exc).__name__}: {exc})") from exc


def _check_same_grid(ref: nib.spatialimages.SpatialImage, other: nib.spatialimages.SpatialImage,
                     ref_path: Path, path: Path, kind: str) -> None:
    if tuple(other.shape) != tuple(ref.shape):
        raise CohortError(f"{path}: {kind} shape {tuple(other.shape)} does not match image shape "
                          f"{tuple(ref.shape)} of {ref_path}")
    if not np.allclose(other.affine, ref.affine, atol=AFFINE_ATOL, rtol=0.0):
        raise CohortError(f"{path}: {kind} affine does not match the affine of {ref_path} "
                          f"(max difference {np.abs(other.affine - ref.affine).max():.4g})")


def _binary(img: nib.spatialimages.SpatialImage, path: Path, kind: str) -> np.ndarray:
    data = _voxels(img, path, kind)
    bad = (data != 0) & (data != 1)
    if bad.any():
        values = np.unique(data[bad])[:5].tolist()
        raise CohortError(f"{path}: {kind} is not binary: values other than 0/1 found, e.g. {values} "
                          f"(convert it to 0/1 explicitly; it is not cast silently)")
    return data.astype(np.uint8)


def load_patient(record: PatientRecord, prepared: bool = True) -> PatientVolume:
    """Load and validate one patient; image as float32, label as uint8 {0,1}, brain mask as bool.

    With `prepared` (default) the record's `prep` is applied (resampled to its target spacing, skull-stripped);
    `prepared=False` gives the native volume, e.g. to map predictions back onto it.
    """
    img = _load_nifti(record.image, "image")
    image = _voxels(img, record.image, "image")
    if not np.isfinite(image).all():
        n_bad = int((~np.isfinite(image)).sum())
        raise CohortError(f"{record.image}: image has {n_bad} NaN/Inf voxel(s)")

    lab_img = _load_nifti(record.label, "label")
    _check_same_grid(img, lab_img, record.image, record.label, "label")
    label = _binary(lab_img, record.label, "label")
    if not label.any():
        raise CohortError(f"{record.label}: label is empty (no vessel voxel)")

    mask = None
    if record.brain_mask is not None:
        mask_img = _load_nifti(record.brain_mask, "brain mask")
        _check_same_grid(img, mask_img, record.image, record.brain_mask, "brain mask")
        mask = _binary(mask_img, record.brain_mask, "brain mask").astype(bool)
        if not mask.any():
            raise CohortError(f"{record.brain_mask}: brain mask is empty")

    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    vol = PatientVolume(record.patient_id, image, label, mask, np.asarray(img.affine, dtype=np.float64),
                        spacing, str(record.image))  # type: ignore[arg-type]
    if prepared and record.prep is not None:
        from datamodules.preprocess import prepare_volume  # lazy: preprocess imports this module

        vol = prepare_volume(vol, record.prep)
    return vol
