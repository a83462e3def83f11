"""Realism measures (metrics/realism.py) recover known values; rendered real labels are not threshold-easy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from metrics.realism import edge_width_mm, oracle_threshold_dsc, realism_measures, Regions
from simulation.cohort import simulate_patient
from simulation.profiles import PROFILES
from simulation.render import derive_brain_mask, render_tof
from workflows.realism_report import realism_report

IXI_LABEL = Path(__file__).parent / "data" / "ixi-vessel-labels" / "IXI020-Guys-0700_vessels_manual.nii.gz"
SPACING = (0.5, 0.5, 0.7)
SHAPE = (96, 96, 40)


def _phantom(noise_blur_mm: float, sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Tissue 100 in a box 'brain', air (0) around it, a bright tube; magnitude of signal + complex noise."""
    brain = np.zeros(SHAPE, bool)
    brain[24:72, 24:72, 4:36] = True
    label = np.zeros(SHAPE, np.uint8)
    label[46:50, 46:50, 4:36] = 1
    signal = np.where(brain, 100.0, 0.0) + 400.0 * label
    sig = [noise_blur_mm / s for s in SPACING]
    noise = []
    for _ in range(2):
        n = rng.standard_normal(SHAPE)
        if noise_blur_mm > 0:
            n = ndimage.gaussian_filter(n, sig, mode="wrap")
        noise.append(n / n.std() * sigma)
    image = np.abs(signal + noise[0] + 1j * noise[1]).astype(np.float32)
    true_rho = float(np.mean([np.corrcoef(noise[0][:-1].ravel(), noise[0][1:].ravel())[0, 1],
                              np.corrcoef(noise[0][:, :-1].ravel(), noise[0][:, 1:].ravel())[0, 1]]))  # fmt: skip
    return image, label, brain, true_rho


@pytest.mark.parametrize("blur_mm", [0.0, 0.45])
def test_noise_level_and_correlation_recovered_from_air(blur_mm: float) -> None:
    image, label, brain, true_rho = _phantom(blur_mm, 3.0, np.random.default_rng(0))
    m = realism_measures(image, label, brain, SPACING)
    assert m["noise_region"] == "air"
    assert m["noise_pct"] == pytest.approx(3.0, rel=0.05)  # σ = 3 on tissue 100
    assert m["noise_correlation"] == pytest.approx(true_rho, abs=0.05)
    if blur_mm == 0.0:
        assert m["noise_correlation"] < 0.1
    else:
        assert m["noise_correlation"] > 0.6


