"""Benchmark: what the patch store's statistics cost: writing a store (statistics accumulated in the same pass as
the NaN/binary checks), opening it (statistics and file sizes only: every DataLoader worker opens it), and the
optional full check (`verify="full"`, one reread). Prints figures; asserts nothing.

    python bench/bench_store_integrity.py                 # 10,000 patches of 96x96 (370 MB of images)
    python bench/bench_store_integrity.py --n 41000       # the paper's synthetic set (1.5 GB)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from datamodules.patch_store import PatchStore, write_patch_store
from datamodules.store_stats import ArrayStats


def _seconds(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--dir", default=None, help="scratch folder (default: system temp)")
    a = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (a.n, 1, a.size, a.size)).astype(np.float32)
    labels = (rng.random((a.n, 1, a.size, a.size)) > 0.9).astype(np.uint8)
    tmp = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        def finite_and_binary_only() -> None:  # what write_patch_store checked before it kept statistics
            for i in range(0, len(images), 1024):
                np.isfinite(images[i:i + 1024]).all()
                lab = labels[i:i + 1024]
                ((lab != 0) & (lab != 1)).any()

        checks_only = _seconds(finite_and_binary_only)
        stats_only = _seconds(lambda: (ArrayStats("images").add_all(images), ArrayStats("labels").add_all(labels)))
        write = _seconds(lambda: write_patch_store(tmp / "s", images, labels, {}, overwrite=True))
        open_cheap = _seconds(lambda: PatchStore(tmp / "s"), repeat=20)
        open_full = _seconds(lambda: PatchStore(tmp / "s", verify="full"))
        print(f"{a.n} patches {a.size}x{a.size} ({images.nbytes / 2**20:.0f} MB images):")
        print(f"  NaN/binary checks alone (before) {checks_only:.2f} s; statistics alone (now, same pass)"
              f" {stats_only:.2f} s; write_patch_store total {write:.2f} s")
        print(f"  open (statistics + file sizes) {open_cheap * 1e3:.1f} ms; open with verify='full' {open_full:.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
