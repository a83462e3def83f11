"""workflows.audit end to end on a tiny NIfTI cohort: a generator that reproduces its training patients is
identified at patient level, one that reproduces other patients is not; report files, DP bound, canaries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from datamodules.base import PatchDataset
from datamodules.gan_data import GANPatchDataModule
from lightning_modules.wgan import WGANGP
from networks.gan2d import WGANCritic2D
from tests.fixtures_cohort import write_tiny_cohort
from workflows.audit import audit

SIZE, LATENT = 24, 8
DATA = {"simulate": None, "n_train": 4, "n_val": 2, "n_test": 2, "patch_size": [SIZE, SIZE], "n_vessel": 10,
        "n_random": 10, "batch_size": 8, "num_workers": 0}


class BankGenerator(nn.Module):
    """Test stub: returns stored (image, label) pairs picked by the noise — a perfect copier of its bank."""

    def __init__(self, latent_dim: int = LATENT, bank_size: int = 1, shape: list[int] = [SIZE, SIZE]) -> None:  # noqa: B006
        super().__init__()
        self.init_args = {"latent_dim": latent_dim, "bank_size": bank_size, "shape": list(shape)}
        self.latent_dim = latent_dim
        self.register_buffer("bank", torch.zeros(bank_size, 2, *shape))
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        idx = (z[:, 0].abs() * 1e6).long() % self.bank.shape[0]
        return self.bank[idx] + 0 * self.unused


def gan_patches(dm: GANPatchDataModule, split: str) -> torch.Tensor:
    """A split's patches as the GAN sees them: image in [-1, 1], label encoded ±1."""
    store = dm.test_store if split == "test" else dm.store
    ds = PatchDataset(store.root, store.indices_for(dm.splits[split]), dm.normalization)
    items = [ds[i] for i in range(len(ds))]
    return torch.cat([torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items]) * 2 - 1], 1)


def write_run(folder, bank: torch.Tensor, data: dict, privacy: dict | None = None) -> str:
    """A GAN run folder as LightningCLI leaves it: config.yaml (data section) and checkpoints/gan.ckpt."""
    gen = BankGenerator(bank_size=len(bank), shape=list(bank.shape[2:]))
    gen.bank.copy_(bank)
    if bank.ndim == 5:
        from networks.gan3d import WGANCritic3D

        critic = WGANCritic3D(ndf=8, in_size=list(bank.shape[2:]), norm="none")
    else:
        critic = WGANCritic2D(ndf=4, in_size=SIZE, norm="spectral")
    model = WGANGP(gen, critic, latent_dim=LATENT)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"class_path": "datamodules.gan_data.GANPatchDataModule",
                                                                 "init_args": data}}))
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "gan_class": "lightning_modules.wgan.WGANGP",
            "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0}
    if privacy is not None:
        ckpt["privacy"] = privacy
    path = folder / "checkpoints" / "gan.ckpt"
    torch.save(ckpt, path)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("TOFGAN_ALLOWED_CLASS_PATHS", "tests.test_audit")  # the stub generator's class path
    root = tmp_path_factory.mktemp("audit")
    data = {**DATA, "cohort_dir": str(write_tiny_cohort(root / "cohort", n_patients=8)), "cache_dir": str(root / "cache")}
    dm = GANPatchDataModule(**data)
    dm.prepare_data()
    dm.setup("test")
    other = {**data, "cohort_dir": str(write_tiny_cohort(root / "other", n_patients=8, seed=7, prefix="q"))}
    dm_other = GANPatchDataModule(**other)
    dm_other.prepare_data()
    dm_other.setup("test")
    privacy = {"unit": "patch", "epsilon": 2.0, "delta": 1e-5, "noise_multiplier": 1.1, "sample_rate": 0.1,
               "steps": 100, "accountant": "rdp"}
    yield {"memorising": write_run(root / "memorising", gan_patches(dm, "train"), data),
           "population": write_run(root / "population", gan_patches(dm_other, "train"), data, privacy),
           "root": root}
    mp.undo()


