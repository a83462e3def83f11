"""Perfusion metrics equal scikit-image on random arrays; masked variants; the undefined-value policy; summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from metrics.perfusion import PerfusionScores, mean_sd, slice_metrics, ssim_map


def pair(seed: int, shape: tuple[int, int] = (32, 40), noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.uniform(-1, 1, shape)
    return np.clip(target + rng.normal(0, noise, shape), -1, 1), target


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("data_range", [2.0, 7.5])
def test_metrics_equal_scikit_image(seed: int, data_range: float) -> None:
    pred, target = pair(seed)
    pred, target = pred * data_range / 2, target * data_range / 2  # physical-unit-like scale
    got = slice_metrics(torch.tensor(pred), torch.tensor(target), data_range)
    assert got["ssim"] == pytest.approx(structural_similarity(target, pred, data_range=data_range), rel=1e-12, abs=1e-12)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=data_range), rel=1e-12)
    assert got["nrmse"] == pytest.approx(normalized_root_mse(target, pred), rel=1e-12)
    assert got["mae"] == pytest.approx(np.abs(pred - target).mean(), rel=1e-12)


def test_float32_tensors_agree_with_scikit_image_in_float64() -> None:
    pred, target = pair(9)
    got = slice_metrics(torch.tensor(pred, dtype=torch.float32), torch.tensor(target, dtype=torch.float32), 2.0)
    p32, t32 = pred.astype(np.float32).astype(float), target.astype(np.float32).astype(float)
    assert got["ssim"] == pytest.approx(structural_similarity(t32, p32, data_range=2.0), rel=1e-10)


def test_masked_metrics_use_only_mask_pixels() -> None:
    pred, target = pair(1)
    mask = np.zeros_like(target, dtype=bool)
    mask[5:25, 8:30] = True
    got = slice_metrics(torch.tensor(pred), torch.tensor(target), 2.0, torch.tensor(mask))
    p, t = pred[mask], target[mask]
    assert got["mae"] == pytest.approx(np.abs(p - t).mean(), rel=1e-12)
    assert got["nrmse"] == pytest.approx(normalized_root_mse(t, p), rel=1e-12)
    assert got["psnr"] == pytest.approx(10 * np.log10(4 / mean_squared_error(t, p)), rel=1e-12)
    _, full = structural_similarity(target, pred, data_range=2.0, full=True)  # skimage's SSIM map
    assert got["ssim"] == pytest.approx(full[3:-3, 3:-3][mask[3:-3, 3:-3]].mean(), rel=1e-12)
    assert ssim_map(torch.tensor(pred), torch.tensor(target), 2.0).shape == (26, 34)


def test_undefined_values_are_nan_never_inf() -> None:
    _, target = pair(2)
    zeros = torch.zeros(16, 16)
    assert math.isnan(slice_metrics(torch.ones(16, 16), zeros, 2.0)["nrmse"])  # all-zero target
    exact = slice_metrics(torch.tensor(target), torch.tensor(target), 2.0)
    assert math.isnan(exact["psnr"]) and exact["ssim"] == pytest.approx(1.0) and exact["mae"] == 0
    empty = slice_metrics(torch.tensor(target), torch.tensor(target) + 0.1, 2.0, torch.zeros(target.shape, dtype=torch.bool))
    assert all(math.isnan(v) for v in empty.values())
    border = torch.zeros(target.shape, dtype=torch.bool)
    border[0, :] = True  # brain only where SSIM's 7×7 window does not reach: SSIM undefined, the rest defined
    edge = slice_metrics(torch.tensor(target) + 0.1, torch.tensor(target), 2.0, border)
    assert math.isnan(edge["ssim"]) and edge["mae"] == pytest.approx(0.1) and math.isfinite(edge["psnr"])


def test_bad_input_refused() -> None:
    with pytest.raises(ValueError, match="equal 2D slices"):
        slice_metrics(torch.zeros(8, 8), torch.zeros(8, 9), 2.0)
    with pytest.raises(ValueError, match="at least 7×7"):
        slice_metrics(torch.zeros(5, 5), torch.zeros(5, 5), 2.0)
    with pytest.raises(ValueError, match="data_range must be > 0"):
        slice_metrics(torch.zeros(8, 8), torch.zeros(8, 8), 0.0)


def test_mean_sd_leaves_out_undefined_values() -> None:
    assert mean_sd([1.0, 3.0, math.nan, math.inf]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    mean, sd, undefined = mean_sd([math.nan])
    assert math.isnan(mean) and math.isnan(sd) and undefined == 1


def test_scores_average_slices_per_patient_then_patients() -> None:
    scores = PerfusionScores()
    preds, targets = zip(*[pair(s, (16, 16)) for s in range(3)])
    pred, target = torch.tensor(np.stack(preds))[:, None], torch.tensor(np.stack(targets))[:, None]
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[2] = False  # patient b's only slice has no brain: its brain row is undefined
    scores.add("norm", pred, target, 2.0, mask, ["a", "a", "b"], [0, 1, 0])
    scores.add("norm", pred[:1], target[:1], 2.0, mask[:1], ["a"], [0])  # a repeated (DDP-padded) slice: kept once
    ssim = [structural_similarity(t, p, data_range=2.0) for p, t in zip(preds, targets)]
    summary = scores.summary()
    patient_means = [(ssim[0] + ssim[1]) / 2, ssim[2]]
    assert summary["norm/all/ssim_mean"] == pytest.approx(np.mean(patient_means), rel=1e-12)
    assert summary["norm/all/ssim_sd"] == pytest.approx(np.std(patient_means, ddof=1), rel=1e-12)
    assert summary["norm/brain/ssim_mean"] == pytest.approx(patient_means[0], rel=1e-12)  # b left out, not NaN
    assert summary["norm/brain/ssim_n_undefined"] == 1 and summary["norm/all/n_patients"] == 2
    assert len(scores.per_slice_table()) == 6


def test_scores_write_reports(tmp_path) -> None:
    scores = PerfusionScores()
    pred, target = (torch.tensor(a)[None, None] for a in pair(0, (16, 16)))
    scores.add("norm", pred, target, 2.0, None, ["p"], [3])
    scores.write(tmp_path, {"target_range": [0.0, 10.0]})
    assert {p.name for p in tmp_path.iterdir()} == {"per_slice.csv", "per_patient.csv", "summary.json"}
    assert "undefined_policy" in (tmp_path / "summary.json").read_text()
