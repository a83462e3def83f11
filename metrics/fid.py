"""Fréchet distance between Gaussian fits of real and synthetic features (FID and its 3D/domain variants).

`FrechetDistance` is a torchmetrics `Metric` holding streaming float64 sums (Σx, Σxxᵀ, n) reduced by
"sum", so DDP ranks combine exactly. The backbone is deliberately NOT a registered submodule: it must
never land in a LightningModule checkpoint (tens of MB of frozen weights, and a second copy of the
extractor's identity that could disagree with the recorded hash). It still follows `.to(device)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn
from torchmetrics import Metric

_REAL = ("real_sum", "real_outer", "real_n")
_FAKE = ("fake_sum", "fake_outer", "fake_n")


def feature_statistics(features: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of (N, F) features."""
    f = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_statistics: need (N>=2, F) features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½.

    The trace term uses eigenvalues of a symmetric PSD matrix (real, clipped at 0) instead of
    `sqrtm(Σ1 Σ2)`: the product is not symmetric, so sqrtm is slow and returns spurious imaginary parts
    / NaNs for rank-deficient covariances (N < F). Σ1 = L Lᵀ (Cholesky) gives eig(Lᵀ Σ2 L) = eig(Σ1 Σ2)
    in about a second for 2048-D; a singular Σ1 falls back to the eigendecomposition root Σ1^½.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: shape mismatch mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    try:
        factor = linalg.cholesky(s1, lower=True)
    except linalg.LinAlgError:
        w, v = linalg.eigh(s1)
        factor = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = factor.T @ s2 @ factor
    eig = linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def _moments(total: Tensor, outer: Tensor, n: Tensor) -> tuple[np.ndarray, np.ndarray]:
    nn_ = float(n)
    mu = total / nn_
    cov = (outer - nn_ * torch.outer(mu, mu)) / (nn_ - 1.0)
    return mu.cpu().numpy(), cov.cpu().numpy()


