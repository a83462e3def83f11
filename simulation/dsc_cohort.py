"""Simulated DSC-MRI patients and cohorts (issue 14): the embedded default data of the perfusion experiments.

A patient is fully determined by (profile, patient id, seed) and the grid shape: brain and lesion parameters
(`simulation.dsc_brain`), tissue curves and signal (`simulation.dsc_model`), truth maps from the parameters, and the
maps a clinical pipeline computes from the noisy signal (`metrics.deconvolution`: block-circulant oSVD against the
noise-free AIF, the standard simulation choice; TTP from the smoothed tissue curve). Networks learn the pipeline's
maps (as the paper learned software maps); the truth is kept to measure both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from metrics.deconvolution import dr2_from_signal, perfusion_maps
from simulation.dsc_brain import brain_fields
from simulation.dsc_io import (MAP_NAMES, MAP_UNITS, patient_written, remove_stale_tmp, write_dsc_patient,
                               write_json_atomic)
from simulation.dsc_model import AIFParams, aif_curve, dsc_signal, tissue_curves, truth_maps
from simulation.seeding import patient_rng

#: Bump when the output changes for the same settings; recorded in cohort.json (a resume must match it).
DSC_SIMULATOR_VERSION = "1"
ProfileName = Literal["acute", "steno"]


@dataclass(frozen=True)
class DSCProfile:
    """Acquisition of the study imitated. The field of view is fixed; a smaller grid means larger voxels."""

    name: str
    tr: float  # s
    te: float  # s
    frames: int
    shape: tuple[int, int, int]
    fov_mm: tuple[float, float, float]
    snr: float  # baseline white-matter signal / noise SD (per channel); drawn ×0.8–1.25 per patient
    baseline_frames: tuple[float, float]  # bolus arrival, in frames (≥ 8 pre-bolus frames as both studies)
    pipeline_baseline: int  # frames averaged for S0 by the pipeline


PROFILES: dict[str, DSCProfile] = {
    # Heidelberg acute stroke: T2*-GRE EPI, TR 2220 ms, TE 36 ms, 128×128, 25–27 slices of 5 mm (+gap) resized to
    # 21, 50–75 dynamics; 60 frames here, resampled to 80 by the DataModule as the paper did.
    "acute": DSCProfile("acute", 2.22, 0.036, 60, (128, 128, 21), (230.4, 230.4, 126.0), 40.0, (8.0, 11.0), 8),
    # PEGASUS steno-occlusive: FID-EPI, TR 1390 ms, TE 29 ms, 1.8×1.8×5 mm, 80 dynamics.
    "steno": DSCProfile("steno", 1.39, 0.029, 80, (128, 128, 21), (230.4, 230.4, 105.0), 50.0, (8.0, 12.0), 8),
}


@dataclass
class DSCPatient:
    series: np.ndarray  # float32 (X, Y, Z, T)
    brain_mask: np.ndarray  # uint8
    truth: dict[str, np.ndarray]
    pipeline: dict[str, np.ndarray]
    meta: dict
    spacing: tuple[float, float, float]


def get_dsc_profile(name: str) -> DSCProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown DSC profile {name!r}; expected one of {sorted(PROFILES)}")
    return PROFILES[name]


def simulate_dsc_patient(profile: str, patient_id: str, seed: int = 0, shape: tuple[int, int, int] | None = None,
                         frames: int | None = None) -> DSCPatient:
    """One patient; each stage draws from its own child generator of (profile, id, seed)."""
    prof = get_dsc_profile(profile)
    shape = tuple(int(n) for n in (shape or prof.shape))  # type: ignore[assignment]
    frames = int(frames or prof.frames)
    spacing = tuple(f / n for f, n in zip(prof.fov_mm, shape))
    rng_brain, rng_aif, rng_noise = patient_rng(f"dsc-{prof.name}", patient_id, seed).spawn(3)
    f = brain_fields(shape, spacing, prof.name, rng_brain)  # type: ignore[arg-type]
    aif = AIFParams(t0=float(rng_aif.uniform(*prof.baseline_frames)) * prof.tr, peak=float(rng_aif.uniform(250, 350)),
                    beta=float(rng_aif.uniform(1.3, 1.8)), recirc_delay=float(rng_aif.uniform(7.0, 10.0)),
                    recirc_fraction=float(rng_aif.uniform(0.08, 0.15)))
    idx = np.flatnonzero(f.brain)
    flat = {k: getattr(f, k).reshape(-1)[idx] for k in ("cbf", "mtt", "delay", "disp")}
    dr2, ttp = tissue_curves(flat["cbf"], flat["mtt"], flat["delay"], flat["disp"], aif, prof.tr, frames)
    s0 = np.where(f.head, 600.0, 0.0).astype(np.float32)  # scalp/skull shell: signal, no tracer; air: none
    s0[f.brain] = 1000.0 * (1.0 + 0.1 * f.gm_fraction[f.brain])
    sigma = 1000.0 / (prof.snr * float(rng_noise.uniform(0.8, 1.25)))
    series = dsc_signal(s0, prof.te, sigma, rng_noise, dr2, idx).reshape(*shape, frames)
    truth = _volumes(truth_maps(flat["cbf"], flat["mtt"], flat["delay"], flat["disp"], ttp), idx, shape)
    pipe = pipeline_maps(series.reshape(-1, frames)[idx], aif_curve(np.arange(frames) * prof.tr, aif), prof)
    meta = {"TR": prof.tr, "TE": prof.te, "profile": prof.name, "id": patient_id, "seed": int(seed),
            "shape": list(shape), "spacing": [round(s, 6) for s in spacing], "frames": frames, "snr": 1000.0 / sigma,
            "aif": asdict(aif), "lesion": f.lesion, "simulator_version": DSC_SIMULATOR_VERSION,
            "pipeline": "oSVD (block-circulant, OI < 0.035), noise-free AIF, S0 = mean of the first "
                        f"{prof.pipeline_baseline} frames, TTP of the [1,2,1]/4-smoothed curve"}
    pipeline = _volumes(pipe, idx, shape)
    return DSCPatient(series, f.brain.astype(np.uint8), truth, pipeline, meta, spacing)  # type: ignore[arg-type]


def pipeline_maps(signal: np.ndarray, aif: np.ndarray, prof: DSCProfile) -> dict[str, np.ndarray]:
    """What a clinical pipeline reports for brain voxels' signals (V, T); CBV ≥ 0 and MTT in [0, 30] s as
    software clips them."""
    dr2 = dr2_from_signal(signal.T, prof.te, prof.pipeline_baseline)
    maps = perfusion_maps(dr2, aif, prof.tr, "osvd")
    maps["cbv"] = np.clip(maps["cbv"], 0, None)
    maps["mtt"] = np.clip(np.where(maps["cbf"] > 0, maps["cbv"] / np.maximum(maps["cbf"], 1e-6) * 60, 0), 0, 30)
    return maps


def _volumes(maps: dict[str, np.ndarray], idx: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    out = {}
    for name in MAP_NAMES:
        vol = np.zeros(int(np.prod(shape)), np.float32)
        vol[idx] = maps[name]
        out[name] = vol.reshape(shape)
    return out


def _cohort_settings(prof: DSCProfile, n_patients: int, seed: int, shape: tuple[int, int, int], frames: int,
                     ids: list[str]) -> dict:
    try:
        version = metadata.version("tofgan")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"generator": "tofgan.simulation.dsc", "simulator_version": DSC_SIMULATOR_VERSION,
            "tofgan_version": version, "profile": prof.name, "seed": int(seed), "n_patients": int(n_patients),
            "shape": list(shape), "frames": int(frames), "TR": prof.tr, "TE": prof.te,
            "spacing": [round(f / n, 6) for f, n in zip(prof.fov_mm, shape)], "patients": ids,
            "maps": list(MAP_NAMES), "units": MAP_UNITS}


#: Settings a resumed cohort must share with the one on disk.
MATCH_KEYS = ("simulator_version", "profile", "seed", "n_patients", "shape", "frames")


def simulate_dsc_cohort(out_dir: str, profile: ProfileName = "acute", n_patients: int = 12,
                        shape: tuple[int, int, int] | None = None, frames: int | None = None, seed: int = 0,
                        overwrite: bool = False, progress: bool = True) -> Path:
    """Write a cohort; cohort.json is written first with "complete": false and marked complete at the end, so an
    interrupted run resumes (same settings only) and keeps the patients already written. Each patient folder
    appears only when complete (`simulation.dsc_io`). A non-empty folder without our cohort.json is refused."""
    from simulation.cohort import read_cohort_json, settings_differences

    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    prof = get_dsc_profile(profile)
    shape = tuple(int(n) for n in (shape or prof.shape))  # type: ignore[assignment]
    frames = int(frames or prof.frames)
    root = Path(out_dir)
    ids = [f"{prof.name}-{i:03d}" for i in range(n_patients)]
    settings = _cohort_settings(prof, n_patients, seed, shape, frames, ids)  # type: ignore[arg-type]
    old = read_cohort_json(root)
    if old is None and root.exists() and any(not p.name.startswith(".") for p in root.iterdir()):
        raise FileExistsError(f"{root}: not empty and has no cohort.json, so the simulator did not create it; "
                              "choose a new or empty out_dir")
    if old is not None:
        diff = settings_differences(old, settings, MATCH_KEYS)
        if diff and not overwrite:
            raise ValueError(f"{root / 'cohort.json'}: the cohort there was simulated with other settings "
                             f"({'; '.join(diff)}); use another out_dir, the same settings, or overwrite=True")
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(root)
    write_json_atomic(root / "cohort.json", {**settings, "complete": False})
    for pid in tqdm(ids, desc=f"simulate-dsc {prof.name}", disable=not progress):
        if not overwrite and patient_written(root / pid):
            continue
        p = simulate_dsc_patient(prof.name, pid, seed, shape, frames)  # type: ignore[arg-type]
        write_dsc_patient(root / pid, p.series, p.brain_mask, p.truth, p.pipeline, p.meta, p.spacing)
    write_json_atomic(root / "cohort.json", {**settings, "complete": True})
    return root
