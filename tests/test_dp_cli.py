"""DP-WGAN through `cli.main` on the tiny cohort: the privacy record in the checkpoint and run manifest, resume keeps
ε, public pre-training → DP fine-tuning, and the DP data module's Poisson loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli import main
from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort

EXPERIMENT = CONFIGS / "experiment" / "cpu_dp_wgan.yaml"
FIELDS = {"unit", "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "delta", "accountant", "opacus_version",
          "epsilon", "epsilon_prv", "fake_term", "secure_mode", "history", "expected_batch_size"}  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("dp_cohort"), n_patients=6)


def _fit(cohort: Path, root: Path, *extra: str, experiment: Path = EXPERIMENT):
    return main(["fit", *cpu_args(experiment, cohort, root), "--trainer.enable_progress_bar", "false", *extra])


def test_privacy_record_in_checkpoint_and_manifest_and_resume_keeps_epsilon(cohort: Path, tmp_path: Path) -> None:
    whole = _fit(cohort, tmp_path / "whole", "--trainer.max_epochs", "2").model
    first = _fit(cohort, tmp_path / "part", "--trainer.max_epochs", "1")
    ckpt_path = next((tmp_path / "part").rglob("last.ckpt"))
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert FIELDS <= set(ckpt["privacy"]) and ckpt["privacy"]["steps"] == first.model.privacy_report()["steps"] > 0
    manifest = json.loads(next((tmp_path / "part").rglob("run_manifest.json")).read_text())
    assert FIELDS <= set(manifest["privacy"]) and manifest["privacy"]["epsilon"] == pytest.approx(ckpt["privacy"]["epsilon"])
    assert first.model.manifest_extras()["privacy"]["unit"] == "patch"
    resumed = _fit(cohort, tmp_path / "part", "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt_path)).model
    assert resumed.accountant.history == whole.accountant.history
    assert resumed.epsilon() == whole.epsilon() > first.model.epsilon()


def test_public_pretraining_then_patient_level_dp_fine_tuning(cohort: Path, tmp_path: Path) -> None:
    public = CONFIGS / "experiment" / "cpu_dp_wgan_public_pretrain.yaml"
    pre = _fit(cohort, tmp_path / "pre", "--trainer.max_epochs", "1", experiment=public)
    assert pre.model.privacy_report()["epsilon"] == float("inf")
    ckpt = next((tmp_path / "pre").rglob("last.ckpt"))
    patient = CONFIGS / "experiment" / "cpu_dp_wgan_patient.yaml"
    cli = main(["fit", *cpu_args(patient, cohort, tmp_path / "dp"), "--trainer.fast_dev_run", "true",
                "--model.init_args.pretrained", str(ckpt)])  # fmt: skip
    report = cli.model.privacy_report()
    assert report["unit"] == "patient" and report["pretrained_on_public_data"] == str(ckpt) and report["steps"] == 1
    assert report["sample_rate"] == pytest.approx(2 / 3)  # m = 2 of the tiny cohort's 3 training patients


def test_dp_data_module_yields_poisson_batches_with_patients_and_empty_batches(cohort: Path, tmp_path: Path) -> None:
    from datamodules.dp_data import DPGANPatchDataModule

    dm = DPGANPatchDataModule(str(cohort), n_train=3, n_val=1, n_test=2, cache_dir=str(tmp_path / "c"), batch_size=2,
                              patch_size=[24, 24], n_vessel=4, n_random=4, sampling_seed=0)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    info = dm.privacy_sampling()
    assert info["population"] == 24 and info["sample_rate"] == pytest.approx(2 / 24) and info["steps_per_epoch"] == 12
    sizes = [len(b["image"]) for b in dm.train_dataloader()]
    assert len(sizes) == 12 and len(set(sizes)) > 1  # Poisson: realised sizes vary
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "patient"} and batch["image"].shape[1:] == (1, 24, 24)


def test_empty_draw_collates_to_zero_row_batch() -> None:
    from datamodules.dp_data import EmptySafeCollate

    item = {"image": torch.zeros(1, 24, 24), "label": torch.zeros(1, 24, 24), "patient": torch.tensor(0)}
    empty = EmptySafeCollate(item)([])
    assert empty["image"].shape == (0, 1, 24, 24) and empty["patient"].shape == (0,)


def test_3d_dpgan_fit_records_a_finite_epsilon_per_critic_step(cohort: Path, tmp_path: Path) -> None:
    """The 3D paper's appendix DPGAN (WGANCritic3D, 3D Poisson patches) through the CLI: 3 critic steps on 5D batches,
    each one accountant step at the sampler's q, and ε in the manifest equal to a fresh RDP accountant's."""
    from opacus.accountants import RDPAccountant

    experiment = CONFIGS / "experiment" / "cpu_subramaniam2022_dpgan.yaml"
    cli = _fit(cohort, tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
               "--trainer.limit_val_batches", "0", experiment=experiment)  # fmt: skip
    assert next(iter(cli.datamodule.train_dataloader()))["image"].shape[1:] == (1, 32, 32, 8)  # tiny_gan3d's patches
    report = json.loads(next(tmp_path.rglob("run_manifest.json")).read_text())["privacy"]
    q = 4 / (3 * (8 + 4))  # B_exp 4 of the tiny cohort's 3 training patients × (2×2×2 grid + 4 vessel) patches
    assert report["unit"] == "patch" and report["steps"] == 3 and report["sample_rate"] == pytest.approx(q)
    assert report["noise_multiplier"] == 0.5 and report["history"] == [[0.5, pytest.approx(q), 3]]
    fresh = RDPAccountant()
    fresh.history = [(0.5, q, 3)]
    assert 0 < report["epsilon"] < float("inf")
    assert report["epsilon"] == pytest.approx(fresh.get_epsilon(report["delta"]))
