"""Canaries through training (the GAN-level one-run DP audit, `metrics.dp_audit`): the canary file of
`write_canary_set` given as `--data.init_args.canaries` puts the included canaries into the training loader and the
run manifest; `tofgan audit --canaries` scores them on the trained GAN; a DP run counts them in q and δ."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli import main
from datamodules.base import normalize_patch
from metrics.dp_audit import write_canary_set
from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort

M = 16  # canaries; the tiny cohort's 3 training patients give 3 × 8 = 24 training patches
N_TRAIN_PATCHES = 24


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("canary_cohort"), n_patients=6)


@pytest.fixture(scope="module")
def canaries(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("canaries") / "canaries.npz"
    info = write_canary_set(str(path), M, [24, 24], seed=3)
    return path, info


def _canary_images(path: Path, normalization: str = "minmax") -> tuple[torch.Tensor, np.ndarray]:
    with np.load(path) as data:
        images = np.stack([normalize_patch(x, normalization) for x in data["images"]])  # type: ignore[arg-type]
        return torch.from_numpy(images), data["included"].astype(bool)


def _matches(batch_images: torch.Tensor, canary_images: torch.Tensor) -> np.ndarray:
    """(B,) index of the canary each batch image equals, −1 for none."""
    diff = (batch_images.flatten(1)[:, None] - canary_images.flatten(1)[None]).abs().amax(-1)
    hit = diff < 1e-6
    return np.where(hit.any(1).numpy(), hit.float().argmax(1).numpy(), -1)


def _fit_with_canaries(experiment: str, cohort: Path, root: Path, canaries: Path):
    """One CPU epoch of `tofgan fit <experiment>` with the canary file as --data.init_args.canaries."""
    return main(["fit", *cpu_args(CONFIGS / "experiment" / experiment, cohort, root), "--trainer.max_epochs", "1",
                 "--trainer.enable_progress_bar", "false", "--data.init_args.canaries", str(canaries)])  # fmt: skip


def test_canary_file_is_a_tool_command_and_is_written_atomically(tmp_path: Path) -> None:
    """`write_canary_set` through jsonargparse as `tofgan canaries` would run it; a bad request leaves no file."""
    from jsonargparse import CLI

    out = tmp_path / "c.npz"
    info = CLI(write_canary_set, args=["--path", str(out), "--n_canaries", "12", "--patch_size", "[8, 8]"],
               as_positional=False)
    assert info["canaries"] == 12 and info["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="m ≥ 2"):
        write_canary_set(str(tmp_path / "bad.npz"), 1, [8, 8])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


def test_gan_trained_with_canaries_sees_them_and_audit_bounds_epsilon(cohort: Path, canaries: tuple[Path, dict],
                                                                      tmp_path: Path) -> None:  # fmt: skip
    path, info = canaries
    cli = _fit_with_canaries("cpu_wgan_gp.yaml", cohort, tmp_path / "run", path)
    dm = cli.datamodule
    loader = dm.train_dataloader()
    assert len(loader.dataset) == N_TRAIN_PATCHES + info["included"] and len(dm.train_set) == N_TRAIN_PATCHES
    canary_images, included = _canary_images(path)
    seen = np.concatenate([_matches(b["image"], canary_images) for b in loader])
    seen = set(seen[seen >= 0].tolist())
    assert seen <= set(np.flatnonzero(included).tolist())  # never an excluded canary
    assert len(seen) >= info["included"] - (dm.batch_size - 1)  # all included ones but the dropped last batch
    manifest = json.loads(next((tmp_path / "run").rglob("run_manifest.json")).read_text())
    assert manifest["data"]["canaries"] == {"file": path.name, "sha256": info["sha256"], "n_canaries": M,
                                            "n_included": info["included"]}  # fmt: skip

    ckpt = next((tmp_path / "run").rglob("last.ckpt"))
    out = main(["audit", "--checkpoint", str(ckpt), "--out_dir", str(tmp_path / "audit"), "--canaries", str(path),
                "--n_boot", "20", "--wandb", "false", "--device", "cpu"])  # fmt: skip
    report = json.loads((Path(out) / "audit.json").read_text())["canary_audit"]
    assert report["n_canaries"] == M and report["n_included"] == info["included"]
    assert report["checked_against_run_manifest"] and report["canaries_sha256"] == info["sha256"]
    assert 0 <= report["epsilon_lower_bound"] < 10 and report["claimed_epsilon"] is None  # ∞ (no guarantee) → null
    assert not report["violation"]

    other = tmp_path / "other.npz"
    write_canary_set(str(other), M, [24, 24], seed=4)
    from workflows.audit import audit

    with pytest.raises(ValueError, match="not the canary file the run trained with"):
        audit(str(ckpt), str(tmp_path / "audit2"), canaries=str(other), n_boot=5, wandb=False, device="cpu")
    plain = tmp_path / "plain_run"  # a run manifest without canaries: auditing with a canary file is refused
    plain.mkdir()
    (plain / "run_manifest.json").write_text(json.dumps({"data": {"splits": {}}}))
    from workflows.audit import trained_canaries

    with pytest.raises(ValueError, match="trained without canaries"):
        trained_canaries(plain / "config.yaml", str(path))


def test_bad_canary_files_are_refused(cohort: Path, tmp_path: Path) -> None:
    from datamodules.gan_data import CanaryPatches, GANPatchDataModule

    path = tmp_path / "c16.npz"
    write_canary_set(str(path), 4, [16, 16])
    dm = GANPatchDataModule(str(cohort), simulate=None, n_train=3, n_val=1, n_test=2, cache_dir=str(tmp_path / "c"),
                            batch_size=4, patch_size=[24, 24], n_vessel=4, n_random=4, canaries=str(path))  # fmt: skip
    dm.prepare_data()
    with pytest.raises(ValueError, match=r"c16\.npz: canary patches are \[16, 16\]"):
        dm.setup("fit")
    np.save(tmp_path / "single.npy", np.zeros((4, 1, 24, 24), np.float32))
    with pytest.raises(ValueError, match=r"single\.npy: not a canary file"):
        CanaryPatches(tmp_path / "single.npy", "minmax")
    with np.load(path) as data:
        np.savez(tmp_path / "soft.npz", images=data["images"], labels=data["labels"] * 0.5, included=data["included"])
    with pytest.raises(ValueError, match=r"soft\.npz: canary images must be finite and labels 0 or 1"):
        CanaryPatches(tmp_path / "soft.npz", "minmax")


def test_dp_run_counts_included_canaries_in_q_and_delta(cohort: Path, canaries: tuple[Path, dict],
                                                        tmp_path: Path) -> None:  # fmt: skip
    """Patch level: each included canary is one more Poisson unit: q = B / (N + included), δ = 1 / (N + included)."""
    path, info = canaries
    cli = _fit_with_canaries("cpu_dp_wgan.yaml", cohort, tmp_path / "dp", path)
    n = N_TRAIN_PATCHES + info["included"]
    batch = cli.datamodule.batch_size
    report = cli.model.privacy_report()
    assert report["population"] == n and report["sample_rate"] == pytest.approx(batch / n)
    assert report["delta"] == pytest.approx(min(1 / n, 1e-3)) and report["steps"] > 0
    assert [h[1] for h in cli.model.accountant.history] == [pytest.approx(batch / n)]  # the accountant's q
    manifest = json.loads(next((tmp_path / "dp").rglob("run_manifest.json")).read_text())
    assert manifest["data"]["canaries"]["n_included"] == info["included"] and manifest["privacy"]["population"] == n
    sampling = cli.datamodule.privacy_sampling()
    assert sampling["n_canaries"] == info["included"] and sampling["n_train_patches"] == N_TRAIN_PATCHES


def test_patient_level_canaries_are_single_patch_pseudo_patients(cohort: Path, canaries: tuple[Path, dict],
                                                                 tmp_path: Path) -> None:  # fmt: skip
    from datamodules.dp_data import DPGANPatchDataModule

    path, info = canaries
    dm = DPGANPatchDataModule(str(cohort), n_train=3, n_val=1, n_test=2, cache_dir=str(tmp_path / "c"), batch_size=2,
                              patch_size=[24, 24], n_vessel=4, n_random=4, sampling_seed=0, privacy_unit="patient",
                              patients_per_step=2, patches_per_patient=4, canaries=str(path))  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    units = 3 + info["included"]
    sampling = dm.privacy_sampling()
    assert sampling["population"] == units and sampling["sample_rate"] == pytest.approx(2 / units)
    assert sampling["n_train_patients"] == 3 and sampling["n_canaries"] == info["included"]
    canary_images, included = _canary_images(path)
    seen: set[int] = set()
    for _ in range(3):
        for b in dm.train_dataloader():
            match = _matches(b["image"], canary_images)
            tags = b["patient"].numpy()
            assert ((tags >= 3) == (match >= 0)).all()  # canary rows carry a pseudo-patient tag, real rows a patient's
            canary_tags = tags[tags >= 3]
            assert len(set(canary_tags.tolist())) == len(canary_tags)  # one patch per canary pseudo-patient
            seen |= set(match[match >= 0].tolist())
    assert seen and seen <= set(np.flatnonzero(included).tolist())
