"""PRD: analytic curves, dropped modes, argument swap, k-means sanity, plotting smoke test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.prd import compute_prd, kmeans, max_f_beta_pair, prd_auc, prd_from_embeddings


def mixture(rng: np.random.Generator, centres: np.ndarray, modes: list[int], n: int) -> np.ndarray:
    """Equal-weight Gaussian mixture over the chosen modes, unit variance."""
    idx = np.repeat(modes, n // len(modes))
    return centres[idx] + rng.normal(size=(idx.size, centres.shape[1]))


@pytest.fixture(scope="module")
def centres() -> np.ndarray:
    return 30.0 * np.eye(10, 16)  # ten modes 42 standard deviations apart


def test_compute_prd_analytic():
    """eval=(.5,.5,0), ref=(.5,0,.5): precision(λ)=min(.5λ,.5), recall=min(.5,.5/λ)."""
    p, r = compute_prd(np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.0, 0.5]), num_angles=5)
    lam = np.tan(np.linspace(1e-10, np.pi / 2 - 1e-10, 5))
    np.testing.assert_allclose(p, np.minimum(0.5 * lam, 0.5), atol=1e-12)
    np.testing.assert_allclose(r, np.minimum(0.5, 0.5 / lam), atol=1e-12)


def test_identical_histograms_give_unit_area_and_f():
    rng = np.random.default_rng(0)
    d = rng.dirichlet(np.ones(20))
    p, r = compute_prd(d, d)
    assert prd_auc(p, r) == pytest.approx(1.0, abs=1e-6)
    f8, f18 = max_f_beta_pair(p, r)
    assert f8 == pytest.approx(1.0, abs=1e-6) and f18 == pytest.approx(1.0, abs=1e-6)
    # independent check of the area: the curve is the unit square's upper-right corner
    assert prd_auc(np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0])) == pytest.approx(1.0)
    assert prd_auc(np.array([0.0, 0.5, 0.5]), np.array([0.5, 0.5, 0.0])) == pytest.approx(0.25)


def test_swapping_histograms_swaps_curves():
    rng = np.random.default_rng(1)
    a, b = rng.dirichlet(np.ones(12)), rng.dirichlet(np.ones(12))
    p_ab, r_ab = compute_prd(a, b)
    p_ba, r_ba = compute_prd(b, a)
    np.testing.assert_allclose(p_ab, r_ba[::-1], atol=1e-9)
    np.testing.assert_allclose(r_ab, p_ba[::-1], atol=1e-9)


def test_identical_embeddings(centres):
    x = mixture(np.random.default_rng(2), centres, list(range(10)), 500)
    res = prd_from_embeddings(x, x, num_clusters=20, num_runs=3, n_init=2, progress=False)
    assert res.auc == pytest.approx(1.0, abs=1e-6)
    assert res.f_beta == pytest.approx(1.0, abs=1e-6) and res.f_beta_inv == pytest.approx(1.0, abs=1e-6)
    same_dist = prd_from_embeddings(mixture(np.random.default_rng(3), centres, list(range(10)), 500), x,
                                    num_runs=3, n_init=2, progress=False)
    assert same_dist.auc > 0.9


def test_dropped_modes_halve_recall_not_precision(centres):
    rng = np.random.default_rng(4)
    ref = mixture(rng, centres, list(range(10)), 1000)
    ev = mixture(rng, centres, [0, 1, 2, 3, 4], 1000)
    res = prd_from_embeddings(ev, ref, num_runs=3, n_init=2, progress=False)
    s = res.summary()
    assert s["max_recall"] == pytest.approx(0.5, abs=0.03)
    assert s["max_precision"] > 0.97
    assert res.f_beta_inv > 0.9 and res.f_beta < 0.55  # F_1/8 ~ precision, F_8 ~ recall
    swapped = prd_from_embeddings(ref, ev, num_runs=3, n_init=2, progress=False).summary()
    assert swapped["max_precision"] == pytest.approx(0.5, abs=0.03) and swapped["max_recall"] > 0.97
    assert swapped["f_beta"] == pytest.approx(s["f_beta_inv"], abs=0.02)
    assert swapped["f_beta_inv"] == pytest.approx(s["f_beta"], abs=0.02)


def test_unbalanced_sets_refused():
    with pytest.raises(ValueError, match="differ in size"):
        prd_from_embeddings(np.zeros((10, 2)), np.zeros((12, 2)), progress=False)


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(5)
    truth = np.repeat(np.arange(4), 50)
    x = torch.from_numpy(np.eye(4, 3)[truth] * 20 + rng.normal(size=(200, 3))).float()
    labels, inertia = kmeans(x, 4, n_init=3, seed=0)
    # a perfect clustering is a relabelling: every true cluster maps to one label
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 4 and len({p[1] for p in pairs}) == 4
    assert inertia == pytest.approx(float(((x.numpy() - np.array([x.numpy()[truth == t].mean(0) for t in truth])) ** 2).sum()), rel=1e-4)


def test_plot_prd_curves(tmp_path):
    plots = pytest.importorskip("metrics.plots")
    p, r = compute_prd(np.array([0.2, 0.8]), np.array([0.5, 0.5]))
    fig = plots.plot_prd_curves({"run A": (p, r), "run B": (r, p)})
    plots.save_figure(fig, tmp_path / "prd.png")
    assert (tmp_path / "prd.png").stat().st_size > 1000
