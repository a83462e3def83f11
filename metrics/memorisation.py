"""How close does the synthetic set sit to the training patches? (memorisation / privacy checks)

Two views, both comparing "nearest to training data" against "nearest to held-out data of the same
distribution", because a good generator is close to real data in general, and only an excess closeness
to the *training* patients signals copying:
- FID(synthetic, train) vs FID(synthetic, held-out) from given features;
- per synthetic sample, the distance to its nearest training patch vs its nearest held-out patch, in pixel
  space (flattened, per-sample z-scored by default) or in a feature space. Distances are reported as
  RMS per element (L2 / √D), so they read in the data's units whatever the patch size.
Plus a 2D embedding (exact t-SNE, or PCA) of real / synthetic / DP-synthetic feature sets for plots.
sklearn is not a dependency, so t-SNE is a small exact torch implementation (van der Maaten 2008 with
sklearn's optimiser settings), O(N²) memory: meant for ≤ ~3000 points.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from metrics.fid import feature_statistics, frechet_distance

Array = np.ndarray | torch.Tensor


def fid_train_vs_heldout(synthetic: Array, train: Array, heldout: Array) -> dict[str, float]:
    """Fréchet distances of synthetic features to training and to held-out features; ratio < 1 means
    the synthetic set is closer to the training patients than to unseen patients of the same cohort."""
    mu_s, cov_s = feature_statistics(synthetic)
    fid_train = frechet_distance(mu_s, cov_s, *feature_statistics(train))
    fid_heldout = frechet_distance(mu_s, cov_s, *feature_statistics(heldout))
    return {"fid_train": fid_train, "fid_heldout": fid_heldout,
            "fid_ratio": fid_train / fid_heldout if fid_heldout > 0 else float("nan")}


def _flatten(x: Array, normalise: Literal["zscore", "none"]) -> torch.Tensor:
    t = torch.as_tensor(x).float().flatten(1)
    if normalise == "zscore":
        t = (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-6)
    return t


def nearest_neighbours(query: torch.Tensor, reference: torch.Tensor, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """RMS distance (L2/√D) from each query row to its nearest reference row, and that row's index.

    The nearest index comes from torch.cdist's fast matrix-product form; the winner's distance is then
    recomputed directly so that an exact copy gives exactly 0 (the product form leaves ~1e-3 noise).
    """
    dim = query.shape[1]
    dists, idxs = [], []
    for start in range(0, query.shape[0], chunk_size):
        q = query[start : start + chunk_size]
        idx = torch.cdist(q, reference).argmin(1)
        dists.append(((q - reference[idx]) ** 2).sum(1).sqrt() / math.sqrt(dim))
        idxs.append(idx)
    return torch.cat(dists).cpu().double().numpy(), torch.cat(idxs).cpu().numpy()


def memorisation_report(
    synthetic: Array,
    train: Array,
    heldout: Array,
    normalise: Literal["zscore", "none"] = "zscore",
    k: int = 10,
    balance: bool = True,
    seed: int = 0,
    chunk_size: int = 1024,
    copy_tol: float = 1e-6,
) -> dict[str, object]:
    """Nearest-train vs nearest-held-out distances of each synthetic sample: images (N, C, ...) with
    the default per-sample z-score, or features (N, F), for which `normalise="none"` is the natural choice.

    `balance` subsamples the larger of train / held-out to the smaller one's size (seeded): the nearest
    neighbour in a bigger set is closer by chance alone. Returned indices of train refer to the original
    (unsubsampled) array. `ratio` = d_train / d_heldout (< 1: closer to training data).
    """
    syn, tr, ho = (_flatten(a, normalise) for a in (synthetic, train, heldout))
    if not syn.shape[1] == tr.shape[1] == ho.shape[1]:
        raise ValueError(f"memorisation: sizes differ: synthetic {syn.shape[1]}, train {tr.shape[1]}, held-out {ho.shape[1]}")
    tr_index = np.arange(tr.shape[0])
    if balance and tr.shape[0] != ho.shape[0]:
        rng = np.random.default_rng(seed)
        n = min(tr.shape[0], ho.shape[0])
        if tr.shape[0] > n:
            tr_index = np.sort(rng.choice(tr.shape[0], n, replace=False))
            tr = tr[torch.from_numpy(tr_index)]
        else:
            ho = ho[torch.from_numpy(np.sort(rng.choice(ho.shape[0], n, replace=False)))]
    d_train, i_train = nearest_neighbours(syn, tr, chunk_size)
    d_heldout, _ = nearest_neighbours(syn, ho, chunk_size)
    ratio = d_train / np.maximum(d_heldout, 1e-12)
    top = np.argsort(ratio, kind="stable")[:k]
    return {
        "d_train": d_train,
        "d_heldout": d_heldout,
        "ratio": ratio,
        "nearest_train_index": tr_index[i_train],
        "median_ratio": float(np.median(ratio)),
        "fraction_closer_to_train": float(np.mean(d_train < d_heldout)),
        "n_exact_copies": int(np.sum(d_train <= copy_tol)),
        "most_memorised": top,
        "n_train_used": int(tr.shape[0]),
        "n_heldout_used": int(ho.shape[0]),
        "space": f"flattened, per-sample {normalise}, RMS distance",
    }


def pca(x: Array, dims: int = 2) -> np.ndarray:
    """Projection on the top principal components (centred SVD)."""
    t = torch.as_tensor(x).double().flatten(1)
    t = t - t.mean(0)
    u, s, _ = torch.linalg.svd(t, full_matrices=False)
    return (u[:, :dims] * s[:dims]).numpy()


def _affinities(d2: torch.Tensor, perplexity: float, steps: int = 64) -> torch.Tensor:
    """Row-wise Gaussian conditionals whose entropy matches log(perplexity) (vectorised bisection on β)."""
    n = d2.shape[0]
    d2 = d2.clone()
    d2.fill_diagonal_(float("inf"))
    d2 = d2 - d2.min(1, keepdim=True).values  # shift for stability; entropy is shift-invariant
    target = math.log(perplexity)
    lo, hi = torch.zeros(n, dtype=d2.dtype), torch.full((n,), float("inf"), dtype=d2.dtype)
    beta = torch.ones(n, dtype=d2.dtype)
    for _ in range(steps):
        p = torch.exp(-d2 * beta[:, None])
        s = p.sum(1)
        h = torch.log(s) + beta * (torch.nan_to_num(d2, posinf=0.0) * p).sum(1) / s
        too_flat = h > target  # entropy too high -> sharpen (larger beta)
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
    p = torch.exp(-d2 * beta[:, None])
    return p / p.sum(1, keepdim=True)


def _kl_gradient(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂KL(P‖Q)/∂y for the Student-t kernel: 4 Σ_j (p_ij − q_ij)(1 + ‖y_i − y_j‖²)⁻¹ (y_i − y_j)."""
    num = 1.0 / (1.0 + torch.cdist(y, y) ** 2)
    num.fill_diagonal_(0.0)
    q = (num / num.sum()).clamp_min(1e-12)
    w = (p - q) * num
    return 4.0 * (w.sum(1, keepdim=True) * y - w @ y)