class FrechetDistance(Metric):
    """Streaming Fréchet distance; `update(x, real=True|False)` with images (or features if no extractor).

    Args:
        extractor: a `networks.feature_extractors.FeatureExtractor` (or any module with `num_features`);
            None means `update` receives (N, F) features directly.
        num_features: feature width when there is no extractor.
        reset_real_features: as torchmetrics' FID: False keeps streamed real sums across `reset()`,
            so the real set is fed once and reused at every evaluation.

    Real statistics loaded with `load_real_stats` are a cache outside the reduced states: they are added
    after the DDP sum (so never multiplied by the world size) and survive `reset()`.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        extractor: nn.Module | None = None,
        num_features: int | None = None,
        reset_real_features: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        nf = int(getattr(extractor, "num_features", 0) or num_features or 0)
        if nf <= 0:
            raise ValueError("FrechetDistance: give an extractor with num_features, or num_features")
        self.num_features = nf
        self.reset_real_features = reset_real_features
        self._holder: tuple[nn.Module | None] = (extractor,)  # plain attribute: not in state_dict
        if extractor is not None:
            extractor.eval()
            for p in extractor.parameters():
                p.requires_grad_(False)
        for names in (_REAL, _FAKE):
            self.add_state(names[0], torch.zeros(nf, dtype=torch.float64), "sum", persistent=False)
            self.add_state(names[1], torch.zeros(nf, nf, dtype=torch.float64), "sum", persistent=False)
            self.add_state(names[2], torch.zeros((), dtype=torch.float64), "sum", persistent=False)
        self._loaded_real: tuple[Tensor, Tensor, Tensor] | None = None
        self._last_counts: tuple[int, int] = (0, 0)

    @property
    def extractor(self) -> nn.Module | None:
        return self._holder[0]

    @property
    def extractor_info(self) -> dict[str, Any]:
        ext = self.extractor
        if ext is None:
            return {"extractor": "precomputed_features", "weights_sha256": "", "input_mapping": "features given directly"}
        return {
            "extractor": getattr(ext, "name", type(ext).__name__),
            "weights_sha256": getattr(ext, "weights_sha256", ""),
            "input_mapping": getattr(ext, "input_mapping", ""),
        }

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> nn.Module:
        this = super()._apply(fn, *args, **kwargs)
        for key in _REAL + _FAKE:  # `.to(bf16)` from a true-half precision plugin must not touch the sums
            if getattr(this, key).dtype != torch.float64:
                setattr(this, key, getattr(this, key).double())
                this._defaults[key] = this._defaults[key].double()
        if this.extractor is not None:
            this.extractor.to(device=this.real_sum.device)  # device only: the backbone stays float32
        return this

    def _features(self, x: Tensor) -> Tensor:
        ext = self.extractor
        if ext is None:
            feats = x
        else:
            with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
                feats = ext(x.float())
        if feats.ndim != 2 or feats.shape[1] != self.num_features:
            raise ValueError(f"FrechetDistance: features must be (N, {self.num_features}), got {tuple(feats.shape)}")
        return feats.detach().to(device=self.real_sum.device, dtype=torch.float64)

    def update(self, x: Tensor, real: bool) -> None:
        feats = self._features(x)
        total, outer, n = _REAL if real else _FAKE
        setattr(self, total, getattr(self, total) + feats.sum(0))
        setattr(self, outer, getattr(self, outer) + feats.T @ feats)
        setattr(self, n, getattr(self, n) + feats.shape[0])

    def forward(self, x: Tensor, real: bool) -> None:
        """Accumulate only: a per-batch FID (torchmetrics' default forward) is meaningless and costly."""
        self.update(x, real=real)

    def _real_totals(self) -> tuple[Tensor, Tensor, Tensor]:
        total, outer, n = self.real_sum, self.real_outer, self.real_n
        if self._loaded_real is not None:
            ls, lo, ln = (t.to(total.device) for t in self._loaded_real)
            total, outer, n = total + ls, outer + lo, n + ln
        return total, outer, n

    def compute(self) -> Tensor:
        total, outer, n_real = self._real_totals()
        n_real_i, n_fake_i = int(n_real), int(self.fake_n)
        self._last_counts = (n_real_i, n_fake_i)
        if n_real_i < 2 or n_fake_i < 2:
            raise RuntimeError(f"FrechetDistance needs >= 2 real and >= 2 fake samples, got {n_real_i} / {n_fake_i}")
        mu_r, cov_r = _moments(total, outer, n_real)
        mu_f, cov_f = _moments(self.fake_sum, self.fake_outer, self.fake_n)
        return torch.tensor(frechet_distance(mu_r, cov_r, mu_f, cov_f), dtype=torch.float64, device=total.device)

    def result(self) -> dict[str, Any]:
        """The score with what produced it; call on every rank under DDP (compute is collective)."""
        value = float(self.compute())
        n_real, n_fake = self._last_counts
        return {"fid": value, **self.extractor_info, "n_real": n_real, "n_fake": n_fake, "num_features": self.num_features}

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        keep = {k: getattr(self, k).clone() for k in _REAL}
        super().reset()
        for k, v in keep.items():
            setattr(self, k, v)

    # ---- cache of real statistics -----------------------------------------------------------------
    def real_stats_path(self, cache_dir: str | Path, dataset_key: str) -> Path:
        """One file per (data set, extractor, weights): a changed backbone can never reuse stale stats."""
        info = self.extractor_info
        ext_id = f"{info['extractor']}-{info['weights_sha256'][:16] or 'nohash'}"
        return Path(cache_dir) / f"{dataset_key}__{ext_id}.npz"

    @property
    def has_real_stats(self) -> bool:
        return self._loaded_real is not None or float(self.real_n) > 0

    def save_real_stats(self, path: str | Path) -> Path:
        """Write the (DDP-summed) real statistics; collective under DDP, only rank 0 writes."""
        with self.sync_context(should_unsync=True):
            total, outer, n = (t.detach().cpu() for t in self._real_totals())
        path = Path(path)
        is_rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if is_rank0:
            if float(n) < 2:
                raise RuntimeError(f"save_real_stats({path}): only {int(n)} real samples seen")
            mu, sigma = _moments(total, outer, n)
            path.parent.mkdir(parents=True, exist_ok=True)
            info = self.extractor_info
            with open(path, "wb") as fh:  # a file handle keeps np.savez from appending ".npz"
                np.savez(fh, sum=total.numpy(), outer=outer.numpy(), n=n.numpy(), mu=mu, sigma=sigma,
                         num_features=self.num_features, **{k: np.asarray(str(v)) for k, v in info.items()})
        return path

    def load_real_stats(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"real statistics file {path} not found")
        with np.load(path) as data:
            info = self.extractor_info
            for key in ("extractor", "weights_sha256"):
                stored = str(data[key]) if key in data else "<missing>"
                if stored != str(info[key]):
                    raise ValueError(f"real statistics file {path}: {key} is {stored!r}, this metric uses {info[key]!r}")
            if int(data["num_features"]) != self.num_features:
                raise ValueError(f"real statistics file {path}: {int(data['num_features'])} features, expected {self.num_features}")
            self._loaded_real = tuple(torch.from_numpy(np.asarray(data[k], np.float64)) for k in ("sum", "outer", "n"))
        self._computed = None  # torchmetrics' compute cache would otherwise return the old value

    def clear_loaded_real_stats(self) -> None:
        self._loaded_real = None
        self._computed = None