def _tube(blur_mm: float, contrast: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A wide tube (radius 3 mm) of known contrast over tissue 1, blurred by a Gaussian of known σ."""
    x, y = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE[:2], SPACING[:2])), indexing="ij")
    inside = (x - 24.1) ** 2 + (y - 23.9) ** 2 < 3.0**2
    label = np.repeat(inside[:, :, None], SHAPE[2], axis=2).astype(np.uint8)
    image = 1.0 + (contrast - 1.0) * label.astype(np.float32)
    image = ndimage.gaussian_filter(image, [blur_mm / s for s in SPACING]) if blur_mm > 0 else image
    return image.astype(np.float32), label, np.ones(SHAPE, bool)


def test_tube_contrast_and_edge_blur_recovered() -> None:
    widths = {}
    for blur in (0.3, 0.5, 0.8):
        image, label, brain = _tube(blur)
        m = realism_measures(image, label, brain, SPACING)
        if blur <= 0.5:  # a wider blur dims the rim voxels and with them the median
            assert m["vessel_tissue_ratio"] == pytest.approx(5.0, rel=0.05)
            assert 1.0 <= m["bright_vessel_ratio"] < 1.1  # flat lumen: only the blurred rim spreads it
        assert m["vessel_tissue_ratio"] <= 5.0
        widths[blur] = m["edge_width_mm"]
    # A Gaussian edge rises from 10 % to 90 % over 2.563 σ; the label's voxel staircase adds a little.
    for blur, width in widths.items():
        assert width == pytest.approx(2.563 * blur, abs=0.25), widths
    assert widths[0.3] < widths[0.5] < widths[0.8]


def test_oracle_threshold_dsc_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    label = rng.random((20, 20, 10)) < 0.1
    image = (label * 1.0 + rng.normal(0, 0.6, label.shape)).astype(np.float32)
    dsc, threshold = oracle_threshold_dsc(image, label)
    brute = max(2 * np.sum((image >= t) & label) / (label.sum() + np.sum(image >= t)) for t in np.unique(image))
    assert dsc == pytest.approx(brute)
    assert 2 * np.sum((image >= threshold) & label) / (label.sum() + np.sum(image >= threshold)) == pytest.approx(dsc)
    assert oracle_threshold_dsc(label.astype(np.float32) * 3, label)[0] == 1.0  # perfectly separable


def _ixi_crop(half: int = 120) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A real IXI label cut to (2·half)² voxels in-plane around its vessels (≈113 mm: the whole circle of Willis
    and its branches, small vessels included), to keep the test fast."""
    nii = nib.load(str(IXI_LABEL))
    lab = np.asarray(nii.dataobj)
    cx, cy = (int(np.mean(i)) for i in np.nonzero(lab)[:2])
    return (lab[cx - half : cx + half, cy - half : cy + half, :] > 0).astype(np.uint8), tuple(
        float(z) for z in nii.header.get_zooms()[:3])  # fmt: skip


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_rendered_real_label_is_not_threshold_easy(profile: str) -> None:
    lab, sp = _ixi_crop()
    mask = derive_brain_mask(lab, sp)
    image = render_tof(lab, sp, profile, np.random.default_rng(0), brain_mask=mask)
    dsc, _ = oracle_threshold_dsc(image, lab, mask)
    assert 0.3 < dsc <= 0.85  # it was ≈1.0 with every label voxel at occupancy ≥ 0.85
    # True partial volume: one-voxel-thin vessels come out dimmer than the thick ones.
    thickness = ndimage.distance_transform_edt(lab, sampling=sp)
    calibre = ndimage.grey_dilation(thickness, size=(5, 5, 3))[lab > 0]
    values = image[lab > 0]
    assert np.median(values[calibre <= 0.5]) < 0.6 * np.median(values[calibre >= 1.2])


def test_simulated_label_independent_of_appearance_and_deterministic() -> None:
    brighter = dataclasses.replace(PROFILES["pegasus"], noise_sigma=0.01, tissue_texture=0.0, recon_blur_mm=0.2)
    a = simulate_patient(PROFILES["pegasus"], "det-realism", seed=3, scale=0.25)  # type: ignore[arg-type]
    b = simulate_patient(brighter, "det-realism", seed=3, scale=0.25)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.image, b.image)
    again = simulate_patient("pegasus", "det-realism", seed=3, scale=0.25)
    np.testing.assert_array_equal(a.image, again.image)


def test_simulated_patient_meets_the_threshold_target() -> None:
    p = simulate_patient("pegasus", "pegasus-sim-000", seed=0, scale=0.4)
    regions = Regions(p.label, p.brain_mask, p.spacing)
    assert np.isfinite(edge_width_mm(p.image, regions))
    assert oracle_threshold_dsc(p.image, p.label, p.brain_mask)[0] <= 0.88  # cohort mean target ≤ 0.85


def test_realism_report_writes_markdown_json_and_figure(tmp_path: Path) -> None:
    lab, sp = _ixi_crop(half=64)
    src = tmp_path / "ixi_crop.nii.gz"
    nib.save(nib.Nifti1Image(lab, np.diag([*sp, 1.0])), str(src))
    md = realism_report(str(tmp_path / "report"), n_patients=1, scale=0.3, labels=[str(src)])
    text = md.read_text()
    assert "oracle global-threshold DSC" in text and "noise_correlation" in text  # table and definitions
    data = json.loads((md.parent / "realism.json").read_text())
    assert set(data["groups"]) == {"simulated pegasus ×0.3", "render-tof pegasus"}
    row = data["groups"]["render-tof pegasus"]["rows"][0]
    assert row["id"] == "ixi_crop" and 0 < row["oracle_threshold_dsc"] < 1
    assert set(data["groups"]["simulated pegasus ×0.3"]["checks"]) >= {"noise_pct", "oracle_threshold_dsc", "label_radius_median_mm"}
    assert (md.parent / "realism.png").stat().st_size > 10_000
    assert not list(md.parent.glob("*.part*"))
