"""One-run empirical DP audit (Steinke, Nasr, Jagielski 2023, arXiv 2305.08846): a lower bound on ε from a
single training run, to catch gross implementation errors of a DP step (missing or mis-scaled noise, unclipped
paths) — not a tight measurement (notes: ../shared/notes/dp-privacy.md §7).

m canaries are each included in the training data independently with probability ½; after training each
canary gets a score; the auditor guesses "in" for the k₊ highest and "out" for the k₋ lowest. If the mechanism
is (ε, δ)-DP, the number of correct guesses is stochastically dominated by Binomial(r, e^ε/(1+e^ε)) up to a δ
term (the paper's Theorem 5.2 / Appendix D code, reproduced in `p_value`). The largest ε rejected at level p
is the lower bound; it exceeds the claimed ε only when the implementation is broken (with probability ≤ p).

`audit_dp_step` / `audit_dp_training` run the white-box variant against a DP-SGD step given as a callable (opacus'
real step, or a LightningModule's critic step driven by a Trainer): gradient canaries scored by the parameter
movement along each canary's own clipped-gradient direction.
`epsilon_lower_bound` is the generic part, also used for the black-box GAN canary audit in `workflows.audit`.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

DEFAULT_K = (10, 25, 50, 100, 200, 300)


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P-value of "v of r guesses correct" under (ε, δ)-DP with m canaries (Steinke et al. 2023, App. D)."""
    q = 1 / (1 + math.exp(-eps))
    beta = scipy.stats.binom.sf(v - 1, r, q)  # P[Binomial(r, q) ≥ v]
    i = np.arange(1, v + 1)
    alpha = float(np.max(np.cumsum(scipy.stats.binom.pmf(v - i, r, q)) / i)) if v > 0 else 0.0  # the paper's loop
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_from_guesses(m: int, r: int, v: int, delta: float, p: float) -> float:
    """Largest ε with p_value < p (bisection, 30 halvings, as the paper's code); 0 when none is rejected."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"metrics/dp_audit.py: need 0 ≤ v ≤ r ≤ m, got v={v}, r={r}, m={m}")
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < p:
        hi += 1
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) < p else (lo, mid)
    return lo


@dataclass
class AuditResult:
    """Outcome of one audit; `violation` = the empirical lower bound exceeds the claimed ε."""

    claimed_epsilon: float
    epsilon_lower_bound: float
    delta: float
    confidence: float
    n_canaries: int
    n_included: int
    best_k: int
    correct: int
    guesses: int
    canary_auc: float
    violation: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def epsilon_lower_bound(scores: np.ndarray, included: np.ndarray, claimed_epsilon: float, delta: float = 1e-5,
                        k_values: Sequence[int] = DEFAULT_K, confidence: float = 0.95) -> AuditResult:
    """Guess "in" for the k highest and "out" for the k lowest scores, for each k (Bonferroni over the k's),
    and return the best lower bound at `confidence`. Higher score = more likely included."""
    scores, included = np.asarray(scores, np.float64), np.asarray(included, bool)
    m = len(scores)
    ks = [k for k in k_values if 2 * k <= m] or [m // 2]
    p = (1 - confidence) / len(ks)
    order = np.argsort(scores, kind="stable")
    best = (-1.0, ks[0], 0)
    for k in ks:
        v = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        eps = epsilon_from_guesses(m, 2 * k, v, delta, p)
        if eps > best[0]:
            best = (eps, k, v)
    from metrics.membership import auc

    eps_lb, k, v = best
    return AuditResult(float(claimed_epsilon), float(eps_lb), delta, confidence, m, int(included.sum()), k, v, 2 * k,
                       auc(scores[included], scores[~included]), bool(eps_lb > claimed_epsilon))


# ----------------------------------------------------------------------------- white-box DP-SGD audit
def dirac_canaries(n_features: int, first: int, m: int, value: float = 10.0) -> torch.Tensor:
    """m inputs with `value` on their own coordinate first+j: through a linear first layer each per-sample
    gradient is a Dirac on one weight column (clipped to C in a known direction), the strongest canary."""
    x = torch.zeros(m, n_features)
    x[torch.arange(m), first + torch.arange(m)] = value
    return x


def canary_directions(model: nn.Module, loss: Callable[[torch.Tensor], torch.Tensor], canaries: torch.Tensor,
                      chunk: int = 256) -> torch.Tensor:
    """(m, P) unit per-sample gradients of `loss(model(x))` at the current parameters (torch.func, no hooks)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return loss(functional_call(model, p, (x[None],))).sum()

    rows = []
    for i in range(0, len(canaries), chunk):
        g = vmap(grad(one), in_dims=(None, 0))(params, canaries[i:i + chunk])
        flat = torch.cat([g[k].flatten(1) for k in params], 1)
        rows.append(flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return torch.cat(rows)


def audit_dp_training(
    model: nn.Module,
    make_training: Callable[[nn.Module], Callable[[list[torch.Tensor]], None]],
    loss: Callable[[torch.Tensor], torch.Tensor],
    records: torch.Tensor,
    canaries: torch.Tensor,
    sample_rate: float,
    steps: int,
    claimed_epsilon: float,
    delta: float = 1e-5,
    seed: int = 0,
    k_values: Sequence[int] = DEFAULT_K,
    confidence: float = 0.95,
) -> AuditResult:
    """White-box one-run audit of a DP-SGD training: canaries each included with probability ½, `steps` Poisson
    batches (rate `sample_rate`) drawn here, the training under audit run on them once, and every canary scored by
    the parameter movement along its own per-sample gradient direction (descent = evidence of inclusion).

    Args:
        model: the network the DP steps update (its parameters are read before and after training).
        make_training: called once with `model` after the canary directions are taken (so that opacus hooks it
            installs never see those passes); returns a function that runs one DP-SGD step per given batch
            (B, …), B possibly 0 — the implementation under audit (e.g. an opacus `DPOptimizer`, or a
            LightningModule's critic step driven by a Trainer).
        loss: per-record loss of the model output that the DP step descends (defines each canary's gradient).
        records: ordinary training records; canaries: m canary records.
        sample_rate, steps: Poisson sampling rate q and number of steps, as the accountant assumed them.
        claimed_epsilon: the ε the implementation's accountant reports for (σ, q, steps, δ).
    """
    rng = np.random.default_rng(seed)
    included = rng.random(len(canaries)) < 0.5
    data = torch.cat([records, canaries[torch.from_numpy(included)]])
    batches = [data[torch.from_numpy(np.flatnonzero(rng.random(len(data)) < sample_rate))] for _ in range(steps)]
    directions = canary_directions(model, loss, canaries)
    train = make_training(model)
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    train(batches)
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    scores = -(directions @ moved.to(directions)).numpy()
    return epsilon_lower_bound(scores, included, claimed_epsilon, delta, k_values, confidence)


def audit_dp_step(
    model: nn.Module,
    make_dp_step: Callable[[nn.Module], Callable[[torch.Tensor], None]],
    loss: Callable[[torch.Tensor], torch.Tensor],
    records: torch.Tensor,
    canaries: torch.Tensor,
    sample_rate: float,
    steps: int,
    claimed_epsilon: float,
    **kwargs: object,
) -> AuditResult:
    """`audit_dp_training` for an implementation given as one DP-SGD step on a batch (B, …), B possibly 0
    (e.g. forward + backward through an opacus `GradSampleModule` and `DPOptimizer.step()`)."""

    def make_training(net: nn.Module) -> Callable[[list[torch.Tensor]], None]:
        step = make_dp_step(net)

        def train(batches: list[torch.Tensor]) -> None:
            for batch in batches:
                step(batch)

        return train

    return audit_dp_training(model, make_training, loss, records, canaries, sample_rate, steps, claimed_epsilon,
                             **kwargs)  # type: ignore[arg-type]


def write_canary_set(path: str, n_canaries: int, patch_size: list[int], seed: int = 0) -> dict[str, object]:
    """Write canary patches for the GAN-level one-run DP audit (train with them, then `tofgan audit --canaries`).

    m = n_canaries random-texture images in [-1, 1] with sparse random labels, each marked "included" with
    probability ½ (npz: images (m,1,…) f32, labels (m,1,…) u8, included (m,) bool). Written to a temporary file and
    renamed: no partial canary file is left behind.

    The whole audit (the canary file is private: whoever knows which canaries were included can fake the audit):
      1. write the canaries: this function, `tofgan canaries --path F --n_canaries 1000 --patch_size [96,96]`;
      2. train with them: `tofgan fit ... --data.init_args.canaries F` (`GANPatchDataModule` adds the included
         ones to the training loader; the DP data module adds each as its own Poisson unit, so q and δ count them);
      3. `tofgan audit --checkpoint C --canaries F`: every canary scored by its distance to the synthetic set,
         the ε lower bound against the checkpoint's claimed ε (audit.json "canary_audit").

    Args:
        path: output .npz file (replaced if present).
        n_canaries: number of canaries m; the bound needs a few hundred (guesses k ≤ m/2 for k in 10…300), and
            each included canary is one extra training record, so keep m small against the training patches.
        patch_size: the GAN data's patch_size ([H, W] or [H, W, D]).
        seed: seed of the textures, labels and inclusion draw.

    Returns:
        {"path", "sha256", "canaries": m, "included": number marked included}.
    """
    m = n_canaries
    if m < 2 or len(patch_size) not in (2, 3) or min(patch_size) < 1:
        raise ValueError(f"{path}: need m ≥ 2 canaries and a patch_size of 2 or 3 positive entries, got m={m},"
                         f" patch_size={list(patch_size)}")
    rng = np.random.default_rng(seed)
    shape = (m, 1, *[int(s) for s in patch_size])
    images = rng.uniform(-1, 1, shape).astype(np.float32)
    labels = (rng.random(shape) < 0.05).astype(np.uint8)
    included = rng.random(m) < 0.5
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, images=images, labels=labels, included=included)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"path": str(out), "sha256": sha, "canaries": m, "included": int(included.sum())}
