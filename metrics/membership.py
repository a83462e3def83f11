"""Membership inference against a synthetic set: does it reveal who was in the GAN's training cohort?

Attacks (each a score per query patch, higher = "member"; notes: ../shared/notes/dp-privacy.md §6):
- `nn`: GAN-Leaks full black-box (Chen et al., CCS 2020): −distance to the nearest synthetic sample;
- `nn_calibrated`: the same minus the distance to an attacker reference set of real non-member patients
  (DOMIAS's simplification of GAN-Leaks' reference-model calibration);
- `mc@r<p>`: Monte-Carlo ε-ball (Hilprecht et al., PoPETs 2019): fraction of synthetic samples within radius
  r, swept over percentiles p of the reference set's nearest-synthetic distances (the median heuristic alone
  misses partial copiers, notes §6), so the radius is chosen from attacker data, never from the queries;
- `domias`: DOMIAS (van Breugel et al., AISTATS 2023) density ratio log p_syn(x) − log p_ref(x), Gaussian KDE
  in a PCA space fitted on synthetic ∪ reference;
- critic score (LOGAN white-box, Hayes et al. 2019): computed by the caller (needs the network).

Metrics as the membership-inference literature reports them (Carlini et al. 2022, LiRA): exact ROC (log-log),
AUC, TPR at a low FPR taken at the largest threshold whose FPR ≤ target (not interpolated; NaN when the
non-members cannot resolve that FPR), per patch and per patient (mean score), with patient-cluster bootstrap
CIs: patches of one patient are correlated, and an i.i.d. bootstrap over patches is too narrow.

Written by hand (numpy/torch/scipy): no maintained package fits (synthcity pins torch<2.3, domias is tabular,
privacy-meter targets classifiers). ROC/AUC are exact rank statistics here rather than torchmetrics', which
applies a float32 sigmoid to scores outside [0, 1] and so merges large scores into ties.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from scipy.stats import gaussian_kde

Array = np.ndarray | torch.Tensor
LOW_FPRS = (0.01, 0.001)


# ----------------------------------------------------------------------------- features
def pixel_features(images: Array, labels: Array) -> torch.Tensor:
    """(N, 2·D) float32: the image z-scored per patch (intensity scale differs between patients and the
    generator's tanh range) next to the label mapped to ±1, both flattened (2D or 3D patches alike)."""
    img = torch.as_tensor(images).float().flatten(1)
    img = (img - img.mean(1, keepdim=True)) / (img.std(1, keepdim=True) + 1e-6)
    lab = torch.as_tensor(labels).float().flatten(1) * 2 - 1
    return torch.cat([img, lab], dim=1)


# ----------------------------------------------------------------------------- attacks
def distance_summary(query: torch.Tensor, synthetic: torch.Tensor, radii: Sequence[float] = (),
                     chunk_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """RMS distance (L2/√D, as `metrics.memorisation`) of each query to its nearest synthetic sample, and the
    fraction of synthetic samples within each radius, (Nq,) and (Nq, len(radii)), in one pass over cdist."""
    from metrics.memorisation import nearest_neighbours

    nearest, _ = nearest_neighbours(query, synthetic, chunk_size)
    scale = math.sqrt(query.shape[1])
    r = torch.as_tensor(list(radii), dtype=torch.float32) * scale
    fractions = np.zeros((query.shape[0], len(radii)))
    for i in range(0, query.shape[0], chunk_size) if len(radii) else ():
        d = torch.cdist(query[i:i + chunk_size], synthetic)
        fractions[i:i + chunk_size] = torch.stack([(d < radius).float().mean(1) for radius in r], 1).numpy()
    return nearest, fractions


class PCA:
    """Centred SVD projection fitted on one set, applied to others (`metrics.memorisation.pca` only embeds)."""

    def __init__(self, x: Array, dims: int) -> None:
        t = torch.as_tensor(x).double()
        self.mean = t.mean(0)
        _, _, vt = torch.linalg.svd(t - self.mean, full_matrices=False)
        self.components = vt[:dims]

    def __call__(self, x: Array) -> np.ndarray:
        return ((torch.as_tensor(x).double() - self.mean) @ self.components.T).numpy()


def domias_scores(queries: Sequence[Array], synthetic: Array, reference: Array, dims: int = 5) -> list[np.ndarray]:
    """log p_syn(x) − log p_ref(x) for each query set (KDE with Scott's bandwidth in a `dims`-D PCA space)."""
    pca = PCA(torch.cat([torch.as_tensor(synthetic), torch.as_tensor(reference)]), dims)
    kde_syn, kde_ref = gaussian_kde(pca(synthetic).T), gaussian_kde(pca(reference).T)
    return [kde_syn.logpdf(pca(q).T) - kde_ref.logpdf(pca(q).T) for q in queries]


def membership_scores(
    members: torch.Tensor,
    nonmembers: torch.Tensor,
    synthetic: torch.Tensor,
    reference: torch.Tensor | None,
    radius_percentiles: Sequence[float] = (1.0, 5.0, 25.0, 50.0),
    pca_dims: int = 5,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{attack: (member scores, non-member scores)} of the black-box attacks in one feature space.

    Without a `reference` (attacker's real non-member patients) only `nn` runs: calibration, the MC radius
    and DOMIAS all need one.
    """
    if reference is None or len(reference) < 2:
        return {"nn": (-distance_summary(members, synthetic)[0], -distance_summary(nonmembers, synthetic)[0])}
    d_ref_syn, _ = distance_summary(reference, synthetic)
    radii = [float(np.percentile(d_ref_syn, p)) for p in radius_percentiles]
    out: dict[str, list[np.ndarray]] = {}
    for query in (members, nonmembers):
        d_syn, within = distance_summary(query, synthetic, radii)
        d_ref, _ = distance_summary(query, reference)
        out.setdefault("nn", []).append(-d_syn)
        out.setdefault("nn_calibrated", []).append(d_ref - d_syn)
        for j, p in enumerate(radius_percentiles):
            out.setdefault(f"mc@r{p:g}", []).append(within[:, j])
    dims = min(pca_dims, synthetic.shape[1], len(synthetic) - 1, len(reference) - 1)
    out["domias"] = domias_scores([members, nonmembers], synthetic, reference, dims)
    return {k: (v[0], v[1]) for k, v in out.items()}


# ----------------------------------------------------------------------------- ROC metrics
def roc_curve(scores_in: np.ndarray, scores_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ROC (fpr, tpr), one point per distinct score, from (0, 0) to (1, 1); "member" = score ≥ t."""
    s = np.concatenate([scores_in, scores_out]).astype(np.float64)
    y = np.r_[np.ones(len(scores_in)), np.zeros(len(scores_out))]
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(y)[last_of_tie], np.cumsum(1 - y)[last_of_tie]
    return np.r_[0.0, fp / max(len(scores_out), 1)], np.r_[0.0, tp / max(len(scores_in), 1)]


def auc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """Area under the exact ROC (= P(member score > non-member score) + ½ P(tie)); NaN for an empty side."""
    if len(scores_in) == 0 or len(scores_out) == 0:
        return float("nan")
    fpr, tpr = roc_curve(scores_in, scores_out)
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(scores_in: np.ndarray, scores_out: np.ndarray, max_fpr: float) -> float:
    """TPR at the largest threshold whose FPR ≤ `max_fpr`, not interpolated. NaN when `max_fpr` < 1/n_out:
    with n non-members the smallest non-zero FPR is 1/n, so a lower target cannot be told apart from 0
    (use `max_fpr=0` for "TPR at FPR = 0", which is always defined)."""
    if len(scores_out) == 0 or len(scores_in) == 0 or (max_fpr > 0 and max_fpr < 1.0 / len(scores_out)):
        return float("nan")
    fpr, tpr = roc_curve(scores_in, scores_out)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def per_patient(scores: np.ndarray, patient_ids: np.ndarray, how: Literal["mean", "max"] = "mean"
                ) -> tuple[np.ndarray, np.ndarray]:
    """(patient ids, aggregated score per patient), ids sorted."""
    ids, inverse = np.unique(np.asarray(patient_ids), return_inverse=True)
    if how == "mean":
        agg = np.bincount(inverse, weights=scores) / np.bincount(inverse)
    else:
        agg = np.full(len(ids), -np.inf)
        np.maximum.at(agg, inverse, scores)
    return ids, agg


def _groups(patient_ids: np.ndarray) -> list[np.ndarray]:
    _, inverse = np.unique(np.asarray(patient_ids), return_inverse=True)
    return [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if len(inverse) else []


Statistic = Callable[[np.ndarray, np.ndarray], float]


def cluster_bootstrap(stat: Statistic, scores_in: np.ndarray, pid_in: np.ndarray, scores_out: np.ndarray,
                      pid_out: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile CI of `stat(in, out)` resampling whole patients with replacement on each side (members and
    non-members separately), so the CI reflects how many patients, not patches, the audit saw."""
    rng = np.random.default_rng(seed)
    g_in, g_out = _groups(pid_in), _groups(pid_out)
    if not g_in or not g_out:
        return [float("nan"), float("nan")]
    values = []
    for _ in range(n_boot):
        take_in = np.concatenate([g_in[i] for i in rng.integers(0, len(g_in), len(g_in))])
        take_out = np.concatenate([g_out[i] for i in rng.integers(0, len(g_out), len(g_out))])
        values.append(stat(scores_in[take_in], scores_out[take_out]))
    tail = (1 - level) / 2 * 100
    return [float(v) for v in np.nanpercentile(values, [tail, 100 - tail])]


def naive_bootstrap(stat: Statistic, scores_in: np.ndarray, scores_out: np.ndarray, n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95) -> list[float]:
    """I.i.d. bootstrap over patches (too narrow for correlated patches; kept to show the difference)."""
    return cluster_bootstrap(stat, scores_in, np.arange(len(scores_in)), scores_out, np.arange(len(scores_out)),
                             n_boot, seed, level)


def level_summary(scores_in: np.ndarray, pid_in: np.ndarray, scores_out: np.ndarray, pid_out: np.ndarray,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, object]:
    """AUC [cluster-bootstrap CI], TPR at 1 % / 0.1 % / 0 FPR and the sizes, at one level (patch or patient)."""
    return {
        "auc": auc(scores_in, scores_out),
        "auc_ci95": cluster_bootstrap(auc, scores_in, pid_in, scores_out, pid_out, n_boot, seed),
        **{f"tpr_at_fpr_{f:g}": tpr_at_fpr(scores_in, scores_out, f) for f in LOW_FPRS},
        "tpr_at_fpr_0": tpr_at_fpr(scores_in, scores_out, 0.0),
        "n_members": int(len(scores_in)),
        "n_nonmembers": int(len(scores_out)),
        "smallest_fpr": 1.0 / len(scores_out) if len(scores_out) else float("nan"),
    }


def evaluate_attack(scores_in: np.ndarray, pid_in: np.ndarray, scores_out: np.ndarray, pid_out: np.ndarray,
                    n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, object]]:
    """{"patch": …, "patient": …}: patch scores, and their per-patient means (one score per patient)."""
    _, p_in = per_patient(scores_in, pid_in)
    _, p_out = per_patient(scores_out, pid_out)
    patch = level_summary(scores_in, pid_in, scores_out, pid_out, n_boot, seed)
    patch["auc_ci95_naive"] = naive_bootstrap(auc, scores_in, scores_out, n_boot, seed)
    patient = level_summary(p_in, np.arange(len(p_in)), p_out, np.arange(len(p_out)), n_boot, seed)
    return {"patch": patch, "patient": patient}


def dp_roc_bound(fpr: np.ndarray, epsilon: float, delta: float) -> np.ndarray:
    """Largest TPR any membership test can reach at `fpr` against an (ε, δ)-DP mechanism (for its privacy
    unit): min(e^ε·FPR + δ, 1 − e^−ε·(1 − δ − FPR), 1) (Kairouz et al. 2015 hypothesis-testing region)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    with np.errstate(over="ignore"):
        upper = np.minimum(math.exp(min(epsilon, 700)) * fpr + delta, 1 - math.exp(-epsilon) * (1 - delta - fpr))
    return np.clip(upper, 0.0, 1.0)
