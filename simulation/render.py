"""TOF-MRA appearance model: tissue map + bright vessels by true partial volume, bias, reconstruction, noise.

One model renders both simulated trees (lumen partial volume from centrelines) and real vessel labels (the
label taken as the lumen), so simulated and label-driven cohorts share a look. The order follows the
acquisition: object (tissue, vessels with a laminar-flow lumen profile and inflow variation along the
tree) → receive-coil shading and slab profile → reconstruction blur of signal and thermal noise together
(zero-filled k-space interpolation: it blurs vessel edges and correlates neighbouring voxels' noise) →
magnitude (Rician). Every parameter is a `StudyProfile` field that states its source.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from simulation.anatomy import resize_linear, smooth_noise, tissue_map
from simulation.nifti_io import write_patient
from simulation.profiles import ProfileName, StudyProfile, get_profile
from simulation.rasterize import PSF_BLUR_MM, SparseOccupancy
from simulation.seeding import patient_rng

#: Correlation length (mm) of the inflow variation along the tree (a few branch segments share a level).
INFLOW_SCALE_MM = 10.0


def vessel_brightness(radius_mm: np.ndarray, travel_mm: np.ndarray, profile: StudyProfile) -> np.ndarray:
    """Inflow: blood saturates along its path through the slab, and slow flow in small vessels more so."""
    inflow = 1.0 - profile.inflow_decay * (1.0 - np.exp(-np.asarray(travel_mm) / profile.inflow_length_mm))
    small = np.clip((np.asarray(radius_mm) - 0.3) / 0.9, 0.0, 1.0)
    return (inflow * (1.0 - profile.small_vessel_dimming * (1.0 - small))).astype(np.float32)


def lumen_profile(lumen: np.ndarray, profile: StudyProfile) -> np.ndarray:
    """Laminar flow: velocity 1 − ρ² across the lumen; slow blood near the wall saturates towards the wall level."""
    w = np.float32(profile.lumen_wall_signal)
    return (w + (1.0 - w) * (1.0 - np.square(np.asarray(lumen, np.float32)))).astype(np.float32)


def smooth_field(shape: tuple[int, ...], spacing: Sequence[float], scale_mm: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Unit-std Gaussian field of correlation length ~scale_mm on a coarse grid; returns (grid, step mm)."""
    step = scale_mm / 3.0
    grid = tuple(max(2, int(np.ceil(n * s / step)) + 1) for n, s in zip(shape, spacing))
    return smooth_noise(grid, 3.0, rng), step


def inflow_variation(index: np.ndarray, shape: tuple[int, int, int], spacing: Sequence[float],
                     profile: StudyProfile, rng: np.random.Generator) -> np.ndarray:
    """exp(σ·field) at the vessel voxels: inflow differs between branches and along them (smooth in space)."""
    field, step = smooth_field(shape, spacing, INFLOW_SCALE_MM, rng)
    pos = np.stack(np.unravel_index(index, shape)).astype(np.float32) * np.asarray(spacing, np.float32)[:, None]
    values = ndimage.map_coordinates(field, pos / step, order=1, mode="nearest")
    return np.exp(profile.inflow_variation * values).astype(np.float32)


def apply_bias(image: np.ndarray, profile: StudyProfile, rng: np.random.Generator,
               spacing: Sequence[float] | None = None) -> None:
    """Smooth multiplicative field (receive-coil shading), slab profile and multi-slab boundary dips, in place."""
    sp = tuple(profile.spacing if spacing is None else spacing)
    nz = image.shape[2]
    field, _ = smooth_field(image.shape, sp, profile.bias_scale_mm, rng)
    log_bias = resize_linear(field * np.float32(profile.bias_strength), image.shape)
    z = (np.arange(nz, dtype=np.float32) + 0.5) / nz - 0.5
    log_bias += (profile.tone_ramp * z)[None, None, :]
    np.exp(log_bias, out=log_bias)
    image *= log_bias
    if profile.n_slabs > 1 and profile.slab_ripple > 0:
        zr = (np.arange(nz) + 0.5) / nz * profile.n_slabs % 1.0
        image *= (1.0 - profile.slab_ripple * (2.0 * np.abs(zr - 0.5)) ** 2).astype(np.float32)[None, None, :]


def _kernel_energy(sigmas: Sequence[float]) -> float:
    """Σ w² of scipy's separable Gaussian kernel (truncate 4): the variance a white field keeps after filtering."""
    energy = 1.0
    for s in sigmas:
        if s <= 0:
            continue
        r = int(4.0 * s + 0.5)
        w = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        energy *= float(np.sum((w / w.sum()) ** 2))
    return energy


