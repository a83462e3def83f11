"""Cost of FiniteGuard's checks on the paper-width WGAN-GP-SN networks (G ≈ 43 M parameters): one gradient
check per optimizer step (both networks) plus one weight check per batch, next to the Adam steps of both
networks (a lower bound of a training step: forward and backward at batch 300 cost far more).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_finite_guard.py [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from callbacks.finite_guard import FiniteGuard
from networks.gan2d import Generator2D, WGANCritic2D


def _time(fn, n: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    module = torch.nn.ModuleDict({"generator": Generator2D(latent_dim=128, ngf=96, out_size=96),
                                  "critic": WGANCritic2D(ndf=96, in_size=96, norm="spectral")}).to(args.device)
    for p in module.parameters():
        p.grad = torch.randn_like(p)
    opts = {k: torch.optim.Adam(module[k].parameters(), lr=1e-4) for k in ("generator", "critic")}
    guard = FiniteGuard()
    guard._names = {id(p): n for n, p in module.named_parameters()}
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None))
    n_params = sum(p.numel() for p in module.parameters())
    grads = _time(lambda: [guard.on_before_optimizer_step(trainer, module, o) for o in opts.values()], args.repeats)
    weights = _time(lambda: guard._bad_weights(module), args.repeats)
    adam = _time(lambda: [o.step() for o in opts.values()], args.repeats)
    print(f"{args.device}: {n_params / 1e6:.1f} M parameters; gradient checks {grads * 1e3:.1f} ms, weight check "
          f"{weights * 1e3:.1f} ms, Adam steps of both networks {adam * 1e3:.1f} ms (per batch)")


if __name__ == "__main__":
    main()
