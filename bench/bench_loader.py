"""Can the data pipeline feed the GPU? Patches/s the training loader delivers from a 2D and a 3D patch store with
0, 2 and 4 workers, against what the GAN step consumes at the paper's batch size.

The loader is the data modules' own (`CohortDataModule._loader` over `PatchDataset`, min–max normalisation per
patch, shuffled, pinned memory on CUDA, persistent workers), reading a memory-mapped store written here with random
patches of the paper's size (2D 96×96, batch 300; 3D 128×128×64, batch 4). Each worker opens the store itself: the
column `worker_private_dirty_mb` is the most memory a worker wrote itself (Linux smaps), which stays far below the
store size because the patches are read through the shared page cache, not copied into each process.

Consumption comes from a GAN benchmark's JSON (`--gan-json`, rows with `kind` "2d"/"3d" and `samples_per_s`, as
bench/gpu_check.py writes them; bench/bench_gan3d.py rows count as 3D); `input_bound` is true when the loader
delivers fewer patches/s than the step consumes (per GPU: each DDP rank runs its own loader).

    OMP_NUM_THREADS=1 python bench/bench_loader.py --scale tiny               # CPU, seconds
    python bench/bench_loader.py --scale paper --gan-json gpu_check.json --out loader.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamodules.base import CohortDataModule, PatchDataset  # noqa: E402
from datamodules.patch_store import write_patch_store  # noqa: E402

#: kind → (patch size, paper batch, patches in the store) per scale
SCALES: dict[str, dict[str, tuple[tuple[int, ...], int, int]]] = {
    "paper": {"2d": ((96, 96), 300, 6000), "3d": ((128, 128, 64), 4, 96)},
    "tiny": {"2d": ((24, 24), 16, 256), "3d": ((16, 16, 8), 4, 64)},
}


def make_store(root: Path, patch: tuple[int, ...], n: int, seed: int = 0) -> Path:
    """A store of `n` random patches (vessel-like label = bright voxels), written block by block."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 1, *patch), np.float32)
    for i in range(0, n, 64):
        images[i:i + 64] = rng.gamma(2.0, 50.0, size=(min(64, n - i), 1, *patch)).astype(np.float32)
    labels = (images > 250).astype(np.uint8)
    write_patch_store(root, images, labels, {"source": "bench_loader", "patch_size": list(patch)})
    return root


def worker_private_dirty_mb(loader_iter: Any) -> float | None:
    """Largest Private_Dirty memory of the loader's worker processes, in MB (Linux): what a worker wrote itself.
    Pages inherited from the parent and store pages read through the memory map are not counted; a copy of the
    store in a worker would be."""
    workers = getattr(loader_iter, "_workers", None) or []
    sizes = []
    for w in workers:
        try:
            rollup = Path(f"/proc/{w.pid}/smaps_rollup").read_text()
        except OSError:
            continue
        sizes += [int(line.split()[1]) / 1024 for line in rollup.splitlines() if line.startswith("Private_Dirty:")]
    return round(max(sizes), 1) if sizes else None


def measure(store: Path, batch: int, workers: int, seconds: float, max_batches: int) -> dict[str, Any]:
    dm = CohortDataModule(cohort_dir=str(store), batch_size=batch, num_workers=workers)
    loader = dm._loader(PatchDataset(store, normalization="minmax"), shuffle=True, drop_last=True)
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not throughput
    n, t0 = 0, time.perf_counter()
    while n < max_batches and time.perf_counter() - t0 < seconds:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += 1
        _ = b["image"].sum()  # touch the batch as a training step would
    dt = time.perf_counter() - t0
    anon = worker_private_dirty_mb(it)
    del it, loader
    return {"workers": workers, "batch": batch, "batches": n, "seconds": round(dt, 3),
            "patches_per_s": round(n * batch / dt, 1) if dt > 0 else None, "worker_private_dirty_mb": anon,
            "pin_memory": torch.cuda.is_available()}  # fmt: skip


def step_consumption(path: Path | None) -> dict[str, float]:
    """Samples/s of the GAN step per kind ("2d"/"3d"), the fastest row of each, from a benchmark JSON."""
    if path is None or not path.is_file():
        return {}
    data = json.loads(path.read_text())
    rows = data.get("gan2d", []) + data.get("gan3d", []) + data.get("rows", []) if isinstance(data, dict) else data
    out: dict[str, float] = {}
    for row in rows:
        kind = row.get("kind", "3d")
        if row.get("samples_per_s"):
            out[kind] = max(out.get(kind, 0.0), float(row["samples_per_s"]))
    return out


def run(scale: str = "tiny", workers: tuple[int, ...] = (0, 2, 4), seconds: float = 3.0, max_batches: int = 200,
        gan_json: Path | None = None, root: Path | None = None) -> list[dict[str, Any]]:
    need = step_consumption(gan_json)
    rows = []
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        for kind, (patch, batch, n) in SCALES[scale].items():
            store = make_store(Path(tmp) / kind, patch, n)
            store_mb = (Path(store) / "images.npy").stat().st_size / 2**20
            for w in workers:
                row = {"kind": kind, "patch": list(patch), "store_mb": round(store_mb, 1),
                       **measure(store, batch, w, seconds, max_batches)}
                row["step_samples_per_s"] = need.get(kind)
                row["input_bound"] = (row["patches_per_s"] < need[kind]) if kind in need and row["patches_per_s"] else None
                rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| store | patch | batch | workers | patches/s | GPU step needs | input-bound | worker-written MB / store MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        need = f"{r['step_samples_per_s']:.0f}" if r.get("step_samples_per_s") else "–"
        bound = {True: "yes", False: "no", None: "–"}[r.get("input_bound")]
        anon = f"{r['worker_private_dirty_mb']:.0f}" if r.get("worker_private_dirty_mb") is not None else "–"
        lines.append(f"| {r['kind']} | {'×'.join(map(str, r['patch']))} | {r['batch']} | {r['workers']} | "
                     f"{r['patches_per_s']:.0f} | {need} | {bound} | {anon} / {r['store_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2, 4])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row (after the first batch)")
    parser.add_argument("--max-batches", type=int, default=200)
    parser.add_argument("--gan-json", type=Path, help="GAN step figures (bench/gpu_check.py or bench_gan3d.py JSON)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = run(args.scale, tuple(args.workers), args.seconds, args.max_batches, args.gan_json)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
