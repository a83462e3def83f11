"""Appearance measures of a TOF-MRA image against its vessel label: is the image as hard as a real scan?

Every measure takes an image, its binary vessel label, a brain mask and the spacing, so the same code
measures a simulated patient, a `render-tof` image and a real scan (issue 16's table). Definitions:

Regions
    vessels V = label > 0.  tissue T = brain voxels at least `BRAIN_MARGIN_MM` inside the brain mask and at
    least `VESSEL_MARGIN_MM` away from any label voxel (unlabelled small vessels stay in T, as in a real scan).
    Smoothing of tissue is *normalised convolution* over W = brain mask minus the dilated label:
    G_σ(I·W) / G_σ(W), so skull, scalp and labelled vessels never leak into tissue figures.
    tissue level = median of the image over T; every "%" below is relative to it.
noise_pct
    thermal noise, measured where the image holds nothing but noise: in the air around the head (NEMA's
    background method). Air A = voxels ≥ `AIR_MARGIN_MM` outside the brain mask whose 2 mm-smoothed
    intensity is below `AIR_LEVEL` of the tissue level, eroded by one voxel. There the magnitude M of
    complex Gaussian noise of std σ per channel is Rayleigh, E[M²] = 2σ², so σ = sqrt(mean(M²)/2);
    reported as 100·σ / tissue level. Texture cannot leak in: in tissue, a 1–3 mm texture of 16 % has more
    fine-scale variation than 2 % correlated noise, so no tissue high-pass separates the two.
    Fallback when the image has fewer than `MIN_AIR_VOXELS` air voxels (a tight crop): 1.4826 · MAD of the
    residual I − G_1mm(I) over T (`noise_region` tells which was used; the tissue figure includes texture).
noise_correlation
    correlation ρ of neighbouring voxels' complex noise, from the air: for circular complex Gaussian noise
    corr(M₁², M₂²) = |ρ|², so ρ = sqrt(corr(M², M² of the next voxel)), averaged over the in-plane axes x and y
    (pairs with both voxels in A). White noise gives ≈0; the real scan at 0.5 mm gave 0.75. Fallback:
    Pearson correlation of the tissue residual between neighbours.
texture_pct
    1–3 mm texture: 1.4826 · MAD of the band G_1mm(I) − G_3mm(I) over T, in % of the tissue level.
vessel_tissue_ratio
    median(I over V) / tissue level.
bright_vessel_ratio
    99th percentile of I over V / median(I over V): a flat-topped lumen with a hard ceiling gives ≈1.2.
edge_width_mm
    10–90 % rise distance of the mean intensity profile across the label surface of large vessels
    (local calibre ≥ `EDGE_MIN_RADIUS_MM`), profile binned by signed distance to the label surface; 10 %
    and 90 % are of the way from the local background (2–3 mm outside) to the profile's peak. A Gaussian
    blur σ of a wide tube gives ≈2.56 σ (plus the label's staircase).
low_frequency_ratio
    95th / 5th percentile over T of the tissue smoothed by G_`LOW_FREQ_SIGMA_MM` (bias field, coil shading).
oracle_threshold_dsc
    best Dice over every global threshold of the image inside the brain mask against the label: how well a
    single intensity threshold, chosen with the answer known, segments the vessels (real TOF: it cannot).

Issue 16 does not state its definitions. These ones, run on the simulator before issue 16 (full-size
pegasus), gave noise 11.1 %, correlation 0.02–0.04, texture 2.9 %, vessel/tissue 3.5, brightest/median
1.3–1.6, edge 0.7 mm (one patient 1.6), low frequency 1.3–1.5 and oracle DSC 0.94–0.95, close to the issue's
"simulated today" column (10.7 %, 0.03, 3–4 %, 3.9, 1.22, 0.76 mm, 1.18): evidence that they measure what
the real column measured, not proof.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

BRAIN_MARGIN_MM = 2.0
AIR_MARGIN_MM = 3.0
AIR_LEVEL = 0.3
MIN_AIR_VOXELS = 2000
VESSEL_MARGIN_MM = 1.5
FINE_SIGMA_MM = 1.0
TEXTURE_SIGMAS_MM = (1.0, 3.0)
LOW_FREQ_SIGMA_MM = 6.0
EDGE_MIN_RADIUS_MM = 1.0
EDGE_BIN_MM = 0.1
MAD_TO_SD = 1.4826

#: Issue 16's measurements on a real TOF-MRA scan of the circle of Willis (0.3 mm, resampled to 0.5 mm).
REAL_TOF: dict[str, float] = {
    "noise_pct": 2.0,
    "noise_correlation": 0.75,
    "texture_pct": 16.0,  # 15–17 %
    "vessel_tissue_ratio": 5.2,
    "bright_vessel_ratio": 1.67,
    "edge_width_mm": 1.07,
    "low_frequency_ratio": 1.87,  # 1.85–1.89
}


def _mad_sd(values: np.ndarray) -> float:
    return float(MAD_TO_SD * np.median(np.abs(values - np.median(values)))) if values.size else float("nan")


def _sigmas(sigma_mm: float, spacing: Sequence[float]) -> tuple[float, ...]:
    return tuple(sigma_mm / float(s) for s in spacing)


def masked_smooth(image: np.ndarray, weight: np.ndarray, sigma_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Normalised convolution G(I·W)/G(W): a smoothing that ignores voxels outside W."""
    w = weight.astype(np.float32)
    sig = _sigmas(sigma_mm, spacing)
    num = ndimage.gaussian_filter(np.asarray(image, np.float32) * w, sig)
    den = ndimage.gaussian_filter(w, sig)
    return num / np.maximum(den, 1e-3)


