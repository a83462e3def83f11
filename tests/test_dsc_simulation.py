"""DSC-MRI simulator: closed forms of the indicator-dilution model, determinism, cohort layout and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.signal import fftconvolve

import simulation.dsc_io as dsc_io
from metrics.deconvolution import K_H, RHO
from simulation.dsc_cohort import simulate_dsc_cohort, simulate_dsc_patient
from simulation.dsc_model import AIFParams, aif_curve, gamma_variate, residue_peak_time, tissue_curves, truth_maps
from workflows.simulate_dsc import simulate_dsc

TR, FRAMES = 1.39, 80
AIF = AIFParams(t0=15.0)


def test_cbv_equals_cbf_times_mtt_from_area_ratio() -> None:
    """Central volume theorem, noise-free: ∫C_t/∫C_a·k_H/ρ·100 = CBF·MTT/60 within 2 % (with delay, dispersion,
    recirculation), so the convolutions preserve areas."""
    mtt = np.array([2.0, 4.0, 6.0, 10.0, 4.0, 4.0])
    delay = np.array([0.0, 0.0, 3.0, 5.0, 8.0, 2.0])
    disp = np.array([0.0, 0.0, 1.0, 2.0, 0.0, 3.0])
    cbf = np.array([60.0, 30.0, 50.0, 20.0, 40.0, 55.0])
    c, _ = tissue_curves(cbf, mtt, delay, disp, AIF, TR, FRAMES)
    ca = aif_curve(np.arange(FRAMES) * TR, AIF)
    cbv = c.sum(1) / ca.sum() * K_H / RHO * 100
    np.testing.assert_allclose(cbv, cbf * mtt / 60, rtol=0.02)
    np.testing.assert_allclose(truth_maps(cbf, mtt, delay, disp, np.zeros(6))["cbv"], cbf * mtt / 60, rtol=1e-6)


def test_tmax_is_delay_without_dispersion_and_later_with_it() -> None:
    delay = np.array([0.0, 4.0, 4.0, 4.0])
    disp = np.array([0.0, 0.0, 2.0, 4.0])
    tmax = truth_maps(np.full(4, 50.0), np.full(4, 4.0), delay, disp, np.zeros(4))["tmax"]
    np.testing.assert_allclose(tmax[:2], delay[:2])
    assert tmax[2] > 4.0 and tmax[3] > tmax[2]
    np.testing.assert_allclose(tmax[2], 4.0 + np.log(2) * 8 / 2, rtol=1e-6)  # 6.77 s, the note's 6.7
    # the closed form is the argmax of h_disp ⊛ R computed numerically
    t = np.arange(0, 40, 1e-3)
    for mtt, b in ((4.0, 2.0), (3.0, 3.0), (8.0, 0.5)):
        kernel = fftconvolve(np.exp(-t / b) / b, np.exp(-t / mtt))[: len(t)]
        assert abs(t[kernel.argmax()] - residue_peak_time(np.array(mtt), np.array(b))) < 2e-3


def test_ttp_within_a_fine_step_of_the_curve_peak() -> None:
    """TTP from the simulator's fine grid agrees with the peak of a 64× oversampled evaluation."""
    args = (np.array([50.0, 20.0, 40.0]), np.array([4.0, 6.0, 3.0]), np.array([1.0, 5.3, 2.2]),
            np.array([0.5, 2.0, 0.0]))
    _, ttp = tissue_curves(*args, AIF, TR, FRAMES, oversample=8)
    fine, _ = tissue_curves(*args, AIF, TR / 64, 64 * 45, oversample=1)  # 0.02 s grid over the first 62 s
    peak = fine.argmax(1) * TR / 64
    assert np.all(np.abs(ttp - peak) < TR / 8)


def test_gamma_variate_peak_and_support() -> None:
    t = np.linspace(0, 40, 4001)
    g = gamma_variate(t, 10.0, 3.0, 1.5)
    assert g[t <= 10].max() == 0.0
    assert abs(t[g.argmax()] - 14.5) < 0.011 and abs(g.max() - 1) < 1e-6


def test_patient_is_deterministic_and_seed_dependent() -> None:
    a = simulate_dsc_patient("acute", "acute-007", seed=3, shape=(16, 16, 3))
    b = simulate_dsc_patient("acute", "acute-007", seed=3, shape=(16, 16, 3))
    c = simulate_dsc_patient("acute", "acute-007", seed=4, shape=(16, 16, 3))
    np.testing.assert_array_equal(a.series, b.series)
    for name in a.truth:
        np.testing.assert_array_equal(a.truth[name], b.truth[name])
        np.testing.assert_array_equal(a.pipeline[name], b.pipeline[name])
    assert not np.array_equal(a.series, c.series)


