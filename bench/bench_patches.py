"""Benchmark: 2D patch extraction speed on one full-size PEGASUS-like patient, and the epoch time of the
patch DataLoader reading from an on-disk patch store. Prints figures; asserts nothing.

    python bench/bench_patches.py                      # 41 patients x 1000 patches, batch 64
    python bench/bench_patches.py --patients 10 --workers 0 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.base import PatchDataset
from datamodules.cohort import PatientVolume
from datamodules.patch_store import write_patch_store
from datamodules.patches import PatchSettings, choose_centres, extract_patches

PEGASUS_SHAPE = (312, 384, 127)
PEGASUS_SPACING = (0.5, 0.5, 0.7)


def random_patient(shape: tuple[int, int, int], seed: int) -> PatientVolume:
    """Fallback when the simulator is unavailable: noise image, ellipsoid brain, ~1 % random vessel voxels."""
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    brain = sum(((g - (s - 1) / 2) / (0.45 * s)) ** 2 for g, s in zip(grids, shape)) <= 1
    label = (brain & (rng.random(shape) < 0.01)).astype(np.uint8)
    image = (rng.random(shape, dtype=np.float32) * 0.2 + label).astype(np.float32)
    return PatientVolume("bench", image, label, brain, np.eye(4), PEGASUS_SPACING, "random")


def bench_patient(use_sim: bool, seed: int) -> tuple[PatientVolume, str]:
    if use_sim:
        try:
            from simulation.cohort import simulate_patient

            t = time.perf_counter()
            p = simulate_patient("pegasus", "bench000", seed=seed, scale=1.0)
            src = f"simulated PEGASUS patient {p.image.shape} ({time.perf_counter() - t:.1f} s to simulate)"
            return PatientVolume("bench000", p.image, p.label, p.brain_mask.astype(bool), p.affine, p.spacing,
                                 "simulated"), src
        except Exception as exc:  # simulator missing or unfinished: the benchmark still runs
            print(f"simulator unavailable ({type(exc).__name__}: {exc}); using a random volume")
    return random_patient(PEGASUS_SHAPE, seed), f"random volume {PEGASUS_SHAPE}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=41, help="patients in the store for the epoch timing")
    ap.add_argument("--per-patient", type=int, default=1000, help="patches per patient (500 vessel + 500 random)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--normalization", default="minmax", choices=["minmax", "zscore", "none"])
    ap.add_argument("--no-sim", action="store_true", help="use a random volume even if the simulator exists")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    vol, src = bench_patient(not args.no_sim, args.seed)
    print(f"patient: {src}; vessel fraction {vol.label.mean():.4f}")
    half = args.per_patient // 2
    settings = PatchSettings((96, 96), n_vessel=half, n_random=args.per_patient - half, seed=args.seed)
    extract_patches(vol, settings)  # warm-up
    times, centre_times = [], []
    for r in range(args.repeats):
        s = PatchSettings((96, 96), settings.n_vessel, settings.n_random, seed=args.seed + r)
        t = time.perf_counter()
        choose_centres(vol, s)
        centre_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        ps = extract_patches(vol, s)
        times.append(time.perf_counter() - t)
    best = min(times)
    print(f"2D extraction: {len(ps)} patches 96x96 in {best:.3f} s (best of {args.repeats}) = "
          f"{len(ps) / best:,.0f} patches/s; choosing centres alone {min(centre_times):.3f} s")

    s3 = PatchSettings((128, 128, 64), n_vessel=32, n_random=0, grid=(3, 3, 2), seed=args.seed)
    t = time.perf_counter()
    ps3 = extract_patches(vol, s3)
    dt3 = time.perf_counter() - t
    print(f"3D extraction: {len(ps3)} patches 128x128x64 in {dt3:.3f} s = {len(ps3) / dt3:,.1f} patches/s")
    del ps3

    n_total = args.patients * len(ps)
    tmp = Path(tempfile.mkdtemp(prefix="bench_patches_"))
    try:
        t = time.perf_counter()
        images = np.concatenate([ps.images] * args.patients)
        labels = np.concatenate([ps.labels] * args.patients)
        pids = np.repeat([f"b{i:03d}" for i in range(args.patients)], len(ps))
        store = write_patch_store(tmp / "store", images, labels, {"bench": True}, patient_ids=pids)
        del images, labels
        print(f"store: {n_total} patches ({args.patients} patients x {len(ps)}), "
              f"{(store.images.nbytes + store.labels.nbytes) / 2**30:.2f} GiB, written in "
              f"{time.perf_counter() - t:.1f} s")
        ds = PatchDataset(store.root, None, args.normalization)  # type: ignore[arg-type]
        for w in args.workers:
            dl = DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=w,
                            generator=torch.Generator().manual_seed(0))
            t = time.perf_counter()
            n = sum(b["image"].shape[0] for b in dl)
            dt = time.perf_counter() - t
            print(f"epoch (workers={w}, batch {args.batch_size}, {args.normalization}): {n} patches in {dt:.1f} s "
                  f"= {n / dt:,.0f} patches/s, {len(dl) / dt:,.1f} batches/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