def reconstruct_with_noise(image: np.ndarray, profile: StudyProfile, spacing: Sequence[float],
                           rng: np.random.Generator) -> np.ndarray:
    """Magnitude of (image + complex white noise) after the reconstruction blur; noise std = noise_sigma after it.

    Signal and noise pass through the same kernel, as they do in a zero-filled reconstruction, so edge blur
    and noise correlation come from one documented parameter (`recon_blur_mm`).
    """
    sig = tuple(profile.recon_blur_mm / float(s) for s in spacing)
    white = np.float32(profile.noise_sigma / np.sqrt(_kernel_energy(sig)))
    # Work on a copy padded by the kernel radius (mirrored, as scipy's default mode): the crop then holds
    # stationary noise right up to the border, and the signal is filtered exactly as with mode="reflect".
    pads = [(r, r) for r in (int(4.0 * s + 0.5) if s > 0 else 0 for s in sig)]
    inner = tuple(slice(a, a + n) for (a, _), n in zip(pads, image.shape))
    real = rng.standard_normal(tuple(n + 2 * a for (a, _), n in zip(pads, image.shape)), dtype=np.float32)
    real *= white
    real += np.pad(image, pads, mode="symmetric")
    imag = rng.standard_normal(real.shape, dtype=np.float32)
    imag *= white
    if profile.recon_blur_mm > 0:
        ndimage.gaussian_filter(real, sig, output=real)
        ndimage.gaussian_filter(imag, sig, output=imag)
    real, imag = np.ascontiguousarray(real[inner]), np.ascontiguousarray(imag[inner])
    # Rician magnitude |signal + complex Gaussian|, in place to keep memory at ~3 volumes.
    np.square(real, out=real)
    np.square(imag, out=imag)
    real += imag
    del imag
    np.sqrt(real, out=real)
    return real


def compose_tof(
    tissue: np.ndarray, vessels: SparseOccupancy, profile: StudyProfile, rng: np.random.Generator,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Mix vessels into the tissue map by their true partial volume, then bias, reconstruction + noise, scaling.

    `spacing` defaults to the profile's grid (simulated patients); label-driven renders pass the label's.
    """
    sp = tuple(float(s) for s in (profile.spacing if spacing is None else spacing))
    image = np.array(tissue, dtype=np.float32, order="C", copy=True)
    flat = image.reshape(-1)
    fill = vessels.occupancy if vessels.fill is None else vessels.fill
    bright = vessel_brightness(vessels.radius, vessels.travel, profile)
    if vessels.lumen is not None:
        bright *= lumen_profile(vessels.lumen, profile)
    if len(vessels.index):
        bright *= inflow_variation(vessels.index, image.shape, sp, profile, rng)  # type: ignore[arg-type]
    flat[vessels.index] = flat[vessels.index] * (1.0 - fill) + bright * fill
    apply_bias(image, profile, rng, sp)
    out = reconstruct_with_noise(image, profile, sp, rng)
    out *= np.float32(profile.vessel_intensity)
    return out


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
    """True partial volume of the lumen behind an image-drawn label, its calibre, lumen depth and flow path.

    A rater marks a vessel as wide as the blurred image shows it, so, as for simulated labels
    (simulation.rasterize), the label's radius R is the apparent one, sqrt(r² + b²), of a thinner lumen r
    (kept ≥ 0.7 R). Each label voxel is filled by the lumen as rasterize fills voxels (a ramp over one voxel,
    scaled by 2r/h for sub-voxel vessels), so one-voxel vessels come out dim. Works on the label's bounding box.
    """
    nz = np.nonzero(lab)
    box = tuple(slice(max(int(i.min()) - 3, 0), min(int(i.max()) + 4, n)) for i, n in zip(nz, lab.shape))
    crop = lab[box]
    h = float(np.exp(np.log(np.asarray(spacing, dtype=np.float64)).mean()))
    edt = ndimage.distance_transform_edt(crop, sampling=spacing).astype(np.float32)
    radius = ndimage.grey_dilation(edt, size=(5, 5, 3))  # calibre of the vessel a voxel belongs to (EDT convention)
    sel = crop > 0
    apparent = radius[sel] - h / 2  # axis to label surface
    axis_dist = np.maximum(apparent - (edt[sel] - h / 2), 0.0)
    lumen_r = np.sqrt(np.maximum(apparent**2 - PSF_BLUR_MM**2, (0.7 * apparent) ** 2))
    fill = np.clip((lumen_r - axis_dist) / h + 0.5, 0.0, 1.0) * np.minimum(1.0, 2.0 * lumen_r / h)
    lumen = np.minimum(axis_dist / np.maximum(lumen_r, 1e-3), 1.0)
    full_idx = np.stack([np.nonzero(sel)[k] + box[k].start for k in range(3)])
    sp = np.asarray(spacing, dtype=np.float32)
    # Flow-path proxy: arteries enter from below and spread outwards from the midline base.
    pos = full_idx.T.astype(np.float32) * sp
    base = np.array([np.mean(nz[0]), np.mean(nz[1]), nz[2].min()], dtype=np.float32) * sp
    travel = 20.0 + 1.5 * (pos[:, 2] - base[2]) + 0.6 * np.linalg.norm(pos[:, :2] - base[:2], axis=1)
    index = np.ravel_multi_index(tuple(full_idx), lab.shape).astype(np.int64)
    return SparseOccupancy(index, np.ones(len(index), np.float32), np.maximum(radius[sel], 0.3),
                           travel.astype(np.float32), fill.astype(np.float32), lumen.astype(np.float32))


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
    return compose_tof(tissue, _label_occupancy(lab, sp), prof, rng, spacing=sp)


def _patient_id_from(path: Path) -> str:
    name = re.sub(r"\.nii(\.gz)?$", "", path.name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def render_tof_nifti(label_path: str, out_dir: str, profile: ProfileName = "pegasus", seed: int = 0) -> Path:
    """Write a cohort-layout patient (image, the label copied, derived brain mask) from a real label file.

    The label keeps its own grid and affine; the patient id is the file name without extension.

    Args:
        label_path: a 3D binary vessel label NIfTI (.nii or .nii.gz).
        out_dir: cohort folder; the patient is written to `<out_dir>/<patient id>/`.
        profile: study profile whose intensities and noise the rendered TOF image gets.
        seed: seed of the rendering (with the profile and patient id: tissue, noise).
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
