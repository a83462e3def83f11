"""Sample diversity: mean SSIM between random pairs of one set (mode-collapse check, Kossen et al.).

A collapsed generator repeats itself, so its pairs look alike (mean SSIM → 1); real patches of different
places are dissimilar. The real-vs-real value is the reference a synthetic set should match, not 0.
SSIM is torchmetrics' (Gaussian window, 2D or 3D alike). `data_range` is the width of the intensity
range: 2.0 for the GAN's [-1, 1] images (the default), 1.0 for [0, 1], 255 for 8-bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure
from tqdm.auto import tqdm


def random_pairs(n: int, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n_pairs` index pairs (i, j), i ≠ j, uniform over ordered pairs (drawn with replacement)."""
    if n < 2:
        raise ValueError(f"need at least 2 samples for pairs, got {n}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=n_pairs)
    j = (i + rng.integers(1, n, size=n_pairs)) % n
    return i, j


def pairwise_ssim(
    samples: torch.Tensor | np.ndarray,
    n_pairs: int = 1000,
    seed: int = 0,
    data_range: float = 2.0,
    kernel_size: int = 11,
    sigma: float = 1.5,
    channel: int | None = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """SSIM of `n_pairs` random pairs of (N, C, H, W) or (N, C, H, W, D) samples; one value per pair.

    `channel` picks the image channel of image+label pairs (None: all channels, SSIM averaged over them).
    """
    x = torch.as_tensor(samples)
    if x.ndim not in (4, 5):
        raise ValueError(f"pairwise_ssim: expected (N, C, H, W) or (N, C, H, W, D), got {tuple(x.shape)}")
    if channel is not None:
        x = x[:, channel : channel + 1]
    i, j = random_pairs(x.shape[0], n_pairs, seed)
    out = []
    for start in tqdm(range(0, n_pairs, batch_size), desc="SSIM pairs", disable=not progress):
        a = x[i[start : start + batch_size]].float()
        b = x[j[start : start + batch_size]].float()
        val = structural_similarity_index_measure(a, b, data_range=data_range, kernel_size=kernel_size,
                                                  sigma=sigma, reduction="none")
        out.append(val.detach().cpu().double().numpy())
    return np.concatenate(out)


def diversity_report(
    synthetic: torch.Tensor | np.ndarray,
    real: torch.Tensor | np.ndarray | None = None,
    n_pairs: int = 1000,
    seed: int = 0,
    data_range: float = 2.0,
    kernel_size: int = 11,
    channel: int | None = 0,
) -> dict[str, float]:
    """Mean ± SD of pairwise SSIM for the synthetic set and, as reference, the real set.

    `ssim_excess` = synthetic − real mean: > 0 means less diverse than real data (collapse tendency).
    """
    kw = dict(n_pairs=n_pairs, seed=seed, data_range=data_range, kernel_size=kernel_size, channel=channel)
    syn = pairwise_ssim(synthetic, **kw)
    out = {"ssim_synthetic_mean": float(syn.mean()), "ssim_synthetic_sd": float(syn.std(ddof=1)),
           "n_pairs": n_pairs, "data_range": data_range}
    if real is not None:
        ref = pairwise_ssim(real, **kw)
        out.update(ssim_real_mean=float(ref.mean()), ssim_real_sd=float(ref.std(ddof=1)),
                   ssim_excess=float(syn.mean() - ref.mean()))
    return out
