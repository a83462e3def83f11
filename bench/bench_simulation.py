"""Seconds per simulated patient, per study profile (target: a full-size patient in <= 10 s on one core).

Run:  python bench/bench_simulation.py [--profiles pegasus 1000plus] [--repeats 3] [--scale 1.0] [--write]
                                       [--label tests/data/ixi-vessel-labels/IXI020-Guys-0700_vessels_manual.nii.gz]
Times `simulate_patient` (tree, rasterisation, anatomy, rendering); `--write` also times writing the
patient's three NIfTI files (gzip compression, usually comparable to the simulation itself); `--label`
also times `render_tof` over that vessel label (what `tofgan render-tof` does, without the file writing).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# One core, as the target states; must be set before numpy loads its BLAS.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

from simulation.cohort import simulate_patient  # noqa: E402
from simulation.nifti_io import write_patient  # noqa: E402
from simulation.profiles import PROFILES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=sorted(PROFILES), choices=sorted(PROFILES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--write", action="store_true", help="also time writing the NIfTI files")
    ap.add_argument("--label", default=None, help="also time render_tof over this vessel-label NIfTI")
    args = ap.parse_args()

    for name in args.profiles:
        sim_s, write_s = [], []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            p = simulate_patient(name, f"bench-{i:03d}", seed=0, scale=args.scale)
            sim_s.append(time.perf_counter() - t0)
            if args.write:
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    write_patient(Path(tmp) / p.patient_id, p.image, p.label, p.brain_mask, p.affine)
                    write_s.append(time.perf_counter() - t0)
        line = (f"{name:9s} scale={args.scale:g} shape={p.image.shape}: simulate {np.mean(sim_s):.2f} s/patient "
                f"(min {np.min(sim_s):.2f}, max {np.max(sim_s):.2f}, n={args.repeats})")
        if write_s:
            line += f"; write NIfTI {np.mean(write_s):.2f} s/patient"
        print(line, flush=True)
        if args.label:
            time_render(args.label, name, args.repeats)


def time_render(label_path: str, profile: str, repeats: int) -> None:
    import nibabel as nib

    from simulation.render import derive_brain_mask, render_tof

    nii = nib.load(label_path)
    lab = (np.asarray(nii.dataobj) > 0).astype(np.uint8)
    spacing = tuple(float(z) for z in nii.header.get_zooms()[:3])
    seconds = []
    for i in range(repeats):
        t0 = time.perf_counter()
        render_tof(lab, spacing, profile, np.random.default_rng(i), brain_mask=derive_brain_mask(lab, spacing))
        seconds.append(time.perf_counter() - t0)
    print(f"{profile:9s} render_tof {Path(label_path).name} shape={lab.shape}: {np.mean(seconds):.2f} s "
          f"(min {np.min(seconds):.2f}, n={repeats})", flush=True)


if __name__ == "__main__":
    main()
