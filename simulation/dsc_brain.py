"""Perfusion parameters of a simulated brain: grey/white matter with smooth variation, plus the profile's lesion.

Typical values (../shared/notes/perfusion.md B3.5–6): GM CBF ≈ 55 ml/100 g/min, MTT ≈ 4 s (CBV ≈ 3.7 ml/100 g);
WM CBF ≈ 22, MTT ≈ 5.5 s (CBV ≈ 2); smooth Gaussian-random-field modulation of ±10–20 %; normal arterial delay
≈ 0.5–1.5 s relative to the AIF, little dispersion.
- acute (Heidelberg-like): one territory on one hemisphere in which the delay rises toward the centre (2 to 6–10 s),
  dispersion grows (up to 0.5–3 s), CBF falls (penumbra, × down to 0.5 with CBV kept, so MTT rises), and a core
  where CBF (× 0.15) and CBV (× 0.4) collapse; some patients have no core yet.
- steno (PEGASUS-like): a broad hemispheric territory (sometimes a second, contralateral one) with delay 1–4 s,
  dispersion 1–3 s, CBF near normal and CBV raised 10–30 % (autoregulatory vasodilation).
Geometry is in normalised brain coordinates (the brain ellipsoid is the unit sphere), so lesions land in the
brain at any grid size. All randomness comes from the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from simulation.anatomy import resize_linear, smooth_noise

GM = {"cbf": 55.0, "mtt": 4.0}
WM = {"cbf": 22.0, "mtt": 5.5}
MAX_MTT = 20.0


@dataclass
class PerfusionFields:
    """Per-voxel parameters on the grid (X, Y, Z); zero outside the brain."""

    brain: np.ndarray  # bool
    head: np.ndarray  # bool, brain plus a scalp shell without tracer
    gm_fraction: np.ndarray
    cbf: np.ndarray  # ml/100 g/min
    mtt: np.ndarray  # s
    delay: np.ndarray  # s, arterial delay relative to the AIF
    disp: np.ndarray  # s, dispersion time constant
    lesion: dict  # what was drawn (for meta.json)


def _field(shape: tuple[int, int, int], fov: np.ndarray, corr_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth unit-SD random field with correlation length ~corr_mm, made on a coarse grid (fast at any size)."""
    coarse = tuple(max(3, int(np.ceil(f / corr_mm * 2))) for f in fov)
    return resize_linear(smooth_noise(coarse, 1.0, rng), shape)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def normalised_coords(shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(3, X, Y, Z) coordinates with the brain ellipsoid as unit sphere, and the brain's semi-axes (mm)."""
    fov = np.asarray(shape) * np.asarray(spacing)
    semi = np.array([68.0, 82.0, 60.0]) * (1 + 0.04 * rng.standard_normal(3))
    centre = np.array([0.0, -3.0, 6.0]) + rng.normal(0, 2.0, 3)
    axes = [((np.arange(n) + 0.5) * s - f / 2 - c) / a for n, s, f, c, a in zip(shape, spacing, fov, centre, semi)]
    return np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32), semi


def brain_fields(shape: tuple[int, int, int], spacing: tuple[float, float, float], lesion_kind: str,
                 rng: np.random.Generator) -> PerfusionFields:
    rng_anat, rng_var, rng_lesion = rng.spawn(3)
    fov = np.asarray(shape) * np.asarray(spacing)
    uvw, semi = normalised_coords(shape, spacing, rng_anat)
    rho = np.sqrt((uvw**2).sum(0)) / (1 + 0.04 * _field(shape, fov, 30.0, rng_anat))
    brain = rho < 1.0
    head = rho < 1.12
    depth_mm = (1.0 - rho) * float(np.mean(semi))
    ribbon = depth_mm < np.clip(9.0 + 4.0 * _field(shape, fov, 8.0, rng_anat), 2.5, 16.0)
    nuclei = (((np.abs(uvw[0]) - 0.22) / 0.12) ** 2 + (uvw[1] / 0.22) ** 2 + ((uvw[2] + 0.05) / 0.18) ** 2) < 1
    sigma = [max(0.4, 1.2 / s) for s in spacing]  # ~1.2 mm partial volume between GM and WM
    gm = ndimage.gaussian_filter((ribbon | nuclei).astype(np.float32), sigma) * brain
    level = rng_var.uniform(0.85, 1.15)
    cbf = (gm * GM["cbf"] + (1 - gm) * WM["cbf"]) * level * (1 + 0.15 * _field(shape, fov, 25.0, rng_var))
    mtt = (gm * GM["mtt"] + (1 - gm) * WM["mtt"]) * (1 + 0.08 * _field(shape, fov, 25.0, rng_var))
    delay = np.clip(0.9 + 0.35 * _field(shape, fov, 40.0, rng_var), 0.1, None)
    disp = np.clip(0.4 + 0.2 * _field(shape, fov, 40.0, rng_var), 0.05, None)
    cbf_f, cbv_f = np.ones(shape, np.float32), np.ones(shape, np.float32)
    if lesion_kind == "acute":
        lesion = _acute(uvw, fov, shape, rng_lesion, delay, disp, cbf_f, cbv_f)
    elif lesion_kind == "steno":
        lesion = _steno(uvw, fov, shape, rng_lesion, delay, disp, cbf_f, cbv_f)
    else:
        raise ValueError(f"unknown lesion kind {lesion_kind!r}; expected 'acute' or 'steno'")
    cbf = np.clip(cbf * cbf_f, 2.0, None)
    mtt = np.clip(mtt * cbv_f / cbf_f, 1.0, MAX_MTT)
    z = np.float32(0)
    return PerfusionFields(brain, head, gm.astype(np.float32), np.where(brain, cbf, z).astype(np.float32),
                           np.where(brain, mtt, z).astype(np.float32), np.where(brain, delay, z).astype(np.float32),
                           np.where(brain, disp, z).astype(np.float32), lesion)


