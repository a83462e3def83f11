"""TOF-MRA appearance model: tissue map + bright partial-volume vessels, bias field, Rician noise.

One model renders both simulated trees (sub-voxel occupancy from centrelines) and real vessel labels
(occupancy from a lightly blurred label), so simulated and label-driven cohorts share a look.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from simulation.anatomy import resize_linear, tissue_map
from simulation.nifti_io import write_patient
from simulation.profiles import StudyProfile, get_profile
from simulation.rasterize import SparseOccupancy
from simulation.seeding import patient_rng


def vessel_brightness(radius_mm: np.ndarray, travel_mm: np.ndarray, profile: StudyProfile) -> np.ndarray:
    """Inflow: blood saturates along its path through the slab, and slow flow in small vessels more so."""
    inflow = 1.0 - profile.inflow_decay * (1.0 - np.exp(-np.asarray(travel_mm) / profile.inflow_length_mm))
    small = np.clip((np.asarray(radius_mm) - 0.3) / 0.9, 0.0, 1.0)
    return (inflow * (1.0 - profile.small_vessel_dimming * (1.0 - small))).astype(np.float32)


def _poly2d(n0: int, n1: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    u = np.linspace(-1, 1, n0, dtype=np.float32)[:, None]
    v = np.linspace(-1, 1, n1, dtype=np.float32)[None, :]
    c = rng.normal(0.0, strength / 2, 5)
    return c[0] * u + c[1] * v + c[2] * u * v + c[3] * (u**2 - 1 / 3) + c[4] * (v**2 - 1 / 3)


def apply_bias(image: np.ndarray, profile: StudyProfile, rng: np.random.Generator) -> None:
    """Smooth multiplicative field (receive-coil shading) plus multi-slab boundary dips, in place.

    Built from three 2D quadratic log-fields broadcast over the third axis: smooth, cheap at full size.
    """
    nx, ny, nz = image.shape
    s = profile.bias_strength
    image *= np.exp(_poly2d(nx, ny, s, rng))[:, :, None]
    image *= np.exp(_poly2d(nx, nz, s, rng))[:, None, :]
    image *= np.exp(_poly2d(ny, nz, s, rng))[None, :, :]
    if profile.n_slabs > 1 and profile.slab_ripple > 0:
        zr = (np.arange(nz) + 0.5) / nz * profile.n_slabs % 1.0
        image *= (1.0 - profile.slab_ripple * (2.0 * np.abs(zr - 0.5)) ** 2).astype(np.float32)[None, None, :]


def compose_tof(
    tissue: np.ndarray, vessels: SparseOccupancy, profile: StudyProfile, rng: np.random.Generator
) -> np.ndarray:
    """Mix vessels into the tissue map by occupancy, then bias, Rician noise and scanner scaling."""
    image = np.ascontiguousarray(tissue, dtype=np.float32)
    flat = image.reshape(-1)
    bright = vessel_brightness(vessels.radius, vessels.travel, profile)
    occ = vessels.occupancy
    flat[vessels.index] = flat[vessels.index] * (1.0 - occ) + bright * occ
    apply_bias(image, profile, rng)
    sigma = np.float32(profile.noise_sigma)
    # Rician magnitude |signal + complex Gaussian|, computed in place to keep memory at ~3 volumes.
    real = rng.standard_normal(image.shape, dtype=np.float32)
    real *= sigma
    real += image
    np.square(real, out=real)
    imag = rng.standard_normal(image.shape, dtype=np.float32)
    imag *= sigma
    np.square(imag, out=imag)
    real += imag
    del imag
    np.sqrt(real, out=real)
    real *= np.float32(profile.vessel_intensity)
    return real


def derive_brain_mask(label: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Brain mask for a label that came without one: an inflated ellipsoid fitted to the vessel cloud.

    A filled ellipsoid has variance a²/5 along each principal axis; arteries crowd at the base and the
    midline, so the fit is inflated to reach the cortex. The label is added so vessels stay inside.
    """
    lab = np.asarray(label) > 0
    if not lab.any():
        raise ValueError("cannot derive a brain mask from an empty vessel label")
    sp = np.asarray(spacing, dtype=np.float64)
    pts = np.argwhere(lab)[:: max(1, int(lab.sum()) // 50000)] * sp
    centre = pts.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov(pts.T))
    semi = 1.35 * np.sqrt(5.0 * np.maximum(evals, 1.0))
    q = evecs @ np.diag(1.0 / semi**2) @ evecs.T  # rho² = (p-c)ᵀ Q (p-c)
    # Evaluate the quadratic form on a ~2 mm grid and interpolate: a smooth field, 1/30 of the work.
    coarse = [max(2, int(np.ceil(n * s / 2.0))) for n, s in zip(lab.shape, sp)]
    ax = [(np.linspace(0, n - 1, m) * s - c).astype(np.float32) for n, m, s, c in zip(lab.shape, coarse, sp, centre)]
    rho2 = (q[0, 0] * ax[0] ** 2)[:, None, None] + (q[1, 1] * ax[1] ** 2)[None, :, None]
    rho2 = rho2 + (q[2, 2] * ax[2] ** 2)[None, None, :]
    rho2 = rho2 + (2 * q[0, 1] * np.outer(ax[0], ax[1]))[:, :, None]
    rho2 = rho2 + (2 * q[0, 2] * np.outer(ax[0], ax[2]))[:, None, :]
    rho2 = rho2 + (2 * q[1, 2] * np.outer(ax[1], ax[2]))[None, :, :]
    mask = resize_linear(rho2, lab.shape) < 1.0
    mask |= lab
    return mask.astype(np.uint8)


def _label_occupancy(lab: np.ndarray, spacing: Sequence[float]) -> SparseOccupancy:
    """Soft occupancy, calibre and a flow-path proxy for a binary label (work on its bounding box)."""
    nz = np.nonzero(lab)
    box = tuple(slice(max(int(i.min()) - 3, 0), min(int(i.max()) + 4, n)) for i, n in zip(nz, lab.shape))
    crop = lab[box]
    occ = np.maximum(ndimage.gaussian_filter(crop.astype(np.float32), 0.5), 0.85 * crop)
    edt = ndimage.distance_transform_edt(crop, sampling=spacing).astype(np.float32)
    radius = ndimage.grey_dilation(edt, size=(5, 5, 3))  # calibre of the vessel a voxel belongs to
    sel = occ > 0.02
    full_idx = np.stack([np.nonzero(sel)[k] + box[k].start for k in range(3)])
    sp = np.asarray(spacing, dtype=np.float32)
    # Flow-path proxy: arteries enter from below and spread outwards from the midline base.
    pos = full_idx.T.astype(np.float32) * sp
    base = np.array([np.mean(nz[0]), np.mean(nz[1]), nz[2].min()], dtype=np.float32) * sp
    travel = 20.0 + 1.5 * (pos[:, 2] - base[2]) + 0.6 * np.linalg.norm(pos[:, :2] - base[:2], axis=1)
    index = np.ravel_multi_index(tuple(full_idx), lab.shape).astype(np.int64)
    return SparseOccupancy(index, occ[sel], np.maximum(radius[sel], 0.3), travel.astype(np.float32))


def render_tof(
    label: np.ndarray,
    spacing: Sequence[float],
    profile: str | StudyProfile,
    rng: np.random.Generator,
    brain_mask: np.ndarray | None = None,
) -> np.ndarray:
    """TOF image (float32, same shape) over a given binary vessel label, e.g. a real IXI annotation."""
    prof = get_profile(profile)
    lab = np.asarray(label) > 0
    if lab.ndim != 3:
        raise ValueError(f"render_tof needs a 3D label, got shape {lab.shape}")
    if not lab.any():
        raise ValueError("render_tof got an empty vessel label")
    sp = tuple(float(s) for s in spacing)
    mask = derive_brain_mask(lab, sp) if brain_mask is None else (np.asarray(brain_mask) > 0)
    tissue = tissue_map(mask, sp, prof, rng)  # type: ignore[arg-type]
    return compose_tof(tissue, _label_occupancy(lab, sp), prof, rng)


def _patient_id_from(path: Path) -> str:
    name = re.sub(r"\.nii(\.gz)?$", "", path.name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def render_tof_nifti(label_path: str, out_dir: str, profile: str = "pegasus", seed: int = 0) -> Path:
    """Write a cohort-layout patient (image, the label copied, derived brain mask) from a real label file.

    The label keeps its own grid and affine; the patient id is the file name without extension.
    """
    path = Path(label_path)
    try:
        nii = nib.load(str(path))
        lab = np.asarray(nii.dataobj)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise ValueError(f"{path}: cannot read vessel label ({exc})") from exc
    if lab.ndim != 3:
        raise ValueError(f"{path}: vessel label must be 3D, got shape {lab.shape}")
    values = np.unique(lab)
    if not np.all(np.isin(values, (0, 1))):
        raise ValueError(f"{path}: vessel label must be binary {{0,1}}, found values {values[:10]}")
    patient_id = _patient_id_from(path)
    prof = get_profile(profile)
    rng = patient_rng(prof.name, patient_id, seed)
    spacing = tuple(float(z) for z in nii.header.get_zooms()[:3])
    lab = lab.astype(np.uint8)
    mask = derive_brain_mask(lab, spacing)
    image = render_tof(lab, spacing, prof, rng, brain_mask=mask)
    return write_patient(Path(out_dir) / patient_id, image, lab, mask, nii.affine)
