"""Label realism: discs and tubes of known size, intensity ratios, empty patches, distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.label_realism import compare_label_realism, label_realism_stats


def disc(shape: tuple[int, int], centre: tuple[int, int], r: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= r * r


def tube(shape: tuple[int, int, int], r: int) -> np.ndarray:
    """Cylinder along the last (z) axis through the centre of the x-y plane."""
    x, y, _ = np.mgrid[: shape[0], : shape[1], : shape[2]]
    return ((x - shape[0] // 2) ** 2 + (y - shape[1] // 2) ** 2) <= r * r


def test_2d_disc_known_values():
    lab = np.stack([disc((32, 32), (16, 16), 4), disc((32, 32), (10, 12), 4)])[:, None].astype(np.uint8)
    img = np.where(lab > 0, 1.0, -0.6)  # [-1, 1] scaling: vessel 1.0, tissue 0.2 after mapping to [0, 1]
    st = label_realism_stats(torch.from_numpy(img), torch.from_numpy(lab), spacing=(0.5, 0.5), progress=False)
    # digital disc x²+y² <= r²: the nearest background pixel centre from the centre is at sqrt(r² + 1)
    np.testing.assert_allclose(st.radii_mm, np.sqrt(17) * 0.5)
    np.testing.assert_allclose(st.vessel_fraction, lab[0].sum() / 1024)
    assert abs(st.vessel_fraction[0] - np.pi * 16 / 1024) < 0.1 * np.pi * 16 / 1024
    np.testing.assert_allclose(st.tissue_to_vessel, 0.2)
    np.testing.assert_allclose(st.contrast, 0.8)
    np.testing.assert_array_equal(st.n_components, 1)
    np.testing.assert_array_equal(st.largest_share, 1.0)


def test_components_and_largest_share():
    big, small = disc((40, 40), (12, 12), 6), disc((40, 40), (32, 30), 3)
    lab = (big | small)[None, None]
    st = label_realism_stats(None, lab, progress=False)
    assert st.n_components[0] == 2
    assert st.largest_share[0] == pytest.approx(big.sum() / (big.sum() + small.sum()))
    assert np.isnan(st.mean_in[0])  # no images: intensity measures undefined, not zero


def test_3d_tubes_and_radius_distance():
    spacing = (0.5, 0.5, 0.7)
    thin = np.stack([tube((24, 24, 16), 3)] * 2)[:, None]
    thick = np.stack([tube((24, 24, 16), 5)] * 2)[:, None]
    s_thin = label_realism_stats(None, thin, spacing=spacing, progress=False)
    s_thick = label_realism_stats(None, thick, spacing=spacing, progress=False)
    assert np.median(s_thin.radii_mm) == pytest.approx(np.sqrt(10) * 0.5)
    assert np.median(s_thick.radii_mm) == pytest.approx(np.sqrt(26) * 0.5)
    assert s_thin.vessel_fraction[0] == pytest.approx(np.pi * 9 / (24 * 24), rel=0.1)
    d = compare_label_realism(s_thin, s_thick)
    assert d["w1_radius_mm"] == pytest.approx(0.5 * (np.sqrt(26) - np.sqrt(10)), rel=0.05)
    assert d["w1_vessel_fraction"] == pytest.approx(abs(thin.mean() - thick.mean()), rel=1e-9)


def test_identical_sets_have_zero_distance():
    rng = np.random.default_rng(0)
    labs = np.stack([disc((24, 24), tuple(rng.integers(6, 18, 2)), int(rng.integers(1, 5))) for _ in range(6)])
    labs = labs[:, None].astype(np.float32)
    imgs = np.where(labs > 0, 0.8, -0.7) + 0.05 * rng.normal(size=labs.shape)
    a = label_realism_stats(imgs, labs, spacing=(0.5, 0.5), progress=False)
    b = label_realism_stats(imgs.copy(), labs.copy(), spacing=(0.5, 0.5), progress=False)
    d = compare_label_realism(a, b)
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in d.values()), d


def test_empty_patches_are_counted_not_averaged():
    lab = np.zeros((3, 1, 16, 16), np.uint8)
    lab[0, 0, 4:8, 4:8] = 1
    img = np.where(lab > 0, 1.0, -1.0)
    img[1:] = 0.3  # empty-label patches with some intensity
    st = label_realism_stats(img, lab, progress=False)
    s = st.summary()
    assert s["empty_fraction"] == pytest.approx(2 / 3)
    assert s["vessel_fraction_mean"] == pytest.approx(16 / 256 / 3)  # fraction 0 is a real value
    assert s["largest_share_mean"] == 1.0 and s["mean_in_mean"] == 1.0  # NaNs of empty patches left out
    assert np.isnan(st.tissue_to_vessel[1:]).all()


def test_image_label_pairs_in_one_tensor_and_shape_errors():
    lab = disc((16, 16), (8, 8), 3)[None]
    pair = np.stack([np.where(lab, 1.0, -0.5), lab.astype(float)], axis=1)  # (1, 2, 16, 16)
    st = label_realism_stats(pair, pair, image_channel=0, label_channel=1, progress=False)
    assert st.tissue_to_vessel[0] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="differ in shape"):
        label_realism_stats(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 9)), progress=False)


def test_histogram_plot(tmp_path):
    plots = pytest.importorskip("metrics.plots")
    st = label_realism_stats(None, disc((16, 16), (8, 8), 3)[None, None], progress=False)
    fig = plots.plot_label_realism({"real": st, "synthetic": st})
    plots.save_figure(fig, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_fragmented_3d_labels_are_visible_where_an_image_fid_is_blind():
    """The 3D paper's SN-MP failure: the same images with the tube label broken into pieces. Anything computed on
    the image channel alone (FID, PRD) sees two identical sets; components, largest share and speck share move by
    the known amounts."""
    connected = np.stack([tube((24, 24, 16), 3)] * 4)[:, None]
    fragmented = connected.copy()
    fragmented[..., 1::3] = False  # cut every third slice: 6 pieces of ≤ 2 slices (≤ 58 voxels each)
    fragmented[..., 2::3] = False  # ... and every third other: 16/3 → 6 discs of one slice (29 voxels)
    images = np.where(connected, 0.8, -0.6) + 0.05 * np.random.default_rng(0).normal(size=connected.shape)
    real = label_realism_stats(images, connected, spacing=(0.5, 0.5, 0.7), progress=False)
    syn = label_realism_stats(images, fragmented, spacing=(0.5, 0.5, 0.7), progress=False)
    np.testing.assert_array_equal(real.n_components, 1)
    np.testing.assert_array_equal(syn.n_components, 6)  # slices z = 0, 3, 6, 9, 12, 15
    np.testing.assert_allclose(syn.largest_share, 1 / 6)
    np.testing.assert_allclose(syn.speck_share, 0.0)  # 29-voxel discs are more than 27 voxels
    d = compare_label_realism(syn, real)
    assert d["w1_n_components"] == pytest.approx(5.0) and d["w1_largest_share"] == pytest.approx(5 / 6)
    lattice = np.zeros_like(connected)
    lattice[..., ::2, ::2, ::2] = True  # single voxels two apart: not even 26-connected
    s = label_realism_stats(images, connected & lattice, progress=False)
    np.testing.assert_allclose(s.speck_share, 1.0)
    assert compare_label_realism(s, real)["w1_speck_share"] == pytest.approx(1.0)