def _territory(uvw: np.ndarray, fov: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator,
               centre: np.ndarray, radius: float, side: int) -> np.ndarray:
    """Smooth weight in [0, 1]: 1 at the centre, 0 beyond an irregular border, never across the midline."""
    d = np.sqrt(((uvw - centre[:, None, None, None]) ** 2).sum(0)) * (1 + 0.2 * _field(shape, fov, 25.0, rng))
    s = np.clip(1.0 - d / radius, 0.0, 1.0)
    return (s * _smoothstep((side * uvw[0] + 0.05) / 0.1)).astype(np.float32)


def _acute(uvw: np.ndarray, fov: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator,
           delay: np.ndarray, disp: np.ndarray, cbf_f: np.ndarray, cbv_f: np.ndarray) -> dict:
    """Edits delay, disp, cbf_f and cbv_f in place; returns the lesion's description for meta.json."""
    side = int(rng.choice([-1, 1]))
    centre = np.array([side * rng.uniform(0.35, 0.6), rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.4)])
    radius = rng.uniform(0.35, 0.65)
    s = _territory(uvw, fov, shape, rng, centre, radius, side)
    inside = _smoothstep(s / 0.15)
    delay_max = rng.uniform(6.0, 10.0)
    delay += inside * (2.0 + (delay_max - 2.0) * s)
    disp += s * rng.uniform(0.5, 3.0)
    core_at = rng.uniform(0.5, 0.85) if rng.uniform() > 0.2 else 2.0  # 2.0: no core yet
    core = _smoothstep((s - core_at) / 0.1)
    cbf_f *= (1 - 0.5 * s) * (1 - core) + 0.15 * core
    cbv_f *= (1 + 0.1 * s) * (1 - core) + 0.4 * core
    return {"kind": "acute", "side": side, "centre": centre.round(3).tolist(), "radius": round(radius, 3),
            "max_delay_s": round(delay_max, 2), "core_threshold": round(core_at, 3), "has_core": core_at < 1}


def _steno(uvw: np.ndarray, fov: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator,
           delay: np.ndarray, disp: np.ndarray, cbf_f: np.ndarray, cbv_f: np.ndarray) -> dict:
    side = int(rng.choice([-1, 1]))
    terr = [(side, rng.uniform(0.6, 0.9))]
    if rng.uniform() < 0.3:
        terr.append((-side, rng.uniform(0.35, 0.6)))  # a second, contralateral stenosis
    drawn = []
    for sd, radius in terr:
        centre = np.array([sd * rng.uniform(0.3, 0.5), rng.uniform(-0.2, 0.2), rng.uniform(0.0, 0.3)])
        s = _territory(uvw, fov, shape, rng, centre, radius, sd)
        extra = rng.uniform(1.0, 4.0)
        delay += extra * np.sqrt(s)
        disp += s * rng.uniform(1.0, 3.0)
        cbf_f *= 1 - s * rng.uniform(0.0, 0.15)
        cbv_f *= 1 + s * rng.uniform(0.1, 0.3)
        drawn.append({"side": sd, "centre": centre.round(3).tolist(), "radius": round(radius, 3),
                      "max_delay_s": round(extra, 2)})
    return {"kind": "steno", "territories": drawn}
