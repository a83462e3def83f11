"""workflows.synthesize: checkpoint → patch store with binary labels, manifest provenance, seeded output."""

from __future__ import annotations

import hashlib
import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader

from lightning_modules.wgan import WGANGP
from networks.gan2d import Generator2D, WGANCritic2D
from workflows.synthesize import synthesize

pytest.importorskip("datamodules.patch_store")
from datamodules.patch_store import PatchStore  # noqa: E402

SIZE = 24


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(1, SIZE, SIZE, generator=g) * 2 - 1,
             "label": (torch.rand(1, SIZE, SIZE, generator=g) > 0.8).float()} for _ in range(8)]  # fmt: skip
    return DataLoader(data, batch_size=4)


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    L.seed_everything(0)
    model = WGANGP(Generator2D(8, 4, out_size=SIZE), WGANCritic2D(ndf=4, in_size=SIZE, norm="spectral"),
                   latent_dim=8, n_critic=2, label_encoding="binary")  # fmt: skip
    t = _trainer()
    t.fit(model, _loader())
    path = tmp_path_factory.mktemp("gan") / "gan.ckpt"
    t.save_checkpoint(path)
    return str(path)


def test_writes_store_with_provenance(checkpoint, tmp_path):
    root = synthesize(checkpoint, str(tmp_path / "synth"), n_samples=10, batch_size=4, seed=3)
    store = PatchStore(root)
    assert len(store) == 10 and store.patch_size == (SIZE, SIZE)
    assert store.images.dtype == np.float32 and store.labels.dtype == np.uint8
    assert np.abs(store.images).max() <= 1.0
    assert set(np.unique(store.labels)) <= {0, 1}
    m = json.loads((root / "manifest.json").read_text())
    assert m["source_checkpoint_sha256"] == hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
    assert (m["label_encoding"], m["label_threshold"], m["n_samples"], m["seed"]) == ("binary", 0.8, 10, 3)
    assert m["generator"]["init_args"]["ngf"] == 4 and m["gan_class"] == "lightning_modules.wgan.WGANGP"
    assert (root / "preview.png").is_file()
    # the labels are the reloaded generator's label channel thresholded at 0.8 for the same noise
    model = WGANGP.load_from_checkpoint(checkpoint, weights_only=True).eval()
    z = torch.randn(10, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model.generator(z)
    np.testing.assert_array_equal(store.labels, (out[:, 1:] > 0.8).numpy().astype(np.uint8))
    np.testing.assert_allclose(store.images, out[:, :1].numpy(), atol=1e-6)


def test_deterministic_for_a_seed(checkpoint, tmp_path):
    a = PatchStore(synthesize(checkpoint, str(tmp_path / "a"), n_samples=6, batch_size=4, seed=1))
    b = PatchStore(synthesize(checkpoint, str(tmp_path / "b"), n_samples=6, batch_size=5, seed=1))
    c = PatchStore(synthesize(checkpoint, str(tmp_path / "c"), n_samples=6, batch_size=4, seed=2))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    with pytest.raises(FileExistsError):
        synthesize(checkpoint, str(tmp_path / "a"), n_samples=6, seed=1)
    synthesize(checkpoint, str(tmp_path / "a"), n_samples=5, seed=1, overwrite=True)
    assert len(PatchStore(tmp_path / "a")) == 5


def test_bad_inputs(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        synthesize(str(tmp_path / "missing.ckpt"), str(tmp_path / "x"))
    with pytest.raises(TypeError, match="not a lightning_modules.gan_base.GANModule"):
        synthesize(checkpoint, str(tmp_path / "x"), n_samples=2, module_class="torch.nn.Linear")


def test_checkpoint_of_a_cli_run(repo_root, tmp_path):
    """The model config as LightningCLI instantiates it (subclass mode, networks as class_path dicts)."""
    small = ["--model.init_args.generator.init_args.ngf", "4", "--model.init_args.generator.init_args.out_size", "24",
             "--model.init_args.critic.init_args.ndf", "4", "--model.init_args.critic.init_args.in_size", "24"]  # fmt: skip
    cli = LightningCLI(LightningModule, None, subclass_mode_model=True, run=False, seed_everything_default=0,
                       save_config_callback=None, args=["--config", str(repo_root / "configs/model/wgan_gp_sn.yaml"), *small,
                             "--trainer.logger", "false", "--trainer.max_steps", "1",
                             "--trainer.enable_checkpointing", "false", "--trainer.accelerator", "cpu",
                             "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert isinstance(cli.model, WGANGP) and cli.model.hparams["label_threshold"] == 0.0
    cli.trainer.fit(cli.model, _loader())
    cli.trainer.save_checkpoint(tmp_path / "cli.ckpt")
    store = PatchStore(synthesize(str(tmp_path / "cli.ckpt"), str(tmp_path / "s"), n_samples=4, seed=0))
    assert len(store) == 4 and store.manifest["label_encoding"] == "symmetric"
    assert store.manifest["generator"]["class_path"] == "networks.gan2d.Generator2D"


def _with_privacy(checkpoint: str, path, privacy: dict) -> str:
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["privacy"] = privacy
    torch.save(ckpt, path)
    return str(path)


def test_privacy_record_is_copied_or_null(checkpoint, tmp_path):
    """A DP GAN's `checkpoint["privacy"]` travels into the store; without one the manifest says null (no guarantee)."""
    plain = PatchStore(synthesize(checkpoint, str(tmp_path / "plain"), n_samples=2, seed=0))
    assert "privacy" in plain.manifest and plain.manifest["privacy"] is None
    privacy = {"epsilon": 4.5, "delta": 1e-5, "accountant": "rdp", "noise_multiplier": torch.tensor(1.1)}
    dp = _with_privacy(checkpoint, tmp_path / "dp.ckpt", privacy)
    store = PatchStore(synthesize(dp, str(tmp_path / "dp"), n_samples=2, seed=0))
    assert store.manifest["privacy"] == {"epsilon": 4.5, "delta": 1e-5, "accountant": "rdp",
                                         "noise_multiplier": pytest.approx(1.1)}
    assert (store.manifest["label_encoding"], store.manifest["label_threshold"]) == ("binary", 0.8)


def test_out_dir_that_is_not_a_store_is_refused_before_generating(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "results"
    out.mkdir()
    (out / "table2.csv").write_text("DSC\n0.8\n")
    calls = []
    monkeypatch.setattr(WGANGP, "generate", lambda *a, **k: calls.append(1))
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="results: a folder that is not a patch store .*table2.csv"):
            synthesize(checkpoint, str(out), n_samples=2, overwrite=overwrite)
    assert calls == [] and (out / "table2.csv").read_text() == "DSC\n0.8\n"
    assert sorted(p.name for p in out.iterdir()) == ["table2.csv"]
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()
    assert len(PatchStore(synthesize(checkpoint, str(tmp_path / "empty"), n_samples=3))) == 3


def test_tofgan_synthesize_overwrite_keeps_unrelated_files(checkpoint, repo_root, tmp_path):
    """As a user runs it: `--overwrite true` on a folder holding a file of theirs exits non-zero, the file kept."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "synthesize", "--checkpoint", checkpoint,
                           "--out_dir", str(out), "--n_samples", "2", "--overwrite", "true"],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not a patch store" in proc.stderr and "notes.txt" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
