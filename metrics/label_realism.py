"""Label realism of image+label patch sets, without any pretrained network.

FID and PRD look at the image channel only; the 3D paper's synthetic labels were sparse and broken into
specks without FID noticing. These measures look at the label and at its agreement with the image:
per patch the vessel fraction, connected components (26-connected in 3D), the largest component's share and the
share of vessel voxels in specks (`vessel_stats.component_stats`), the mean image
intensity inside and outside the label (and their ratio, "tissue ≈ 0.15–0.25 of vessel" in real TOF);
pooled over patches the vessel radii on the centreline. Synthetic and real sets are compared by
Wasserstein-1 distances between the per-patch (or per-centreline-voxel) distributions and by absolute
differences of means. The building blocks live in `metrics.vessel_stats`, shared with real-data stats.

Empty-label policy: a patch without vessel has no radius, no component share and no inside intensity;
those entries are NaN and left out of means and distributions (never averaged in as a sentinel), and the
share of empty patches is reported as its own figure (a generator emitting empty labels is unrealistic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from tqdm.auto import tqdm

from metrics.vessel_stats import component_stats, radius_samples_mm, vessel_fraction

PER_PATCH = ("vessel_fraction", "n_components", "largest_share", "speck_share", "mean_in", "mean_out", "tissue_to_vessel",
             "contrast")


@dataclass
class LabelRealismStats:
    """Per-patch measures (N,) with NaN where undefined, and the pooled centreline radii in mm."""

    vessel_fraction: np.ndarray
    n_components: np.ndarray
    largest_share: np.ndarray
    speck_share: np.ndarray
    mean_in: np.ndarray
    mean_out: np.ndarray
    tissue_to_vessel: np.ndarray
    contrast: np.ndarray
    radii_mm: np.ndarray = field(repr=False)

    @property
    def n_patches(self) -> int:
        return int(self.vessel_fraction.size)

    @property
    def empty_fraction(self) -> float:
        return float(np.mean(self.vessel_fraction == 0)) if self.n_patches else float("nan")

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {"n_patches": self.n_patches, "empty_fraction": self.empty_fraction}
        for name in PER_PATCH:
            vals = _finite(getattr(self, name))
            out[f"{name}_mean"] = float(vals.mean()) if vals.size else float("nan")
        r = self.radii_mm
        p10, med, p99 = np.percentile(r, [10, 50, 99]) if r.size else (float("nan"),) * 3
        out.update(radius_median_mm=float(med), radius_p10_mm=float(p10), radius_p99_mm=float(p99))
        return out


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a[np.isfinite(a)]


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _squeeze_channel(x: np.ndarray, what: str, channel: int) -> np.ndarray:
    """(N, C, *spatial) → (N, *spatial) picking `channel`; (N, *spatial) with 2–3 spatial dims passes."""
    if x.ndim in (4, 5):
        return x[:, channel]
    if x.ndim == 3:
        return x
    raise ValueError(f"label realism: {what} must be (N, C, H, W[, D]) or (N, H, W), got shape {x.shape}")


def patch_intensity_stats(image: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Mean intensity inside / outside the label (NaN where a side is empty)."""
    inside, outside = image[label], image[~label]
    return (float(inside.mean()) if inside.size else float("nan"),
            float(outside.mean()) if outside.size else float("nan"))


def label_realism_stats(
    images: torch.Tensor | np.ndarray | None,
    labels: torch.Tensor | np.ndarray,
    spacing: Sequence[float] | None = None,
    image_range: tuple[float, float] | None = (-1.0, 1.0),
    threshold: float = 0.5,
    image_channel: int = 0,
    label_channel: int = 0,
    progress: bool = True,
) -> LabelRealismStats:
    """Measure a set of patches.

    Args:
        images: (N, C, H, W[, D]) or (N, H, W[, D]) images, or None (intensity measures become NaN).
        labels: same layout; vessel where `label > threshold` (pass {0,1} labels; the GAN modules threshold
            their tanh output with the encoding's own threshold before this).
        spacing: voxel size in mm per spatial axis (2 values for 2D patches); None = 1 voxel units.
        image_range: intensity range mapped to [0, 1] before the intensity measures ([-1, 1] for GAN-scaled
            patches) so that the inside/outside ratio is a ratio of non-negative intensities; None = raw.
        image_channel / label_channel: channel picked when the arrays carry one (image+label pairs in
            one tensor: pass the same tensor with image_channel=0, label_channel=1).
    """
    lab = _squeeze_channel(_as_numpy(labels), "labels", label_channel) > threshold
    img = None
    if images is not None:
        img = _squeeze_channel(_as_numpy(images), "images", image_channel).astype(np.float64)
        if img.shape != lab.shape:
            raise ValueError(f"label realism: images {img.shape} and labels {lab.shape} differ in shape")
        if image_range is not None:
            lo, hi = image_range
            img = (img - lo) / (hi - lo)
    n = lab.shape[0]
    cols = {k: np.full(n, np.nan) for k in PER_PATCH}
    radii = []
    for k in tqdm(range(n), desc="label realism", disable=not progress):
        cols["vessel_fraction"][k] = vessel_fraction(lab[k])
        comps = component_stats(lab[k])
        cols["n_components"][k] = comps["n_components"]
        if comps["n_components"]:
            cols["largest_share"][k] = comps["largest_share"]
            cols["speck_share"][k] = comps["speck_share"]
        radii.append(radius_samples_mm(lab[k], spacing))
        if img is not None:
            m_in, m_out = patch_intensity_stats(img[k], lab[k])
            cols["mean_in"][k], cols["mean_out"][k] = m_in, m_out
            if np.isfinite(m_in) and np.isfinite(m_out):
                cols["contrast"][k] = m_in - m_out
                if m_in > 0:
                    cols["tissue_to_vessel"][k] = m_out / m_in
    pooled = np.concatenate(radii) if radii else np.zeros(0)
    return LabelRealismStats(**cols, radii_mm=pooled)


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _finite(a), _finite(b)
    return float(wasserstein_distance(a, b)) if a.size and b.size else float("nan")


def compare_label_realism(synthetic: LabelRealismStats, real: LabelRealismStats) -> dict[str, float]:
    """Distances synthetic ↔ real: `w1_<measure>` (Wasserstein-1 of the distributions, in the measure's
    units; radii in mm) and `absdiff_<measure>` (|difference of means|); 0 for identical sets."""
    out: dict[str, float] = {"w1_radius_mm": _w1(synthetic.radii_mm, real.radii_mm)}
    s_sum, r_sum = synthetic.summary(), real.summary()
    for name in PER_PATCH:
        out[f"w1_{name}"] = _w1(getattr(synthetic, name), getattr(real, name))
        out[f"absdiff_{name}"] = abs(s_sum[f"{name}_mean"] - r_sum[f"{name}_mean"])
    out["absdiff_radius_median_mm"] = abs(s_sum["radius_median_mm"] - r_sum["radius_median_mm"])
    out["absdiff_empty_fraction"] = abs(s_sum["empty_fraction"] - r_sum["empty_fraction"])
    return out
