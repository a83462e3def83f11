"""Cost of a DP critic step (opacus per-sample clipping + noise + public fake term) vs a non-private step.

Same module, networks, sampling and batch: DPWGAN with σ = ∞ (the non-private reference: no per-sample hooks, no
clipping or noise) vs σ = 1 at patch level vs σ = 1 at patient level (k patches per patient, per-patient mean
gradients clipped). Also the parent WGANGP weight-clipped step (concatenated real+fake forward) for reference.
n_critic is set beyond the run length, so only critic steps are timed (median ms per training_step); the whole set
is timed `--repeats` times in turn and each row keeps its fastest median (the box is shared: this damps load drift).
Also timed: `fake_term: joint` (real and fake rows clipped together, one hooked pass over 2B rows).
    OMP_NUM_THREADS=1 python bench/bench_dp.py --ndf 8 --size 48 --batch 32 --steps 60
Targets (issue 12): DP ≤ 1.5× non-DP; per-patient ≤ 2× non-DP.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from lightning_modules.dp_wgan import DPWGAN  # noqa: E402
from lightning_modules.wgan import WGANGP  # noqa: E402
from networks.discriminator2d import DPCritic2D  # noqa: E402
from networks.gan2d import Generator2D  # noqa: E402
from tests.dp_helpers import TinyDPData  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args: object) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.times.append(time.perf_counter() - self.t0)


def ShapedData(size: int, **kw: object) -> TinyDPData:
    return TinyDPData(size=size, **kw)  # type: ignore[arg-type]


def time_steps(module: L.LightningModule, data: L.LightningDataModule, steps: int) -> float:
    timer = StepTimer()
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, use_distributed_sampler=False, max_steps=steps, callbacks=[timer],
              num_sanity_val_steps=0).fit(module, datamodule=data)  # fmt: skip
    return 1000 * statistics.median(timer.times[5:])  # skip warm-up


def nets(args: argparse.Namespace) -> tuple[Generator2D, DPCritic2D]:
    torch.manual_seed(0)
    return Generator2D(latent_dim=64, ngf=args.ngf, out_size=args.size), DPCritic2D(ndf=args.ndf, in_size=args.size, norm=args.norm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ndf", type=int, default=8)
    ap.add_argument("--ngf", type=int, default=16)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--norm", default="group")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--per_patient", type=int, default=50)
    ap.add_argument("--k", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    common = dict(latent_dim=64, n_critic=10**6, weight_clip=0.01, dp_noise_seed=0, n_sample_grid=2)
    patch = dict(n_patients=args.patients, per_patient=args.per_patient, batch_size=args.batch)
    runs: dict[str, tuple] = {
        "WGANGP weight clip (concatenated forward)": (lambda g, c: WGANGP(g, c, latent_dim=64, n_critic=10**6, gp_weight=0.0,
                                                      weight_clip=0.01, n_sample_grid=2), patch),  # fmt: skip
        "DPWGAN σ=∞ (non-private, same step)": (lambda g, c: DPWGAN(g, c, noise_multiplier=float("inf"), **common), patch),
        "DPWGAN σ=1 patch level": (lambda g, c: DPWGAN(g, c, noise_multiplier=1.0, **common), patch),
        "DPWGAN σ=1 patch level, fake_term joint": (lambda g, c: DPWGAN(g, c, noise_multiplier=1.0, fake_term="joint", **common), patch),
    }
    for k in args.k:
        m = max(1, args.batch // k)
        data = dict(unit="patient", n_patients=args.patients, per_patient=args.per_patient, patients_per_step=m, patches_per_patient=k)
        runs[f"DPWGAN σ=1 patient level, m={m} × k={k}"] = (
            lambda g, c, m=m, k=k: DPWGAN(g, c, noise_multiplier=1.0, fake_batch_size=m * k, **common), data)
    rows: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (make, data_kw) in runs.items():
            g, c = nets(args)
            ms = time_steps(make(g, c), ShapedData(args.size, **data_kw), args.steps)
            rows[name] = min(ms, rows.get(name, float("inf")))
    base = rows["DPWGAN σ=∞ (non-private, same step)"]
    c = nets(args)[1]
    print(f"critic ndf {args.ndf} ({sum(p.numel() for p in c.parameters())} params), {args.size}×{args.size}, "
          f"B_exp {args.batch}, norm {args.norm}, 1 thread; median ms per critic step over {args.steps - 5} steps")
    for name, ms in rows.items():
        print(f"  {name:52s} {ms:8.1f} ms   {ms / base:5.2f}× non-private")


if __name__ == "__main__":
    main()
