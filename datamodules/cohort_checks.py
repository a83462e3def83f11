"""Checks run before training starts: which cohort folder may be simulated into, and every split's patients
validated (so a broken test patient fails `tofgan fit` at setup, not `tofgan test` after training).

Auto-simulation rule (documented in configs/data/*.yaml and docs/DATA.md): a DataModule with `simulate` set
simulates only into the *default simulated cohort*, a folder `data/simulated/<name>` whose name starts with the
profile's name (`data/simulated/pegasus`, `data/simulated/pegasus-cpu`, `data/simulated/1000plus`, ...), and
only while that folder is absent, empty, or an unfinished cohort of the simulator with the same settings. Any
other cohort_dir must already hold a cohort: a typo in cohort_dir fails instead of simulating a new cohort, and
the simulator never writes into a user's folder. A finished simulated cohort is used wherever it lies, provided
its cohort.json records the settings of `simulate`; other settings are refused, naming the differing keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamodules.cohort import CohortError, PatientRecord, has_cohort_files, load_patient
from datamodules.patch_store import HASH_CACHE_NAME, _atomic_write_text, source_entries
from datamodules.patches import PatchSettings, check_patch_fits

log = logging.getLogger(__name__)

COHORT_JSON = "cohort.json"
VALIDATED_NAME = "validated_patients.json"
#: Bump when load_patient's checks change, so patients validated under older rules are checked again.
VALIDATION_VERSION = "1"


def read_cohort_json(root: Path) -> dict | None:
    """The simulator's record of a cohort folder (None if absent). `complete` is False while patients are
    still being written; files from before that key existed were written last, i.e. complete. (Read as
    simulation.cohort.read_cohort_json does; the data layer does not import the simulator.)"""
    path = root / COHORT_JSON
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CohortError(f"{path}: not valid JSON ({exc})") from exc
    meta.setdefault("complete", True)
    return meta


def is_default_simulated_dir(cohort_dir: Path, profile: str) -> bool:
    """True for data/simulated/<profile>…, the only place auto-simulation writes (see module docstring)."""
    path = cohort_dir.resolve()
    return path.parent.name == "simulated" and path.parent.parent.name == "data" and path.name.startswith(profile)


def _differences(meta: dict, spec: Any) -> list[str]:
    from simulation.cohort import SIMULATOR_VERSION  # lazy: only reached when `simulate` is set

    want = {"profile": spec.profile, "n_patients": spec.n_patients, "seed": spec.seed, "scale": float(spec.scale)}
    out = [f"{k}: {meta.get(k)!r} in cohort.json, {v!r} in `simulate`" for k, v in want.items() if meta.get(k) != v]
    if meta.get("simulator_version", "1") != SIMULATOR_VERSION:  # same settings, other images: delete and re-run
        out.append(f"simulator_version: {meta.get('simulator_version', '1')!r} in cohort.json, {SIMULATOR_VERSION!r} "
                   "now (the simulator changed; delete the folder to simulate it anew)")
    return out


def needs_simulation(cohort_dir: Path, spec: Any | None) -> bool:
    """Decide whether `spec` (a SimulationSpec or None) may and must simulate into cohort_dir; raise a
    CohortError naming the folder when the folder cannot be used as it is."""
    meta = read_cohort_json(cohort_dir)
    if spec is None:
        if meta is not None and not meta["complete"]:
            raise CohortError(f"{cohort_dir / COHORT_JSON}: an unfinished simulated cohort (its simulation was "
                              "interrupted); finish it with `tofgan simulate` and the same settings")
        if not has_cohort_files(cohort_dir):
            raise CohortError(f"{cohort_dir}: no cohort found (expected cohort.csv or <patient_id>/image.nii.gz "
                              "folders); point cohort_dir at a cohort or set `simulate`")
        return False
    if meta is not None:
        diff = _differences(meta, spec)
        if diff:
            raise CohortError(f"{cohort_dir / COHORT_JSON}: this cohort was simulated with other settings "
                              f"({'; '.join(diff)}); point cohort_dir at another folder or set `simulate` to "
                              "the cohort's settings")
        if meta["complete"]:
            return False
    elif cohort_dir.exists() and (not cohort_dir.is_dir() or any(cohort_dir.iterdir())):
        raise CohortError(f"{cohort_dir}: holds files the simulator did not make (no cohort.json); set "
                          "`simulate: null` to use it as your cohort, or point cohort_dir at an empty folder")
    if not is_default_simulated_dir(cohort_dir, spec.profile):
        state = "holds an unfinished simulated cohort" if meta is not None else "holds no cohort"
        raise CohortError(f"{cohort_dir}: {state}, and auto-simulation writes only to the default simulated "
                          f"cohort data/simulated/{spec.profile}…; check cohort_dir for a typo, run `tofgan simulate "
                          f"--out_dir {cohort_dir} ...` to simulate there on purpose, or set `simulate: null`")
    return True


def listed_patient_ids(cohort_dir: Path) -> list[str] | None:
    """Patient ids listed in a simulated cohort's cohort.json (extra folders are not part of it), or None."""
    meta = read_cohort_json(cohort_dir)
    ids = meta.get("patient_ids") if meta else None
    return [str(i) for i in ids] if isinstance(ids, list) else None


# ----------------------------------------------------------------------------- patient validation
def _content_key(files: dict[str, dict], prep: dict | None = None) -> str:
    content = {"v": VALIDATION_VERSION, "files": {kind: f["sha256"] for kind, f in sorted(files.items())}}
    if prep is not None:  # resampling changes the shape the patch-fit check compares with
        content["prep"] = prep
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]


def validate_patients(records: Sequence[PatientRecord], cache_dir: Path,
                      patch_settings: PatchSettings | None = None) -> None:
    """Load every patient of `records` (all checks of `load_patient`, voxels included) and check that the
    patches fit its volume; raises the CohortError of the first bad patient.

    Each patient is loaded once per file content: `cache_dir/validated_patients.json` maps a hash of the
    files' sha256 (cached by size and mtime, shared with the patch cache) to the volume shape.
    """
    if not records:
        return
    cache_file = cache_dir / VALIDATED_NAME
    try:
        done: dict[str, list[int]] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except json.JSONDecodeError:
        done = {}
    sources = source_entries(records, cache_dir / HASH_CACHE_NAME)
    changed = False
    for rec in records:
        key = _content_key(sources[rec.patient_id], rec.prep.to_dict() if rec.prep is not None else None)
        if key not in done:
            vol = load_patient(rec)
            done[key], changed = list(vol.image.shape), True
        if patch_settings is not None:
            too_big = any(s > n for s, n in zip(patch_settings.cut_size, done[key]))
            if too_big:
                check_patch_fits(load_patient(rec), patch_settings)  # raises, naming file and sizes
    if changed:
        _atomic_write_text(cache_file, json.dumps(done))
    log.info("validated %d patients", len(records))
