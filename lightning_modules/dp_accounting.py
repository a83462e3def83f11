"""Privacy accounting and the DP optimiser of the DP-WGAN (notes: ../shared/notes/dp-privacy.md §2, §4).

- `PublicGradDPOptimizer` / `PublicGradDistributedDPOptimizer`: opacus' (distributed) DP optimiser plus one
  thing opacus lacks: a *public* gradient (the critic's fake-data term) added after the private real-data
  sum has been clipped, noised and divided by the expected batch size. The public term depends only on the
  released critic/generator and fresh noise, so it is post-processing; it is never clipped or noised.
- `epsilon_report`: ε of an accountant history, RDP as the guarantee and PRV alongside (labelled).
  GDP is never reported (opacus warns it can underestimate).
- `noise_for_target` / `steps_within_budget`: σ for a target ε at a planned number of steps, and the
  largest number of steps whose ε stays within a budget (the hard stop).
"""

from __future__ import annotations

import math
from importlib import metadata
from typing import Any

import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

#: Run-level facts every privacy record states (SPEC §3.3: "report σ, sampling rate, steps, δ and the accountant").
GUARANTEE = "rdp"


class PublicGradMixin:
    """Adds `p.public_grad` (set by the module, then cleared) after opacus' clip → sum → noise → /B_exp."""

    params: list[torch.nn.Parameter]

    def scale_grad(self) -> None:
        super().scale_grad()  # type: ignore[misc]
        for p in self.params:
            public = getattr(p, "public_grad", None)
            if public is not None:
                p.grad = p.grad + public.view_as(p).to(p.grad.dtype)
                p.public_grad = None


class PublicGradDPOptimizer(PublicGradMixin, DPOptimizer):
    """Single-process DP optimiser with a public gradient term."""


class PublicGradDistributedDPOptimizer(PublicGradMixin, DistributedDPOptimizer):
    """DDP: noise drawn on rank 0 only, then all-reduce(SUM)/world of the privatised + public gradient."""


def make_accountant(kind: str = GUARANTEE) -> RDPAccountant | PRVAccountant:
    if kind == "rdp":
        return RDPAccountant()
    if kind == "prv":
        return PRVAccountant()
    raise ValueError(f"lightning_modules/dp_accounting.py: accountant must be 'rdp' or 'prv', got {kind!r}")


def accountant_steps(history: list[tuple[float, float, int]]) -> int:
    return int(sum(steps for _, _, steps in history))


def epsilon_of(history: list[tuple[float, float, int]], delta: float, kind: str) -> float:
    """ε of a history at δ with a fresh accountant of `kind` (0 steps → 0; σ = 0 in the history → ∞)."""
    if not history:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in history):
        return math.inf
    accountant = make_accountant(kind)
    accountant.history = [tuple(h) for h in history]  # type: ignore[misc]
    return float(accountant.get_epsilon(delta))


def epsilon_report(history: list[tuple[float, float, int]], delta: float, prv: bool = True) -> dict[str, Any]:
    """{"epsilon": RDP ε (the guarantee), "epsilon_prv": PRV upper ε or None, "prv_note": why None}.

    PRV is tighter (0.4–0.8 lower at the paper's settings) but costs seconds and GBs at 10^5 steps, so it is
    computed only where a record is written (checkpoint, manifest), never per step.
    """
    out: dict[str, Any] = {"epsilon": epsilon_of(history, delta, "rdp"), "epsilon_prv": None, "prv_note": None}
    if prv:
        try:
            out["epsilon_prv"] = epsilon_of(history, delta, "prv")
        except Exception as err:  # noqa: BLE001 - PRV has a limited range (e.g. huge ε); the RDP guarantee stands
            out["prv_note"] = f"PRV accountant failed: {type(err).__name__}: {err}"
    return out


def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """σ (RDP) reaching `target_epsilon` at δ after `steps` steps at rate q (opacus' bisection)."""
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant="rdp", epsilon_tolerance=0.01))  # fmt: skip


def steps_within_budget(budget: float, delta: float, sigma: float, sample_rate: float, limit: int = 10**8) -> int:
    """Largest T with RDP ε(σ, q, T) ≤ budget (ε grows with T: bisection, ~30 ε evaluations)."""
    def eps(t: int) -> float:
        return epsilon_of([(sigma, sample_rate, t)], delta, "rdp") if t else 0.0

    lo, hi = 0, 1
    while hi < limit and eps(hi) <= budget:
        lo, hi = hi, hi * 2
    if hi >= limit and eps(limit) <= budget:
        return limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if eps(mid) <= budget else (lo, mid)
    return lo


def opacus_version() -> str:
    return metadata.version("opacus")
