"""Head anatomy for the TOF appearance model: a deformed-ellipsoid brain, and a tissue map around any mask.

Tissue classes are computed on a coarse (~1.4 mm) grid and interpolated up: the anatomy is smooth at that
scale, interpolation gives partial volume between tissues for free, and it keeps a full-size patient fast.
On top comes what makes real TOF hard to threshold: a ~2 mm multiplicative tissue texture (grey/white
matter and CSF partial volume, perivascular spaces), faint unlabelled small vessels and veins, and bright
fat and marrow outside the brain.
Coordinates are "grid mm": voxel index times spacing, x = right, y = anterior, z = superior (RAS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from simulation.profiles import StudyProfile
from simulation.rasterize import rasterize
from simulation.vessel_tree import background_vessels

COARSE_MM = 1.4
#: Relative std of the smooth (~3 mm) within-class variation on the coarse grid.
COARSE_TEXTURE = 0.05
#: Grid step (mm) and Gaussian σ (grid steps) of the fine tissue texture: correlation length ≈2 mm, so most of its
#: energy sits in the 1–3 mm band issue 16 measures.
FINE_TEXTURE_STEP_MM = 1.0
FINE_TEXTURE_SIGMA = 1.5


@dataclass(frozen=True)
class BrainShape:
    """A brain as a deformed ellipsoid; `deform` is a smooth relative radius perturbation on a coarse grid."""

    centre_mm: np.ndarray  # (3,)
    semi_axes_mm: np.ndarray  # (3,)
    deform: np.ndarray  # coarse grid of relative radius changes
    deform_step_mm: float

    def rho(self, points_mm: np.ndarray) -> np.ndarray:
        """Normalised ellipsoidal radius of points (N,3): < 1 inside the brain."""
        rel = (points_mm - self.centre_mm) / self.semi_axes_mm
        rel[:, 0] /= self._frontal_narrowing(rel[:, 1])
        coords = (points_mm / self.deform_step_mm).T
        d = ndimage.map_coordinates(self.deform, coords, order=1, mode="nearest")
        return np.sqrt((rel**2).sum(axis=1)) / (1.0 + d)

    @staticmethod
    def _frontal_narrowing(rel_y: np.ndarray) -> np.ndarray:
        # The frontal lobes are narrower than the parieto-temporal region.
        return 1.0 - 0.12 * np.clip(rel_y, 0.0, 1.0) ** 2

    def mask(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
        """Rasterise on the image grid by broadcasting per-axis terms (cheap at full size)."""
        ax = [np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing)]
        rx = (ax[0] - self.centre_mm[0]) / self.semi_axes_mm[0]
        ry = (ax[1] - self.centre_mm[1]) / self.semi_axes_mm[1]
        rz = (ax[2] - self.centre_mm[2]) / self.semi_axes_mm[2]
        narrow = self._frontal_narrowing(ry).astype(np.float32)
        r2 = (rx[:, None] / narrow[None, :]) ** 2
        rho2 = r2[:, :, None] + (ry**2)[None, :, None] + (rz**2)[None, None, :]
        d = resize_linear(self.deform.astype(np.float32), shape)
        return (rho2 < (1.0 + d) ** 2).astype(np.uint8)


def resize_linear(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resize to an exact shape, corners aligned (as ndimage.zoom(order=1, grid_mode=False)).

    Hand-written as separable 1D interpolation because ndimage.zoom's generic spline path is ~5x slower
    at full volume size, which alone would eat a third of the per-patient time budget.
    """
    out = np.asarray(arr, dtype=np.float32)
    for axis, n_out in enumerate(shape):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        pos = np.linspace(0.0, n_in - 1, n_out) if n_out > 1 else np.zeros(1)
        i0 = np.clip(np.floor(pos).astype(np.intp), 0, max(n_in - 2, 0))
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = (pos - i0).astype(np.float32)
        wshape = [1] * out.ndim
        wshape[axis] = n_out
        w = w.reshape(wshape)
        lo, hi = np.take(out, i0, axis=axis), np.take(out, i1, axis=axis)
        hi -= lo
        hi *= w
        lo += hi
        out = lo
    return out


