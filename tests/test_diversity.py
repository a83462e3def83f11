"""Pairwise-SSIM diversity: collapse → 1, independent noise → ~0, 2D and 3D, SSIM against a hand formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.diversity import diversity_report, pairwise_ssim, random_pairs


def test_random_pairs_distinct_and_seeded():
    i, j = random_pairs(5, 2000, seed=3)
    assert (i != j).all() and set(i) == set(range(5)) and set(j) == set(range(5))
    i2, j2 = random_pairs(5, 2000, seed=3)
    assert (i == i2).all() and (j == j2).all()


def test_collapsed_set_gives_one_2d_and_3d():
    g = torch.Generator().manual_seed(0)
    one = torch.rand(1, 2, 24, 24, generator=g) * 2 - 1
    vals = pairwise_ssim(one.repeat(6, 1, 1, 1), n_pairs=20)
    np.testing.assert_allclose(vals, 1.0, atol=1e-5)
    one3 = torch.rand(1, 1, 16, 16, 12, generator=g) * 2 - 1
    vals3 = pairwise_ssim(one3.repeat(4, 1, 1, 1, 1), n_pairs=10, kernel_size=7)
    np.testing.assert_allclose(vals3, 1.0, atol=1e-5)


def test_independent_noise_near_zero_2d_and_3d():
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(20, 1, 48, 48, generator=g) * 2 - 1
    assert abs(pairwise_ssim(noise, n_pairs=100).mean()) < 0.03
    noise3 = torch.rand(10, 1, 20, 20, 20, generator=g) * 2 - 1
    assert abs(pairwise_ssim(noise3, n_pairs=30, kernel_size=7).mean()) < 0.03


def test_ssim_value_against_global_formula():
    """Constant images: the Gaussian window sees constants, SSIM = luminance term of the means."""
    a = torch.full((1, 1, 32, 32), 0.2)
    b = torch.full((1, 1, 32, 32), -0.4)
    c1 = (0.01 * 2.0) ** 2
    expected = (2 * 0.2 * -0.4 + c1) / (0.2**2 + 0.4**2 + c1)
    vals = pairwise_ssim(torch.cat([a, b]), n_pairs=4)
    np.testing.assert_allclose(vals, expected, rtol=1e-4)


def test_report_compares_with_real():
    g = torch.Generator().manual_seed(2)
    real = torch.rand(12, 2, 32, 32, generator=g) * 2 - 1
    collapsed = real[:1].repeat(12, 1, 1, 1) + 0.01 * torch.randn(12, 2, 32, 32, generator=g)
    rep = diversity_report(collapsed, real, n_pairs=50)
    assert rep["ssim_synthetic_mean"] > 0.95 and abs(rep["ssim_real_mean"]) < 0.1
    assert rep["ssim_excess"] == pytest.approx(rep["ssim_synthetic_mean"] - rep["ssim_real_mean"])
    with pytest.raises(ValueError, match="expected"):
        pairwise_ssim(torch.zeros(3, 8, 8))
