"""Memorisation: copies are flagged, independent samples are not; NN search and embeddings checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from metrics.memorisation import (
    embed_2d,
    fid_train_vs_heldout,
    memorisation_report,
    nearest_neighbours,
    pca,
    tsne,
)


@pytest.fixture
def patches() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    smooth = lambda n: np.cumsum(rng.normal(size=(n, 1, 8, 8)), axis=-1)  # noqa: E731 - correlated pixels
    return {"train": smooth(120), "heldout": smooth(120), "fresh": smooth(60)}


def test_copies_are_flagged(patches):
    copies = patches["train"][[5, 17, 33, 80]]
    rep = memorisation_report(copies, patches["train"], patches["heldout"], k=4)
    np.testing.assert_array_equal(rep["d_train"], 0.0)
    assert (rep["d_heldout"] > 0.1).all()
    np.testing.assert_array_equal(rep["nearest_train_index"], [5, 17, 33, 80])
    assert rep["fraction_closer_to_train"] == 1.0 and rep["median_ratio"] == 0.0 and rep["n_exact_copies"] == 4


def test_independent_set_not_flagged(patches):
    rep = memorisation_report(patches["fresh"], patches["train"], patches["heldout"])
    assert 0.25 < rep["fraction_closer_to_train"] < 0.75
    assert 0.85 < rep["median_ratio"] < 1.15
    assert rep["n_exact_copies"] == 0


def test_mixed_set_ranks_copies_first(patches):
    mixed = np.concatenate([patches["fresh"][:20], patches["train"][:3] + 1e-3])  # near-copies at 20, 21, 22
    rep = memorisation_report(mixed, patches["train"], patches["heldout"], k=3)
    assert sorted(rep["most_memorised"].tolist()) == [20, 21, 22]


def test_balancing_subsamples_larger_set(patches):
    big_train = np.concatenate([patches["train"]] * 3)
    rep = memorisation_report(patches["fresh"], big_train, patches["heldout"], seed=1)
    assert rep["n_train_used"] == rep["n_heldout_used"] == 120
    assert rep["nearest_train_index"].max() < 360


def test_nearest_neighbours_brute_force():
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(37, 5)), rng.normal(size=(50, 5))
    full = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1)) / np.sqrt(5)
    d, i = nearest_neighbours(torch.from_numpy(q), torch.from_numpy(r), chunk_size=8)
    np.testing.assert_array_equal(i, full.argmin(1))
    np.testing.assert_allclose(d, full.min(1), rtol=1e-10)


def test_fid_train_vs_heldout():
    rng = np.random.default_rng(2)
    train, heldout = rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) * 1.5 + 0.3
    synthetic = train + 0.05 * rng.normal(size=train.shape)
    out = fid_train_vs_heldout(synthetic, train, heldout)

    def ref(a: np.ndarray, b: np.ndarray) -> float:
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))

    assert out["fid_train"] == pytest.approx(ref(synthetic, train), rel=1e-6)
    assert out["fid_heldout"] == pytest.approx(ref(synthetic, heldout), rel=1e-6)
    assert out["fid_ratio"] < 0.1


def test_pca_recovers_planar_data():
    rng = np.random.default_rng(3)
    plane = rng.normal(size=(50, 2)) * [5.0, 1.0]
    x = plane @ np.linalg.qr(rng.normal(size=(5, 5)))[0][:2] + 7.0  # rotated into 5D and shifted
    emb = pca(x, 2)
    dist = lambda a: np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))  # noqa: E731
    np.testing.assert_allclose(dist(emb), dist(plane), atol=1e-8)


def test_tsne_gradient_matches_autograd():
    from metrics.memorisation import _kl_gradient

    rng = np.random.default_rng(5)
    p = torch.from_numpy(rng.random((12, 12)))
    p = p + p.T
    p.fill_diagonal_(0)
    p = p / p.sum()
    y = torch.from_numpy(rng.normal(size=(12, 2))).requires_grad_(True)
    diff = y[:, None] - y[None]
    num = 1.0 / (1.0 + (diff**2).sum(-1))
    num = num * (1 - torch.eye(12, dtype=num.dtype))
    q = num / num.sum()
    mask = ~torch.eye(12, dtype=torch.bool)
    kl = (p[mask] * torch.log(p[mask] / q[mask])).sum()
    (auto,) = torch.autograd.grad(kl, y)
    torch.testing.assert_close(_kl_gradient(p, y.detach()), auto, rtol=1e-8, atol=1e-12)


def test_tsne_separates_clusters_and_embed_2d():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(5), 30)
    x = 8.0 * np.eye(5, 10)[labels] + rng.normal(size=(150, 10))
    y = tsne(x, perplexity=20, n_iter=500, progress=False)
    assert y.shape == (150, 2) and np.isfinite(y).all()
    d = np.sqrt(((y[:, None] - y[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).all()  # every point's nearest neighbour is in its own cluster
    emb, names = embed_2d({"real": x[:40], "synthetic": x[40:], "dp": x[:5]}, method="pca", max_per_set=30)
    assert emb.shape == (65, 2) and (names == "dp").sum() == 5


def test_embedding_plot(tmp_path):
    plots = pytest.importorskip("metrics.plots")
    fig = plots.plot_embedding(np.random.default_rng(0).normal(size=(20, 2)), np.repeat(["real", "synthetic"], 10))
    plots.save_figure(fig, tmp_path / "tsne.png")
    assert (tmp_path / "tsne.png").stat().st_size > 1000


def test_affinities_reach_perplexity():
    from metrics.memorisation import _affinities

    x = torch.from_numpy(np.random.default_rng(6).normal(size=(60, 3)))
    p = _affinities(torch.cdist(x, x) ** 2, perplexity=12.0)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(1)
    torch.testing.assert_close(entropy, torch.full((60,), np.log(12.0), dtype=p.dtype), atol=1e-4, rtol=0)
    torch.testing.assert_close(p.sum(1), torch.ones(60, dtype=p.dtype))
