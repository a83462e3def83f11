"""Simulated TOF-MRA patients and cohorts: the project's embedded default data (SPEC §2 shapes)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from simulation.anatomy import make_brain, tissue_map
from simulation.nifti_io import patient_complete, ras_affine, write_patient
from simulation.profiles import get_profile, scaled_shape
from simulation.rasterize import rasterize
from simulation.render import compose_tof
from simulation.seeding import patient_rng
from simulation.vessel_tree import grow_arteries

#: Bump when the simulator's output changes for the same settings; recorded in cohort.json.
SIMULATOR_VERSION = "1"


@dataclass
class SimulatedPatient:
    image: np.ndarray  # float32 (x, y, z)
    label: np.ndarray  # uint8 {0, 1}
    brain_mask: np.ndarray  # uint8 {0, 1}
    affine: np.ndarray  # (4, 4) float64, RAS
    spacing: tuple[float, float, float]
    patient_id: str = ""


def simulate_patient(profile: str, patient_id: str, seed: int = 0, scale: float = 1.0) -> SimulatedPatient:
    """One patient, fully determined by (profile, patient_id, seed) and the scale.

    Each stage draws from its own child generator, so e.g. a noise-model change leaves anatomy intact.
    """
    prof = get_profile(profile)
    shape = scaled_shape(prof, scale)
    spacing = prof.spacing
    rng_brain, rng_tree, rng_tissue, rng_image = patient_rng(prof.name, patient_id, seed).spawn(4)
    brain = make_brain(shape, spacing, scale, rng_brain)
    fov = np.asarray(shape) * np.asarray(spacing)
    lines = grow_arteries(brain, fov, scale, rng_tree, prof.tortuosity)
    vessels = rasterize(lines, shape, spacing)
    label = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    label[vessels.index[vessels.occupancy >= 0.5]] = 1
    label = label.reshape(shape)
    brain_mask = brain.mask(shape, spacing)
    brain_mask |= label  # surface arteries belong to the intracranial space
    tissue = tissue_map(brain_mask, spacing, prof, rng_tissue, scale=scale)
    image = compose_tof(tissue, vessels, prof, rng_image)
    return SimulatedPatient(image, label, brain_mask, ras_affine(spacing, shape), spacing, patient_id)


def _settings(profile: str, n_patients: int, seed: int, scale: float, id_prefix: str) -> dict:
    prof = get_profile(profile)
    try:
        pkg_version = metadata.version("tofgan")
    except metadata.PackageNotFoundError:
        pkg_version = "unknown"
    return {
        "generator": "tofgan.simulation",
        "simulator_version": SIMULATOR_VERSION,
        "tofgan_version": pkg_version,
        "profile": prof.name,
        "profile_settings": asdict(prof),
        "n_patients": int(n_patients),
        "seed": int(seed),
        "scale": float(scale),
        "id_prefix": id_prefix,
        "shape": list(scaled_shape(prof, scale)),
        "spacing": list(prof.spacing),
    }


_MATCH_KEYS = ("simulator_version", "profile", "seed", "scale", "id_prefix")


def simulate_cohort(
    out_dir: str,
    profile: str = "pegasus",
    n_patients: int = 66,
    seed: int = 0,
    scale: float = 1.0,
    id_prefix: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write `n_patients` simulated patients in the cohort layout and return the cohort folder.

    Patients already on disk are kept unless `overwrite` (a cohort can be resumed after a crash);
    cohort.json is written last, so its absence marks an unfinished cohort.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    prof = get_profile(profile)
    prefix = id_prefix if id_prefix is not None else f"{prof.name}-sim"
    root = Path(out_dir)
    settings = _settings(prof.name, n_patients, seed, scale, prefix)
    manifest = root / "cohort.json"
    if manifest.is_file() and not overwrite:
        old = json.loads(manifest.read_text())
        diff = [k for k in _MATCH_KEYS if old.get(k) != settings[k]]
        if diff:
            raise ValueError(f"{manifest}: existing cohort was made with other settings ({', '.join(diff)}); "
                             "use overwrite=True or another out_dir")
        manifest.unlink()  # re-written below once every patient is present
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"{prefix}-{i:03d}" for i in range(n_patients)]
    for pid in tqdm(ids, desc=f"simulate {prof.name}", disable=not progress):
        folder = root / pid
        if not overwrite and patient_complete(folder):
            continue
        p = simulate_patient(prof.name, pid, seed=seed, scale=scale)
        write_patient(folder, p.image, p.label, p.brain_mask, p.affine)
    settings["patient_ids"] = ids
    tmp = manifest.with_suffix(".json.part")
    tmp.write_text(json.dumps(settings, indent=2))
    tmp.replace(manifest)
    return root