@pytest.mark.parametrize("profile", ["acute", "steno"])
def test_lesions_and_pipeline_maps_are_plausible(profile: str) -> None:
    p = simulate_dsc_patient(profile, f"{profile}-001", seed=0, shape=(32, 32, 6))
    brain = p.brain_mask > 0
    t, q = p.truth, p.pipeline
    assert 0.2 < brain.mean() < 0.8
    assert np.all(t["cbf"][~brain] == 0) and np.all(q["tmax"][~brain] == 0)
    # delayed territory: Tmax well above the normal ~1 s somewhere
    assert t["tmax"][brain].max() > (5.0 if profile == "acute" else 2.0)
    # the pipeline sees it: pipeline maps follow the truth (pipeline CBF is biased low by truncation)
    for name, r_min in (("cbf", 0.8), ("tmax", 0.6)):
        assert np.corrcoef(t[name][brain], q[name][brain])[0, 1] > r_min, name
    assert 0.3 < np.median(q["cbf"][brain] / t["cbf"][brain]) < 0.9
    dip = p.series[brain].min(1) / p.series[brain][:, :6].mean(1)
    assert 0.6 < np.median(dip) < 0.9  # a 10–40 % signal drop at the bolus


def test_cohort_layout_and_contract(tmp_path: Path) -> None:
    root = simulate_dsc(str(tmp_path / "dsc"), profile="steno", n_patients=2, shape=(16, 16, 3), progress=False)
    meta = json.loads((root / "cohort.json").read_text())
    assert meta["profile"] == "steno" and meta["frames"] == 80 and meta["TR"] == 1.39 and meta["TE"] == 0.029
    assert meta["patients"] == ["steno-000", "steno-001"] and meta["complete"] is True
    assert meta["maps"] == ["cbf", "cbv", "mtt", "tmax", "ttp"] and meta["units"]["cbf"] == "ml/100g/min"
    img = nib.load(root / "steno-000" / "dsc.nii.gz")
    assert img.shape == (16, 16, 3, 80) and img.get_data_dtype() == np.float32
    assert img.header.get_zooms()[3] == pytest.approx(1.39) and img.header.get_xyzt_units() == ("mm", "sec")
    assert nib.load(root / "steno-000" / "brain_mask.nii.gz").get_data_dtype() == np.uint8
    for kind in ("truth", "pipeline"):
        for name in meta["maps"]:
            assert nib.load(root / "steno-000" / kind / f"{name}.nii.gz").shape == (16, 16, 3)
    pmeta = json.loads((root / "steno-001" / "meta.json").read_text())
    assert {"TR", "TE", "profile", "id", "seed", "lesion"} <= set(pmeta)
    # the cohort holds exactly the patients simulate_dsc_patient gives alone
    alone = simulate_dsc_patient("steno", "steno-001", seed=0, shape=(16, 16, 3))
    np.testing.assert_allclose(np.asarray(nib.load(root / "steno-001" / "dsc.nii.gz").dataobj), alone.series)
    with pytest.raises(ValueError, match="other settings.*seed"):
        simulate_dsc(str(root), profile="steno", n_patients=2, shape=(16, 16, 3), seed=1, progress=False)


def test_interrupted_write_leaves_nothing_and_resume_completes(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    root = tmp_path / "dsc"
    real_save, calls = dsc_io._save, {"n": 0}

    def failing_save(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 12 + 4:  # mid-way through the second patient (12 files per patient)
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(dsc_io, "_save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        simulate_dsc_cohort(str(root), "acute", n_patients=3, shape=(16, 16, 3), progress=False)
    names = sorted(p.name for p in root.iterdir())
    assert names == ["acute-000", "cohort.json"]  # no partial patient, no temporary folder
    assert json.loads((root / "cohort.json").read_text())["complete"] is False
    monkeypatch.setattr(dsc_io, "_save", real_save)
    stamp = (root / "acute-000" / "dsc.nii.gz").stat().st_mtime_ns
    simulate_dsc_cohort(str(root), "acute", n_patients=3, shape=(16, 16, 3), progress=False)
    assert (root / "acute-000" / "dsc.nii.gz").stat().st_mtime_ns == stamp  # kept, not simulated again
    assert json.loads((root / "cohort.json").read_text())["complete"] is True
    assert sorted(p.name for p in root.iterdir()) == ["acute-000", "acute-001", "acute-002", "cohort.json"]


def test_temporary_folders_of_killed_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    """A SIGKILLed writer (no `finally`) leaves its hidden temporary patient folder; the next run removes it."""
    import os
    import socket
    import subprocess
    import sys

    root = tmp_path / "dsc"
    root.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    orphan = root / f".acute-000{dsc_io.TMP_MARK}{host}-{int(dead.stdout)}-0123abcd"
    live = root / f".acute-001{dsc_io.TMP_MARK}{host}-{os.getpid()}-0123abcd"
    for folder in (orphan, live):
        (folder / "truth").mkdir(parents=True)
    simulate_dsc_cohort(str(root), "acute", n_patients=1, shape=(16, 16, 3), progress=False)
    assert not orphan.exists() and live.exists()


def test_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        simulate_dsc_cohort(str(tmp_path), "acute", n_patients=1, shape=(16, 16, 3), progress=False)
