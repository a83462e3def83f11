"""Checks before training: every split's patients are validated at setup (a broken test patient fails `fit`,
not `test` after training), each content once; patches larger than the volume are refused with the sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import datamodules.cohort_checks as checks
from cli import main
from datamodules.cohort import CohortError
from datamodules.gan_data import GANPatchDataModule
from datamodules.splits import split_patients
from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import tiny_patient, write_nifti, write_tiny_cohort

pytestmark = pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*")


def _test_patient(n_patients: int = 6) -> str:
    ids = [f"p{i:03d}" for i in range(n_patients)]
    return split_patients(ids, 3, 1, 2, seed=0)["test"][0]  # the split of tests/configs/tiny_*.yaml


def test_broken_test_patient_fails_fit_before_training(tmp_path: Path) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    bad = _test_patient()
    _, label, _ = tiny_patient(seed=int(bad[1:]))
    write_nifti(cohort / bad / "label.nii.gz", label * 255)  # a 0/255 label: refused, not cast
    args = cpu_args(CONFIGS / "experiment" / "cpu_wgan_gp_sn.yaml", cohort, tmp_path / "run")
    with pytest.raises(CohortError, match=rf"{bad}/label\.nii\.gz: label is not binary"):
        main(["fit", *args, "--trainer.max_epochs", "1"])
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # nothing trained, nothing saved
    with pytest.raises(CohortError, match=rf"{bad}/label\.nii\.gz: label is not binary"):  # not cached as valid
        main(["fit", *args, "--trainer.max_epochs", "1"])


def test_test_patients_are_validated_once_per_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    loaded: list[str] = []
    real_load = checks.load_patient
    monkeypatch.setattr(checks, "load_patient", lambda rec: loaded.append(rec.patient_id) or real_load(rec))

    def prepared() -> GANPatchDataModule:
        dm = GANPatchDataModule(cohort_dir=str(cohort), n_train=3, n_val=1, n_test=2, cache_dir=str(tmp_path / "c"),
                                batch_size=4, patch_size=[16, 16], n_vessel=2, n_random=2)
        dm.prepare_data()
        return dm

    dm = prepared()
    assert sorted(loaded) == sorted(dm.splits["test"])  # train/val are checked by the patch extraction
    prepared()
    assert len(loaded) == 2  # unchanged files: not read again
    image, _, _ = tiny_patient(seed=9)
    write_nifti(cohort / dm.splits["test"][1] / "image.nii.gz", image)  # new content: checked again
    prepared()
    assert loaded[2:] == [dm.splits["test"][1]]


def test_patch_larger_than_volume_is_refused_with_sizes(tmp_path: Path) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)  # volumes 40×40×12
    dm = GANPatchDataModule(cohort_dir=str(cohort), n_train=3, n_val=1, n_test=2, cache_dir=str(tmp_path / "c"),
                            patch_size=[48, 32], n_vessel=2, n_random=2)
    with pytest.raises(CohortError, match=r"image\.nii\.gz: patch size \[48, 32\] is larger than the volume "
                                          r"\[40, 40, 12\] of patient 'p00\d' \(x 48 > 40\)"):
        dm.prepare_data()
    dm3 = GANPatchDataModule(cohort_dir=str(cohort), n_train=3, n_val=1, n_test=2, cache_dir=str(tmp_path / "c"),
                             patch_size=[16, 16, 16], grid=[1, 1, 1], n_vessel=1, n_random=0)
    with pytest.raises(CohortError, match=r"\(z 16 > 12\)"):
        dm3.prepare_data()
    assert not np.any([p.name.startswith(".") and "tmp" in p.name for p in (tmp_path / "c").iterdir()])


def test_cohort_of_an_older_simulator_is_refused_not_reused(tmp_path: Path) -> None:
    """Same settings, other simulator: the images differ, so the cohort must not be taken for the configured one."""
    import json

    from datamodules.base import SimulationSpec
    from simulation.cohort import SIMULATOR_VERSION

    spec = SimulationSpec("pegasus", n_patients=2, scale=0.5, seed=0)
    root = tmp_path / "data" / "simulated" / "pegasus-old"
    write_tiny_cohort(root, n_patients=2, prefix="pegasus-sim-")
    meta = {"profile": "pegasus", "n_patients": 2, "seed": 0, "scale": 0.5, "complete": True,
            "patient_ids": ["pegasus-sim-000", "pegasus-sim-001"], "simulator_version": SIMULATOR_VERSION}
    (root / "cohort.json").write_text(json.dumps(meta))
    assert checks.needs_simulation(root, spec) is False  # current version, same settings: reused
    (root / "cohort.json").write_text(json.dumps({**meta, "simulator_version": "0"}))
    with pytest.raises(CohortError, match=r"simulator_version: '0' in cohort.json.*delete the folder"):
        checks.needs_simulation(root, spec)