def smooth_noise(shape: tuple[int, ...], sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field with zero mean and unit std (smoothed white noise, re-normalised).

    The mean is removed explicitly: on a grid only a few σ wide it is a large share of the field.
    """
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    n -= np.float32(n.mean())
    return n / max(float(n.std()), 1e-6)


def make_brain(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], scale: float, rng: np.random.Generator
) -> BrainShape:
    """Adult brain dimensions (≈135×165×120 mm), scaled, positioned so the TOF slab covers its lower half."""
    fov = np.asarray(shape) * np.asarray(spacing)
    semi = np.array([67.0, 82.0, 58.0]) * scale * (1.0 + 0.04 * rng.standard_normal(3))
    centre = np.array([fov[0] / 2, fov[1] / 2 - 2.0 * scale, 0.45 * fov[2]])
    centre += rng.normal(0.0, 1.5 * scale, 3)
    step = 6.0 * max(scale, 0.25)
    dshape = tuple(int(np.ceil(f / step)) + 2 for f in fov)
    deform = 0.035 * smooth_noise(dshape, 2.0, rng)
    return BrainShape(centre, semi, deform, step)


def _coarse_factors(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(max(1, int(round(COARSE_MM / s))) for s in spacing)  # type: ignore[return-value]


def _block_mean(mask: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    pad = [(0, (-n) % k) for n, k in zip(mask.shape, f)]
    m = np.pad(mask.astype(np.float32), pad, mode="edge")
    s = m.shape
    return m.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2]).mean(axis=(1, 3, 5))


def tissue_map(
    brain_mask: np.ndarray,
    spacing: tuple[float, float, float],
    profile: StudyProfile,
    rng: np.random.Generator,
    scale: float = 1.0,
) -> np.ndarray:
    """Relative TOF intensity of every non-vessel voxel: air, scalp fat, skull, CSF, grey and white matter.

    Layers follow the signed distance to the brain surface, so the map works around any brain mask
    (simulated, supplied with real data, or derived from a real vessel label). Layer thicknesses shrink
    with `scale` (down to half) so a small demo head is not mostly skull.
    """
    k = float(np.clip(scale, 0.5, 1.0))
    f = _coarse_factors(spacing)
    csp = np.asarray(spacing) * np.asarray(f)
    coarse = _block_mean(brain_mask > 0, f) >= 0.5
    # Pad in z with edge copies: the slab cuts the brain, and a cut is not a brain surface.
    padz = 12
    cpad = np.pad(coarse, [(0, 0), (0, 0), (padz, padz)], mode="edge")
    depth = ndimage.distance_transform_edt(cpad, sampling=csp) - ndimage.distance_transform_edt(~cpad, sampling=csp)
    depth = depth[:, :, padz:-padz].astype(np.float32)
    cs = coarse.shape

    fold = smooth_noise(cs, 2.0 / np.mean(csp) * 1.5, rng)
    texture = smooth_noise(cs, 3.0 / np.mean(csp), rng)
    out = np.full(cs, profile.air, dtype=np.float32)
    outside = -depth
    out[(outside > 0) & (outside < 1.5 * k)] = profile.csf
    bone = (outside >= 1.5 * k) & (outside < 6.0 * k)
    out[bone] = profile.bone
    marrow = bone & (outside >= 2.5 * k) & (outside < 5.0 * k) & (texture > -0.3)  # diploë between the tables
    out[marrow] = profile.marrow * (1.0 + 0.2 * texture[marrow])
    scalp = (outside >= 6.0 * k) & (outside < 11.0 * k)
    out[scalp] = profile.fat * (1.0 + 0.15 * texture[scalp])

    inside = depth >= 0
    thickness = (2.6 + 0.8 * fold) * k
    gm = inside & (depth < thickness)
    out[inside] = profile.white_matter * (1.0 + COARSE_TEXTURE * texture[inside])
    out[gm] = profile.grey_matter * (1.0 + COARSE_TEXTURE * texture[gm])
    sulci = inside & (np.abs(fold) < 0.12) & (depth < 9.0 * k)
    out[sulci] = profile.csf

    # Deep structures placed relative to the mask's own extent, so they land sensibly for any mask.
    idx = np.argwhere(coarse)
    if len(idx):
        lo, hi = idx.min(0) * csp, idx.max(0) * csp
        centre, half = (lo + hi) / 2, (hi - lo) / 2
        grid = np.stack(np.meshgrid(*[np.arange(n) * c for n, c in zip(cs, csp)], indexing="ij"), axis=-1)
        for side in (-1, 1):  # thalamus / basal ganglia (grey), then lateral ventricles (CSF) on top
            c_gm = np.array([centre[0] + side * 0.17 * half[0], centre[1], centre[2] - 0.05 * half[2]])
            e = ((grid - c_gm) / np.array([0.13, 0.2, 0.16]) / half).__pow__(2).sum(-1) < 1
            out[e & inside] = profile.grey_matter
            c_v = np.array([centre[0] + side * 0.09 * half[0], centre[1] - 0.05 * half[1], centre[2] + 0.3 * half[2]])
            v = ((grid - c_v) / np.array([0.06, 0.35, 0.12]) / half).__pow__(2).sum(-1) < 1
            out[v & inside] = profile.csf
        fissure = inside & (np.abs(grid[..., 0] - centre[0]) < 1.0) & (grid[..., 2] > centre[2])
        out[fissure] = profile.csf
        # Basal cisterns: fluid around the circle of Willis, just above the slab's lower edge.
        c_cis = np.array([centre[0], centre[1] - 0.05 * half[1], lo[2] + 12.0 * k])
        cistern = ((grid - c_cis) / (np.array([18.0, 14.0, 5.0]) * k)).__pow__(2).sum(-1) < 1
        cistern &= inside & (texture > -0.8)
        out[cistern] = profile.csf
    full = resize_linear(out, brain_mask.shape)
    add_fine_texture(full, spacing, profile.tissue_texture, rng)
    paint_background_vessels(full, brain_mask, spacing, profile, rng)
    return full


def add_fine_texture(image: np.ndarray, spacing: tuple[float, float, float], amount: float,
                     rng: np.random.Generator) -> None:
    """Multiply by 1 + amount·(a ~2 mm Gaussian field), in place; made on a 1 mm grid and interpolated up."""
    if amount <= 0:
        return
    grid = tuple(max(2, int(np.ceil(n * s / FINE_TEXTURE_STEP_MM)) + 1) for n, s in zip(image.shape, spacing))
    field = resize_linear(smooth_noise(grid, FINE_TEXTURE_SIGMA, rng), image.shape)
    field *= np.float32(amount)
    field += 1.0
    np.maximum(field, 0.2, out=field)
    image *= field


def paint_background_vessels(tissue: np.ndarray, brain_mask: np.ndarray, spacing: tuple[float, float, float],
                             profile: StudyProfile, rng: np.random.Generator) -> None:
    """Mix faint unlabelled vessels into the tissue map by their true partial volume, in place."""
    lines, curve = background_vessels(np.asarray(brain_mask) > 0, spacing, profile.background_vessels_per_cm3, rng)
    if len(curve) == 0:
        return
    signal = rng.uniform(*profile.background_vessel_signal, int(curve.max()) + 1).astype(np.float32)
    occ = rasterize(lines, tissue.shape, spacing, blur=0.0)  # type: ignore[arg-type]
    if not tissue.flags.c_contiguous:
        raise ValueError("paint_background_vessels paints in place and needs a C-contiguous tissue map")
    flat = tissue.reshape(-1)
    fill = occ.fill
    flat[occ.index] = flat[occ.index] * (1.0 - fill) + signal[curve[occ.source]] * fill
