"""Seconds per simulated DSC-MRI patient, by stage (target: a 128×128×21×80 patient in a few seconds, one core).

Wall seconds and process CPU seconds are both printed: on a shared machine the CPU time is the better estimate of
what one idle core needs.

Run:  python bench/bench_dsc_simulation.py [--profiles acute steno] [--shape 128 128 21] [--frames 80]
                                           [--repeats 3] [--write]
Stages: brain and lesion parameters, tissue curves (recursive filters on the fine grid), signal with noise,
pipeline maps (ΔR2*, block-circulant oSVD, TTP); `--write` also times writing the patient's 12 NIfTI files
(gzip compression of the 4D series dominates it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# One core, as the target states; must be set before numpy loads its BLAS.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

import simulation.dsc_cohort as dc  # noqa: E402
from simulation.dsc_io import write_dsc_patient  # noqa: E402

STAGES = {"brain_fields": "parameters", "tissue_curves": "tissue curves", "dsc_signal": "signal",
          "pipeline_maps": "pipeline maps"}


def _timed(fn: Callable[..., Any], name: str, log: dict[str, float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        log[name] = log.get(name, 0.0) + time.perf_counter() - t
        return out
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=sorted(dc.PROFILES), choices=sorted(dc.PROFILES))
    ap.add_argument("--shape", nargs=3, type=int, default=[128, 128, 21])
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="also time writing the NIfTI files")
    args = ap.parse_args()
    for name in args.profiles:
        totals, cpu, stage_logs, write_s = [], [], [], []
        for i in range(args.repeats):
            log: dict[str, float] = {}
            originals = {k: getattr(dc, k) for k in STAGES}
            for k in STAGES:
                setattr(dc, k, _timed(originals[k], k, log))
            try:
                t, c = time.perf_counter(), time.process_time()
                p = dc.simulate_dsc_patient(name, f"{name}-{i:03d}", 0, tuple(args.shape), args.frames)
                totals.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            finally:
                for k, fn in originals.items():
                    setattr(dc, k, fn)
            stage_logs.append(log)
            if args.write:
                with tempfile.TemporaryDirectory() as d:
                    t = time.perf_counter()
                    write_dsc_patient(Path(d) / "p", p.series, p.brain_mask, p.truth, p.pipeline, p.meta, p.spacing)
                    write_s.append(time.perf_counter() - t)
        stages = ", ".join(f"{label} {np.median([lg.get(k, 0) for lg in stage_logs]):.2f}"
                           for k, label in STAGES.items())
        line = (f"{name}: {tuple(args.shape)}×{args.frames}, simulate {np.median(totals):.2f} s median of "
                f"{args.repeats} (min {min(totals):.2f}; CPU {np.median(cpu):.2f} s; {stages})")
        if write_s:
            line += f"; write {np.median(write_s):.2f} s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