class Regions:
    """The voxel sets every measure reads (built once per image: distance transforms are the slow part)."""

    def __init__(self, label: np.ndarray, brain_mask: np.ndarray, spacing: Sequence[float]) -> None:
        self.spacing = tuple(float(s) for s in spacing)
        self.vessels = np.asarray(label) > 0
        self.brain = np.asarray(brain_mask) > 0
        if self.vessels.shape != self.brain.shape:
            raise ValueError(f"label shape {self.vessels.shape} differs from brain mask shape {self.brain.shape}")
        if not self.vessels.any():
            raise ValueError("realism measures need a non-empty vessel label")
        self.dist_out = ndimage.distance_transform_edt(~self.vessels, sampling=self.spacing).astype(np.float32)
        near_vessel = self.dist_out < VESSEL_MARGIN_MM
        self.smooth_weight = self.brain & ~near_vessel
        deep = ndimage.distance_transform_edt(self.brain, sampling=self.spacing) >= BRAIN_MARGIN_MM
        self.tissue = deep & ~near_vessel
        if self.tissue.sum() < 100:
            raise ValueError("realism measures need a brain mask with tissue away from vessels (< 100 voxels found)")
        self.outside = ndimage.distance_transform_edt(~self.brain, sampling=self.spacing) >= AIR_MARGIN_MM

    def air(self, image: np.ndarray, tissue_level: float) -> np.ndarray:
        """Background air: dark after 2 mm smoothing, away from the brain, one voxel in from its border."""
        dark = ndimage.gaussian_filter(image, _sigmas(2.0, self.spacing)) < AIR_LEVEL * tissue_level
        return ndimage.binary_erosion(dark & self.outside)


def neighbour_correlation(field: np.ndarray, region: np.ndarray, axes: Sequence[int] = (0, 1)) -> float:
    """Mean over `axes` of the Pearson correlation of `field` between voxel pairs one step apart, both in region."""
    values = []
    for ax in axes:
        n = field.shape[ax]
        a = np.take(field, np.arange(n - 1), axis=ax)
        b = np.take(field, np.arange(1, n), axis=ax)
        both = np.take(region, np.arange(n - 1), axis=ax) & np.take(region, np.arange(1, n), axis=ax)
        x, y = a[both].astype(np.float64), b[both].astype(np.float64)
        if x.size < 2 or x.std() == 0 or y.std() == 0:
            return float("nan")  # constant field (a noiseless phantom): no correlation to speak of
        values.append(float(np.corrcoef(x, y)[0, 1]))
    return float(np.mean(values))


def noise_measures(image: np.ndarray, regions: Regions, tissue_level: float) -> dict[str, float | str]:
    """Noise level and neighbour correlation from the air (Rayleigh), or from tissue if there is too little air."""
    air = regions.air(image, tissue_level)
    if air.sum() >= MIN_AIR_VOXELS:
        power = np.square(image, dtype=np.float64)
        sigma = float(np.sqrt(power[air].mean() / 2.0))
        rho2 = neighbour_correlation(power, air)
        return {"noise_pct": 100.0 * sigma / tissue_level, "noise_correlation": float(np.sqrt(max(rho2, 0.0))),
                "noise_region": "air"}  # fmt: skip
    residual = image - masked_smooth(image, regions.smooth_weight, FINE_SIGMA_MM, regions.spacing)
    return {"noise_pct": 100.0 * _mad_sd(residual[regions.tissue]) / tissue_level,
            "noise_correlation": neighbour_correlation(residual, regions.tissue), "noise_region": "tissue"}  # fmt: skip


def texture_pct(image: np.ndarray, regions: Regions, tissue_level: float) -> float:
    fine, coarse = (masked_smooth(image, regions.smooth_weight, s, regions.spacing) for s in TEXTURE_SIGMAS_MM)
    return 100.0 * _mad_sd((fine - coarse)[regions.tissue]) / tissue_level


