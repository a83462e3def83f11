"""One-run white-box DP audit (Steinke, Nasr & Jagielski 2023; shared/notes/dp-privacy.md §7) of the project's DP
optimiser (PublicGradDPOptimizer + Poisson sampler): gradient canaries, each included with probability ½; the
ε lower bound must stay below the claimed ε, and a deliberately broken noise scale (σ/10) must be caught. It guards
against gross implementation errors (missing/wrong noise, unclipped paths), not against subtle accounting bugs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant

from datamodules.dp_data import PoissonBatchSampler
from lightning_modules.dp_accounting import PublicGradDPOptimizer
from metrics.dp_audit import epsilon_from_guesses  # the bound itself is tested in test_dp_audit_canaries.py

pytestmark = pytest.mark.slow
KS = (10, 25, 50, 100, 200, 300)


def audit(sigma: float, q: float, steps: int, sigma_impl: float, m: int = 1000, n0: int = 500, d0: int = 50) -> tuple[float, float]:
    """(claimed ε at δ = 1e-5, audit lower bound at 95 %) of `steps` DP-SGD steps on a linear model."""
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    inc = rng.random(m) < 0.5
    x = torch.zeros(n0 + m, d0 + m)
    x[:n0, :d0] = torch.randn(n0, d0, generator=g) * 0.3
    x[n0 + np.arange(m), d0 + np.arange(m)] = 10.0  # each canary's gradient: its own coordinate, clipped to C = 1
    x = torch.cat([x[:n0], x[n0:][torch.from_numpy(inc)]])
    model = torch.nn.Linear(d0 + m, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    gsm = GradSampleModule(model, loss_reduction="mean")
    opt = PublicGradDPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=sigma_impl, max_grad_norm=1.0,
                                expected_batch_size=q * len(x), loss_reduction="mean", generator=g)  # fmt: skip
    accountant = RDPAccountant()
    opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=q))
    for batch in PoissonBatchSampler([np.asarray([i]) for i in range(len(x))], q, steps, seed=1):
        opt.zero_grad(set_to_none=True)
        if batch:
            (-gsm(x[batch])).mean().backward()
        else:
            model.weight.grad_sample = torch.zeros((0, *model.weight.shape))
        model.weight.public_grad = torch.zeros_like(model.weight)  # the public-term path, exercised (zero here)
        opt.step()
    claimed = RDPAccountant()
    claimed.history = [(sigma, q, accountant.history[0][2])]
    scores = model.weight.detach()[0, d0:].numpy()
    order = np.argsort(scores)
    best = max(epsilon_from_guesses(m, 2 * k, int(inc[order[-k:]].sum() + (~inc[order[:k]]).sum()), 1e-5, 0.05 / len(KS))
               for k in KS)  # fmt: skip
    return claimed.get_epsilon(1e-5), best


def test_correct_noise_stays_below_its_claim() -> None:
    claimed, bound = audit(sigma=4.0, q=0.5, steps=10, sigma_impl=4.0)
    assert bound <= claimed, (bound, claimed)


def test_noise_at_a_tenth_of_the_claimed_sigma_is_caught() -> None:
    claimed, bound = audit(sigma=4.0, q=0.5, steps=10, sigma_impl=0.4)
    assert bound > claimed, (bound, claimed)
