"""metrics.membership: attacks on a simulated cohort (patients = clusters in feature space), exact ROC metrics,
patient-level aggregation and the patient-cluster bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metrics.membership import (auc, cluster_bootstrap, dp_roc_bound, evaluate_attack, membership_scores,
                                naive_bootstrap, per_patient, pixel_features, roc_curve, tpr_at_fpr)

F, N_PATCH = 16, 40


def cohort(rng: np.random.Generator, n_patients: int, prefix: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Patients are clusters: centre spread 1, within-patient spread 1 (notes §6 simulation, smaller)."""
    centres = rng.normal(0, 1, (n_patients, F))
    x = centres[:, None, :] + rng.normal(0, 1, (n_patients, N_PATCH, F))
    pids = np.repeat([f"{prefix}{i}" for i in range(n_patients)], N_PATCH)
    return torch.from_numpy(x.reshape(-1, F)).float(), pids, centres


@pytest.fixture(scope="module")
def sim() -> dict:
    rng = np.random.default_rng(0)
    members, pid_in, centres = cohort(rng, 20, "m")
    nonmembers, pid_out, _ = cohort(rng, 20, "n")
    reference, _, _ = cohort(rng, 10, "r")
    n_syn = 800
    population = torch.from_numpy(rng.normal(0, math.sqrt(2), (n_syn, F))).float()
    memorising = torch.from_numpy(centres[rng.integers(0, 20, n_syn)] + rng.normal(0, 1, (n_syn, F))).float()
    return dict(members=members, pid_in=pid_in, nonmembers=nonmembers, pid_out=pid_out, reference=reference,
                population=population, memorising=memorising)


def test_generator_reproducing_its_patients_is_identified_at_patient_level(sim):
    scores = membership_scores(sim["members"], sim["nonmembers"], sim["memorising"], sim["reference"])
    assert {"nn", "nn_calibrated", "domias", "mc@r1", "mc@r50"} <= set(scores)
    result = evaluate_attack(*_args(scores["nn"], sim), n_boot=200)
    assert result["patient"]["auc"] > 0.9
    assert result["patient"]["auc"] > result["patch"]["auc"]  # aggregation turns a patch leak into identification
    assert evaluate_attack(*_args(scores["nn_calibrated"], sim), n_boot=200)["patient"]["auc"] > 0.9


def test_population_generator_ci_covers_chance(sim):
    scores = membership_scores(sim["members"], sim["nonmembers"], sim["population"], sim["reference"])
    for name in ("nn", "nn_calibrated", "domias"):
        result = evaluate_attack(*_args(scores[name], sim), n_boot=300)
        for level in ("patch", "patient"):
            lo, hi = result[level]["auc_ci95"]
            assert lo <= 0.5 <= hi, (name, level, result[level])


def _args(pair: tuple[np.ndarray, np.ndarray], sim: dict) -> tuple:
    return pair[0], sim["pid_in"], pair[1], sim["pid_out"]


def test_cluster_bootstrap_is_wider_than_naive(sim):
    """A patient effect (shared offset of every patch of a patient) makes patches correlated."""
    rng = np.random.default_rng(1)
    s_in = np.repeat(rng.normal(0, 1, 20), N_PATCH) + rng.normal(0, 0.3, 20 * N_PATCH)
    s_out = np.repeat(rng.normal(0, 1, 20), N_PATCH) + rng.normal(0, 0.3, 20 * N_PATCH)
    lo_c, hi_c = cluster_bootstrap(auc, s_in, sim["pid_in"], s_out, sim["pid_out"], n_boot=300)
    lo_n, hi_n = naive_bootstrap(auc, s_in, s_out, n_boot=300)
    assert hi_c - lo_c > 2 * (hi_n - lo_n)


def test_roc_auc_and_tpr_are_exact_rank_statistics():
    s_in, s_out = np.array([5.0, 4.0, 2.0, 2.0]), np.array([3.0, 2.0, 1.0, 0.0])
    fpr, tpr = roc_curve(s_in, s_out)
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(tpr, [0, 0.25, 0.5, 0.5, 1.0, 1.0, 1.0])
    # P(in > out) + ½ P(tie): 16 pairs, 12 wins, 2 ties
    assert auc(s_in, s_out) == pytest.approx(13 / 16)
    assert auc(np.ones(5), np.ones(7)) == pytest.approx(0.5)
    assert tpr_at_fpr(s_in, s_out, 0.25) == pytest.approx(0.5)  # not interpolated towards the tie at 0.5
    assert tpr_at_fpr(s_in, s_out, 0.49) == pytest.approx(0.5)
    assert tpr_at_fpr(s_in, s_out, 0.0) == pytest.approx(0.5)


def test_tpr_at_unresolvable_fpr_is_nan():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(1, 1, 500), rng.normal(0, 1, 50)  # smallest FPR 1/50 = 0.02
    assert math.isnan(tpr_at_fpr(s_in, s_out, 0.01))
    assert math.isnan(tpr_at_fpr(s_in, s_out, 0.001))
    assert not math.isnan(tpr_at_fpr(s_in, s_out, 0.02))
    assert not math.isnan(tpr_at_fpr(s_in, rng.normal(0, 1, 1000), 0.001))
    result = evaluate_attack(s_in, np.arange(500) // 50, s_out, np.arange(50) // 10, n_boot=50)
    assert math.isnan(result["patient"]["tpr_at_fpr_0.01"]) and result["patient"]["n_nonmembers"] == 5


def test_per_patient_mean_and_max():
    ids, mean = per_patient(np.array([1.0, 3.0, 10.0]), np.array(["b", "b", "a"]))
    assert list(ids) == ["a", "b"] and list(mean) == [10.0, 2.0]
    assert list(per_patient(np.array([1.0, 3.0, 10.0]), np.array(["b", "b", "a"]), "max")[1]) == [10.0, 3.0]


def test_pixel_features_scale_free_image_and_signed_label():
    img = torch.rand(3, 1, 8, 8)
    lab = (torch.rand(3, 1, 8, 8) > 0.5).to(torch.uint8)
    a, b = pixel_features(img, lab), pixel_features(img * 7 + 3, lab)
    assert a.shape == (3, 128)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert set(a[:, 64:].unique().tolist()) <= {-1.0, 1.0}


def test_dp_bound_region():
    fpr = np.linspace(0, 1, 11)
    np.testing.assert_allclose(dp_roc_bound(fpr, 0.0, 0.0), fpr, atol=1e-12)
    bound = dp_roc_bound(fpr, 1.0, 1e-5)
    assert bound[0] == pytest.approx(1e-5) and np.all(bound >= fpr) and bound[-1] == 1.0
    assert bound[1] == pytest.approx(min(math.e * 0.1 + 1e-5, 1 - math.exp(-1) * (1 - 1e-5 - 0.1)))