def tsne(
    x: Array,
    perplexity: float = 30.0,
    n_iter: int = 1000,
    pca_dims: int = 50,
    early_exaggeration: float = 12.0,
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Exact 2D t-SNE: PCA to `pca_dims`, PCA initialisation (std 1e-4), 250 exaggerated iterations,
    momentum 0.5 → 0.8, learning rate max(N / exaggeration / 4, 50), delta-bar-delta gains (sklearn's
    defaults). `seed` only breaks ties of the initialisation (jitter 1e-8)."""
    t = torch.as_tensor(x).double().flatten(1)
    n = t.shape[0]
    if n > 5000:
        raise ValueError(f"tsne: exact t-SNE on {n} points needs O(N²) memory; subsample to <= 5000")
    if n <= 3 * perplexity:
        perplexity = max((n - 1) / 3.0, 1.0)
    if t.shape[1] > pca_dims:
        t = torch.from_numpy(pca(t, pca_dims))
    p = _affinities(torch.cdist(t, t) ** 2, perplexity)
    p = ((p + p.T) / (2 * n)).clamp_min(1e-12)
    y = torch.from_numpy(pca(t, 2))
    y = y / y[:, 0].std() * 1e-4 + 1e-8 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    lr = max(n / early_exaggeration / 4, 50.0)
    update, gains = torch.zeros_like(y), torch.ones_like(y)
    for it in tqdm(range(n_iter), desc="t-SNE", disable=not progress):
        exag, momentum = (early_exaggeration, 0.5) if it < 250 else (1.0, 0.8)
        grad = _kl_gradient(p * exag, y)
        same = torch.sign(grad) == torch.sign(update)
        gains = torch.where(same, gains * 0.8, gains + 0.2).clamp_min(0.01)
        update = momentum * update - lr * gains * grad
        y = y + update
    return y.numpy()


def embed_2d(
    feature_sets: dict[str, Array],
    method: Literal["tsne", "pca"] = "tsne",
    max_per_set: int = 1000,
    seed: int = 0,
    **tsne_kwargs: object,
) -> tuple[np.ndarray, np.ndarray]:
    """Joint 2D embedding of named sets (e.g. real / synthetic / DP-synthetic); each set subsampled to
    `max_per_set` (seeded). Returns (M, 2) coordinates and the (M,) set name of each point."""
    rng = np.random.default_rng(seed)
    parts, names = [], []
    for name, feats in feature_sets.items():
        f = torch.as_tensor(feats).double().flatten(1)
        if f.shape[0] > max_per_set:
            f = f[torch.from_numpy(np.sort(rng.choice(f.shape[0], max_per_set, replace=False)))]
        parts.append(f)
        names += [name] * f.shape[0]
    data = torch.cat(parts)
    emb = tsne(data, seed=seed, **tsne_kwargs) if method == "tsne" else pca(data, 2)
    return emb, np.asarray(names)