def low_frequency_ratio(image: np.ndarray, regions: Regions) -> float:
    smooth = masked_smooth(image, regions.smooth_weight, LOW_FREQ_SIGMA_MM, regions.spacing)[regions.tissue]
    p5, p95 = np.percentile(smooth, [5, 95])
    return float(p95 / max(p5, 1e-6))


def edge_width_mm(image: np.ndarray, regions: Regions) -> float:
    """10–90 % width of the mean profile across the label surface of large vessels (module docstring)."""
    sp = regions.spacing
    h = float(np.exp(np.log(sp).mean()))
    inside = ndimage.distance_transform_edt(regions.vessels, sampling=sp).astype(np.float32)
    calibre = ndimage.grey_dilation(inside, size=(5, 5, 3) if image.ndim == 3 else (5, 5))
    large = regions.vessels & (calibre >= EDGE_MIN_RADIUS_MM)
    if not large.any():
        return float("nan")
    # Outside voxels count when their nearest label voxel belongs to a large vessel.
    near_large = ndimage.distance_transform_edt(~large, sampling=sp) <= regions.dist_out + 1e-3
    signed = np.where(regions.vessels, -(inside - h / 2), regions.dist_out - h / 2)
    use = np.where(regions.vessels, large, near_large) & (signed <= 3.0) & regions.brain
    if use.sum() < 50:
        return float("nan")
    s, v = signed[use], np.asarray(image, np.float32)[use]
    edges = np.arange(np.floor(s.min() / EDGE_BIN_MM), np.ceil(s.max() / EDGE_BIN_MM) + 1) * EDGE_BIN_MM
    which = np.digitize(s, edges) - 1
    count = np.bincount(which, minlength=len(edges))
    total = np.bincount(which, weights=v, minlength=len(edges))
    ok = count >= 5
    centre, profile = (edges[ok] + EDGE_BIN_MM / 2), total[ok] / count[ok]
    low = float(np.median(v[(s >= 2.0) & (s <= 3.0)])) if np.any((s >= 2.0) & (s <= 3.0)) else float(profile[-1])
    high = float(profile.max())
    if high <= low:
        return float("nan")
    frac = (profile - low) / (high - low)

    def outermost_crossing(level: float) -> float:
        above = np.nonzero(frac >= level)[0]
        i = int(above.max())  # last bin (largest distance outwards) still above the level
        if i + 1 >= len(frac):
            return float(centre[i])
        f0, f1 = frac[i], frac[i + 1]
        return float(centre[i] + (f0 - level) / max(f0 - f1, 1e-9) * (centre[i + 1] - centre[i]))

    return outermost_crossing(0.1) - outermost_crossing(0.9)


def oracle_threshold_dsc(image: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Best Dice (and its threshold) of `image > t` vs the label over every threshold t, inside `mask`."""
    sel = np.ones(np.shape(label), bool) if mask is None else np.asarray(mask) > 0
    values = np.asarray(image, np.float32)[sel]
    truth = (np.asarray(label) > 0)[sel]
    n_true = int(truth.sum())
    if n_true == 0:
        raise ValueError("oracle threshold DSC needs vessel voxels inside the mask")
    order = np.argsort(values, kind="stable")[::-1]
    v, tp = values[order], np.cumsum(truth[order])
    last_of_value = np.ones(len(v), bool)  # a threshold keeps all voxels of equal value together
    last_of_value[:-1] = v[1:] != v[:-1]
    k = np.nonzero(last_of_value)[0]
    dsc = 2.0 * tp[k] / (n_true + k + 1)
    best = int(np.argmax(dsc))
    return float(dsc[best]), float(v[k[best]])


def realism_measures(
    image: np.ndarray, label: np.ndarray, brain_mask: np.ndarray, spacing: Sequence[float]
) -> dict[str, float | str]:
    """Issue 16's appearance table for one image (module docstring), plus the oracle threshold DSC."""
    img = np.asarray(image, np.float32)
    if img.shape != np.shape(label):
        raise ValueError(f"image shape {img.shape} differs from label shape {np.shape(label)}")
    regions = Regions(label, brain_mask, spacing)
    level = float(np.median(img[regions.tissue]))
    vessel_values = img[regions.vessels]
    vessel_median = float(np.median(vessel_values))
    dsc, threshold = oracle_threshold_dsc(img, regions.vessels, regions.brain)
    return {
        **noise_measures(img, regions, level),
        "texture_pct": texture_pct(img, regions, level),
        "vessel_tissue_ratio": vessel_median / level,
        "bright_vessel_ratio": float(np.percentile(vessel_values, 99)) / vessel_median,
        "edge_width_mm": edge_width_mm(img, regions),
        "low_frequency_ratio": low_frequency_ratio(img, regions),
        "oracle_threshold_dsc": dsc,
        "oracle_threshold": threshold / level,
    }
