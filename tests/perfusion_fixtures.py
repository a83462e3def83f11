"""Tiny DSC-MRI perfusion cohorts for tests, written in the on-disk layout the PerfusionDataModule reads.

`write_tiny_cohort(root)` simulates them with the project's simulator (simulation.dsc_cohort) at a tiny size, so
tests exercise the same code path as the paper-sized cohorts. `write_plausible_cohort` is a faster stand-in that
needs no simulator: random-but-plausible curves and maps in the same layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulation.dsc_io import MAP_NAMES, MAP_UNITS, write_dsc_patient, write_json_atomic

TINY_SHAPE = (16, 16, 3)


def write_tiny_cohort(root: str | Path, n_patients: int = 4, shape: tuple[int, int, int] = TINY_SHAPE,
                      profile: str = "acute", seed: int = 0, frames: int | None = None) -> Path:
    """A simulated cohort (simulation.dsc_cohort) of `n_patients` tiny patients, ~0.1 s each at 16×16×3.
    frames None: the profile's (acute 60 at TR 2.22 s, resampled to 80 by the DataModule; steno 80)."""
    from simulation.dsc_cohort import simulate_dsc_cohort

    return simulate_dsc_cohort(str(root), profile=profile, n_patients=n_patients, shape=shape, seed=seed,
                               frames=frames, progress=False)  # type: ignore[arg-type]


def write_plausible_cohort(root: str | Path, n_patients: int = 4, shape: tuple[int, int, int] = TINY_SHAPE,
                           profile: str = "acute", seed: int = 0, frames: int = 80, tr: float = 1.39,
                           te: float = 0.029) -> Path:
    """Gamma-variate dips delayed per voxel, maps as smooth-ish random fields; cohort.json as the simulator's."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"{profile}-{i:03d}" for i in range(n_patients)]
    t = np.arange(frames) * tr
    for k, pid in enumerate(ids):
        rng = np.random.default_rng([seed, k])
        x, y, _ = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        mask = (x**2 + y**2) < 0.8
        cbf = np.where(mask, rng.uniform(20, 60, shape), 0).astype(np.float32)
        mtt = np.where(mask, rng.uniform(3, 6, shape), 0).astype(np.float32)
        delay = np.where(mask, rng.uniform(0, 4, shape), 0).astype(np.float32)
        tt = np.clip(t[None, None, None, :] - 15.0 - delay[..., None], 0, None)
        conc = cbf[..., None] * 1e-3 * tt**3 * np.exp(-tt / 1.5)
        series = (100 * np.exp(-te * 40 * conc) + rng.normal(0, 1, (*shape, frames))).astype(np.float32)
        truth = {"cbf": cbf, "cbv": cbf * mtt / 60, "mtt": mtt, "tmax": delay, "ttp": np.where(mask, 19.5 + delay, 0)}
        pipeline = {m: (v * rng.uniform(0.8, 1.2, shape)).astype(np.float32) for m, v in truth.items()}
        meta = {"TR": tr, "TE": te, "profile": profile, "id": pid, "seed": seed}
        write_dsc_patient(root / pid, series, mask, truth, pipeline, meta, (1.8, 1.8, 5.0))
    write_json_atomic(root / "cohort.json", {
        "profile": profile, "seed": seed, "simulator_version": "fixture", "frames": frames, "TR": tr, "TE": te,
        "patients": ids, "maps": list(MAP_NAMES), "units": MAP_UNITS, "complete": True})
    return root
