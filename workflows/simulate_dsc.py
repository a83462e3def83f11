"""`tofgan simulate-dsc`: write a simulated DSC-MRI perfusion cohort (issue 14; layout in README "simulate-dsc")."""

from __future__ import annotations

from pathlib import Path

from simulation.dsc_cohort import ProfileName, simulate_dsc_cohort


def simulate_dsc(
    out_dir: str,
    profile: ProfileName = "acute",
    n_patients: int = 12,
    shape: tuple[int, int, int] | None = None,
    frames: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Simulate a DSC-MRI perfusion cohort: 4D series, brain mask, true and oSVD-pipeline CBF/CBV/MTT/Tmax/TTP maps.

    Each patient is determined by (profile, patient id, seed) and the grid; a killed run resumes with the same
    settings and never leaves a half-written patient.

    Args:
        out_dir: cohort folder to create (or to resume, if it holds this simulator's cohort.json).
        profile: "acute" (Heidelberg-like acute stroke: TR 2.22 s, TE 36 ms, 60 frames, core + penumbra) or "steno"
            (PEGASUS-like steno-occlusive: TR 1.39 s, TE 29 ms, 80 frames, delayed and dispersed territories).
        n_patients: number of patients (the paper: acute 203 used, steno 70).
        shape: grid (X, Y, Z); null: the profile's 128×128×21. The field of view is fixed, so a smaller grid has
            larger voxels (e.g. [32, 32, 6] for CPU runs).
        frames: frames acquired; null: the profile's (acute 60, steno 80).
        seed: base seed.
        overwrite: simulate again patients already on disk (and accept changed settings).
        progress: show a progress bar.
    """
    return simulate_dsc_cohort(out_dir, profile=profile, n_patients=n_patients, shape=shape, frames=frames,
                               seed=seed, overwrite=overwrite, progress=progress)
