"""Simulated TOF-MRA patients and cohorts: the project's embedded default data (SPEC §2 shapes)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from simulation.anatomy import make_brain, tissue_map
from simulation.nifti_io import patient_complete, ras_affine, write_patient
from simulation.profiles import ProfileName, get_profile, scaled_shape
from simulation.rasterize import rasterize
from simulation.render import compose_tof
from simulation.seeding import patient_rng
from simulation.vessel_tree import grow_arteries

#: Bump when the simulator's output changes for the same settings; recorded in cohort.json.
SIMULATOR_VERSION = "2"  # 2: TOF appearance calibrated to real scans (issue 16); same labels, other images


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


#: Settings a resumed or reused cohort must share with the one on disk (cohort.json); any difference is refused.
MATCH_KEYS = ("simulator_version", "profile", "n_patients", "seed", "scale", "id_prefix")
COHORT_JSON = "cohort.json"


def read_cohort_json(root: str | Path) -> dict | None:
    """The simulator's record of a cohort folder, or None. `complete` is False until every patient is written
    (files written before that key existed were written last, i.e. complete)."""
    path = Path(root) / COHORT_JSON
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    meta.setdefault("complete", True)
    return meta


def settings_differences(recorded: dict, wanted: dict, keys: tuple[str, ...] = MATCH_KEYS) -> list[str]:
    """'key: <on disk> on disk, <asked> asked' for every key that differs (empty: same settings)."""
    return [f"{k}: {recorded.get(k)!r} on disk, {wanted.get(k)!r} asked"
            for k in keys if recorded.get(k) != wanted.get(k)]


def _write_json(path: Path, content: dict) -> None:
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(content, indent=2))
    tmp.replace(path)


def _claim_folder(root: Path, settings: dict, overwrite: bool) -> None:
    """Check that `root` may be written with `settings`, and record them (complete: false) before any patient.

    The simulator writes only into a folder that is absent, empty, or holds its own cohort.json; a resume or
    reuse with other settings is refused with the differing keys named, unless `overwrite` (then the patients
    listed in the old cohort.json, and only those, are deleted first).
    """
    old = read_cohort_json(root)
    if old is None:  # a lone cohort.json.part is our own, from a kill during the very first write
        if root.exists() and (not root.is_dir() or any(p.name != "cohort.json.part" for p in root.iterdir())):
            raise FileExistsError(f"{root}: not empty and has no {COHORT_JSON}, so the simulator did not create it; "
                                  "it never writes into such a folder: choose a new or empty out_dir")
    else:
        diff = settings_differences(old, settings)
        if diff and not overwrite:
            raise ValueError(f"{root / COHORT_JSON}: the cohort there was simulated with other settings "
                             f"({'; '.join(diff)}); use another out_dir, the same settings, or overwrite=True")
        if overwrite:
            for pid in old.get("patient_ids") or []:
                folder = root / str(pid)
                if str(pid) and folder.parent == root and folder.is_dir():
                    shutil.rmtree(folder)
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / COHORT_JSON, {**settings, "complete": False})


def simulate_cohort(
    out_dir: str,
    profile: ProfileName = "pegasus",
    n_patients: int = 66,
    seed: int = 0,
    scale: float = 1.0,
    id_prefix: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write `n_patients` simulated patients in the cohort layout and return the cohort folder.

    cohort.json records the settings before the first patient ("complete": false) and is marked complete
    after the last, so an interrupted cohort is resumed only with the same settings; patients already on disk
    are kept unless `overwrite`. Refused: a non-empty folder without cohort.json (not the simulator's), and
    settings that differ from the recorded ones (profile, n_patients, seed, scale, id prefix, simulator version).

    Args:
        out_dir: the cohort folder to create (or to resume, if it holds this simulator's cohort.json).
        profile: study profile (`simulation.profiles`): grid, spacing and appearance of the study imitated.
        n_patients: number of patients.
        seed: base seed; each patient is simulated from (profile, patient id, seed), so cohorts are reproducible.
        scale: field-of-view scale at unchanged spacing (< 1: smaller volumes for demos and tests).
        id_prefix: patient id prefix (None: "<profile>-sim"); ids are "<prefix>-000", "<prefix>-001", ….
        overwrite: simulate again patients already on disk.
        progress: show a progress bar.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    prof = get_profile(profile)
    prefix = id_prefix if id_prefix is not None else f"{prof.name}-sim"
    root = Path(out_dir)
    ids = [f"{prefix}-{i:03d}" for i in range(n_patients)]
    settings = {**_settings(prof.name, n_patients, seed, scale, prefix), "patient_ids": ids}
    _claim_folder(root, settings, overwrite)
    for pid in tqdm(ids, desc=f"simulate {prof.name}", disable=not progress):
        folder = root / pid
        if not overwrite and patient_complete(folder):
            continue
        p = simulate_patient(prof.name, pid, seed=seed, scale=scale)
        write_patient(folder, p.image, p.label, p.brain_mask, p.affine)
    _write_json(root / COHORT_JSON, {**settings, "complete": True})
    return root