def test_memorising_generator_is_identified_at_patient_level(runs, tmp_path):
    out = audit(runs["memorising"], str(tmp_path / "a"), n_boot=200, wandb=False)
    report = json.loads((out / "audit.json").read_text())
    assert report["counts"]["members"]["patients"] == 4 and report["counts"]["nonmembers"]["patients"] == 2
    nn_attack = report["results"]["pixels/nn"]
    assert nn_attack["patient"]["auc"] > 0.9 and nn_attack["patch"]["auc"] > 0.7
    assert {"pixels/nn_calibrated", "pixels/domias", "pixels/mc@r1", "critic/score"} <= set(report["results"])
    assert report["privacy"] is None and report["leakage"]["patient"]["max_auc"] > 0.9
    # 40 non-member patches: 1 % FPR is not resolvable → null in JSON, "n/a" in the table
    assert nn_attack["patch"]["tpr_at_fpr_0.001"] is None and nn_attack["patient"]["tpr_at_fpr_0.01"] is None
    assert report["reference_run"]["results"]["pixels/nn"]["patch"]["auc"] < 0.8
    for name in ("audit.md", "roc.png", "nearest_neighbours.png", "roc_curves.npz"):
        assert (out / name).is_file()
    assert "n/a" in (out / "audit.md").read_text()


def test_generator_of_other_patients_ci_covers_chance_and_dp_bound_is_drawn(runs, tmp_path):
    out = audit(runs["population"], str(tmp_path / "b"), n_boot=200, wandb=False)
    report = json.loads((out / "audit.json").read_text())
    for name in ("pixels/nn", "pixels/nn_calibrated"):
        for level in ("patch", "patient"):
            lo, hi = report["results"][name][level]["auc_ci95"]
            assert lo <= 0.5 <= hi, (name, level)
    assert report["privacy"]["epsilon"] == 2.0 and "ε = 2.00" in (out / "audit.md").read_text()


def test_canary_audit_and_refusal_of_another_store(runs, tmp_path):
    """Canaries that are copies of synthetic samples when included: the bound flags a claimed ε = 2 as violated."""
    from workflows.audit import load_gan

    model, _ = load_gan(Path(runs["population"]), torch.device("cpu"))
    images, labels = model.generate(200, seed=0)
    rng = np.random.default_rng(0)
    included = rng.random(200) < 0.5
    canary_images = np.where(included[:, None, None, None], images.numpy(), rng.uniform(-1, 1, images.shape))
    np.savez(tmp_path / "canaries.npz", images=canary_images.astype(np.float32), labels=labels.numpy(), included=included)
    out = audit(runs["population"], str(tmp_path / "c"), n_boot=20, n_synthetic=200, canaries=str(tmp_path / "canaries.npz"),
                wandb=False)
    canary = json.loads((out / "audit.json").read_text())["canary_audit"]
    assert canary["canary_auc"] == 1.0 and canary["violation"] and canary["claimed_epsilon"] == 2.0
    assert not math.isnan(canary["epsilon_lower_bound"])
    from workflows.synthesize import synthesize

    other = synthesize(runs["memorising"], str(tmp_path / "other_store"), n_samples=20)
    with pytest.raises(ValueError, match="not the audited"):
        audit(runs["population"], str(tmp_path / "d"), synthetic_store=str(other), wandb=False)


@pytest.mark.slow
def test_wandb_run_is_logged_offline(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = audit(runs["population"], str(tmp_path / "w"), n_boot=20, max_patches_per_patient=5)
    runs_dirs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs_dirs) == 1 and list(runs_dirs[0].glob("*.wandb"))


def test_3d_memorising_generator(runs, tmp_path):
    """3D patches (grid + vessel-centred, as the 3D paper) through the same audit; figures show the middle slice."""
    data = {**DATA, "cohort_dir": str(runs["root"] / "cohort"), "cache_dir": str(runs["root"] / "cache3d"),
            "n_train": 4, "n_val": 2, "n_test": 2, "patch_size": [16, 16, 8], "grid": [2, 2, 2], "n_vessel": 4,
            "n_random": 0}
    dm = GANPatchDataModule(**data)
    dm.prepare_data()
    dm.setup("test")
    ckpt = write_run(runs["root"] / "memorising3d", gan_patches(dm, "train"), data)
    out = audit(ckpt, str(tmp_path / "a3d"), n_boot=100, wandb=False)
    report = json.loads((out / "audit.json").read_text())
    assert report["results"]["pixels/nn"]["patient"]["auc"] > 0.9 and "critic/score" in report["results"]
    assert (out / "nearest_neighbours.png").is_file()
