"""DownstreamUtilityCallback: a meaningful DSC, the GAN left untouched, works inside a real Trainer fit."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from callbacks.downstream_utility import DownstreamUtilityCallback, pooled_dsc
from lightning_modules.wgan import WGANGP
from networks.gan2d import Generator2D, WGANCritic2D

pytestmark = pytest.mark.filterwarnings("ignore:.*validation_step.*", "ignore:.*val_dataloader.*")
LATENT, SIZE = 8, 24


def blobs(n: int, seed: int, coupled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth blob labels; images in [-1, 1] bright on the label (coupled) or on an unrelated blob field."""
    g = torch.Generator().manual_seed(seed)

    def field() -> torch.Tensor:
        noise = torch.randn(n, 1, SIZE + 8, SIZE + 8, generator=g)
        return torch.nn.functional.avg_pool2d(noise, 9, stride=1) > 0.15

    label = field()
    source = label if coupled else field()
    image = (source.float() * 1.2 - 0.6 + 0.1 * torch.randn(n, 1, SIZE, SIZE, generator=g)).clamp(-1, 1)
    return image, label.to(torch.uint8)


def val_batches(n: int = 32) -> list[dict[str, torch.Tensor]]:
    image, label = blobs(n, seed=99)
    return [{"image": image[i : i + 8], "label": label[i : i + 8].float()} for i in range(0, n, 8)]


class StubGAN(L.LightningModule):
    """A 'GAN' whose samples are known: real-like pairs (coupled) or labels unrelated to the images."""

    def __init__(self, coupled: bool) -> None:
        super().__init__()
        self.coupled = coupled
        self.w = torch.nn.Parameter(torch.zeros(1))

    def generate(self, n: int, batch_size: int = 256, seed: int | None = None):
        return blobs(n, seed or 0, self.coupled)


def callback(**kw) -> DownstreamUtilityCallback:
    kw = {"every_n_epochs": 1, "n_samples": 64, "unet_features": [4, 8], "max_steps": 60, "batch_size": 8,
          "lr": 3e-3, **kw}
    return DownstreamUtilityCallback(**kw)


def test_pooled_dsc():
    assert pooled_dsc(3, 1, 1) == pytest.approx(6 / 8)
    assert pooled_dsc(0, 0, 0) == 1.0 and pooled_dsc(0, 2, 0) == 0.0


def test_utility_separates_useful_from_useless_samples():
    cb = callback(max_steps=150, lr=1e-2)
    good = cb.utility_dsc(StubGAN(coupled=True), val_batches())
    bad = cb.utility_dsc(StubGAN(coupled=False), val_batches())
    assert 0.8 < good <= 1.0 and 0.0 <= bad < good - 0.3
    assert cb.utility_dsc(StubGAN(coupled=True), val_batches()) == pytest.approx(good)  # seeded


def tiny_wgan() -> WGANGP:
    torch.manual_seed(0)
    return WGANGP(Generator2D(LATENT, 4, out_size=SIZE), WGANCritic2D(ndf=4, in_size=SIZE), latent_dim=LATENT,
                  n_critic=2, n_sample_grid=4)


class PatchData(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        image, label = blobs(32, seed=1)
        self.train = [{"image": image[i], "label": label[i].float()} for i in range(32)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=8)

    def val_dataloader(self) -> DataLoader:
        image, label = blobs(16, seed=99)
        return DataLoader([{"image": image[i], "label": label[i].float()} for i in range(16)], batch_size=8)


def fit(tmp_path, cb: DownstreamUtilityCallback, epochs: int = 2, checkpoint: ModelCheckpoint | None = None
        ) -> tuple[L.Trainer, WGANGP]:
    gan = tiny_wgan()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, callbacks=[cb, *([checkpoint] if checkpoint else [])],
                        logger=False, enable_checkpointing=checkpoint is not None, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(gan, datamodule=PatchData())
    return trainer, gan


def test_logs_dsc_and_seconds_in_a_real_fit(tmp_path):
    """With the GAN's validation loop, a ModelCheckpoint monitoring val/utility_dsc every K epochs works."""
    cb = callback(every_n_epochs=2, max_steps=5)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/utility_dsc", mode="max", every_n_epochs=2,
                           save_top_k=1)
    trainer, _ = fit(tmp_path, cb, epochs=4, checkpoint=ckpt)
    assert [h["epoch"] for h in cb.history] == [1, 3]  # after epochs 2 and 4, once each
    best = max(cb.history, key=lambda h: h["dsc"])
    assert float(ckpt.best_model_score) == pytest.approx(best["dsc"])
    assert f"epoch={best['epoch']}-" in Path(ckpt.best_model_path).name
    dsc, seconds = trainer.callback_metrics["val/utility_dsc"], trainer.callback_metrics["val/utility_seconds"]
    assert 0.0 <= float(dsc) <= 1.0 and float(dsc) == pytest.approx(cb.history[-1]["dsc"])
    assert float(seconds) > 0


def test_gan_state_is_left_untouched(tmp_path):
    cb = callback(max_steps=5)
    trainer, gan = fit(tmp_path, cb, epochs=1)  # the optimisers now hold Adam moments
    gan.train()
    gan.critic.eval()  # mixed modes must come back exactly
    state = copy.deepcopy(gan.state_dict())
    opt_states = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]
    modes = {n: m.training for n, m in gan.named_modules()}
    rng = torch.get_rng_state()
    grads = [None if p.grad is None else p.grad.clone() for p in gan.parameters()]
    assert any("running_mean" in k for k in state)  # the generator has BatchNorm statistics to protect

    value = cb.utility_dsc(gan, val_batches(16))

    assert 0.0 <= value <= 1.0
    assert state.keys() == gan.state_dict().keys()
    for k, v in gan.state_dict().items():
        assert torch.equal(v, state[k]), k
    for before, opt in zip(opt_states, trainer.optimizers):
        after = opt.state_dict()
        assert before["param_groups"] == after["param_groups"]
        for pid, s in before["state"].items():
            for key, t in s.items():
                assert torch.equal(torch.as_tensor(t), torch.as_tensor(after["state"][pid][key])), (pid, key)
    assert modes == {n: m.training for n, m in gan.named_modules()}
    assert torch.equal(rng, torch.get_rng_state())
    for g, p in zip(grads, gan.parameters()):
        assert (g is None and p.grad is None) or torch.equal(g, p.grad)


def test_val_store_and_bad_arguments(tmp_path):
    import numpy as np

    from datamodules.patch_store import write_patch_store

    image, label = blobs(16, seed=5)
    store = write_patch_store(tmp_path / "val", image.numpy(), label.numpy(), {"kind": "real"})
    cb = callback(val_store=str(store.root), max_val_patches=8, max_steps=150, lr=1e-2)
    batches = cb.val_batches(trainer=None)  # type: ignore[arg-type]
    assert next(iter(batches))["image"].shape[1:] == (1, SIZE, SIZE)
    assert 0.8 < cb.utility_dsc(StubGAN(coupled=True), batches) <= 1.0
    assert np.isfinite(cb.utility_dsc(StubGAN(coupled=True), val_batches(16)))
    with pytest.raises(ValueError, match="every_n_epochs"):
        DownstreamUtilityCallback(every_n_epochs=0)


def test_runs_at_train_epoch_end_without_a_validation_loop(tmp_path):
    cb = callback(max_steps=3)
    gan = tiny_wgan()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, callbacks=[cb], logger=False,
                        limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(gan, datamodule=PatchData())
    assert [h["epoch"] for h in cb.history] == [0, 1]
    assert 0.0 <= float(trainer.callback_metrics["val/utility_dsc"]) <= 1.0


DDP_SCRIPT = """
import sys, lightning as L, torch
from torch.utils.data import DataLoader
from lightning.pytorch.loggers import CSVLogger
from callbacks.downstream_utility import DownstreamUtilityCallback
from tests.test_downstream_utility import PatchData, blobs

class Gan(L.LightningModule):  # the smallest GAN-shaped module: generate() plus a trainable parameter
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
    def generate(self, n, batch_size=256, seed=None):
        image, label = blobs(n, seed or 0)
        return image * self.scale.detach().cpu(), label
    def training_step(self, batch, batch_idx):
        return ((batch["image"] * self.scale) ** 2).mean()
    def validation_step(self, batch, batch_idx):
        pass
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

cb = DownstreamUtilityCallback(every_n_epochs=1, n_samples=16, unet_features=[4, 8], max_steps=3, batch_size=4)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, callbacks=[cb],
                    logger=CSVLogger(sys.argv[1]), enable_checkpointing=False, enable_progress_bar=False)
trainer.fit(Gan(), datamodule=PatchData())
assert len(cb.history) == 2, cb.history  # every rank logged both epochs' (broadcast) values
"""


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_two_ddp_processes_do_not_deadlock(tmp_path):
    """Rank zero computes, both ranks broadcast and log: the run must finish and log the value once per epoch."""
    import csv
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_utility.py"
    script.write_text(DDP_SCRIPT)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "logs")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [r for f in tmp_path.rglob("metrics.csv") for r in csv.DictReader(open(f)) if r.get("val/utility_dsc")]
    assert len(rows) == 2 and all(0.0 <= float(r["val/utility_dsc"]) <= 1.0 for r in rows)


# --------------------------------------------------------------------------- 3D: (B, 2, H, W, D) GANs
SIZE3 = (16, 16, 8)


def blobs3d(n: int, seed: int, coupled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def field() -> torch.Tensor:
        noise = torch.randn(n, 1, *(s + 4 for s in SIZE3), generator=g)
        return torch.nn.functional.avg_pool3d(noise, 5, stride=1) > 0.2

    label = field()
    source = label if coupled else field()
    image = (source.float() * 1.2 - 0.6 + 0.1 * torch.randn(n, 1, *SIZE3, generator=g)).clamp(-1, 1)
    return image, label.to(torch.uint8)


class StubGAN3D(StubGAN):
    def generate(self, n: int, batch_size: int = 256, seed: int | None = None):
        return blobs3d(n, seed or 0, self.coupled)


def test_3d_utility_separates_samples_and_equals_a_hand_pooled_dsc():
    image, label = blobs3d(24, seed=99)
    val = [{"image": image[i : i + 8], "label": label[i : i + 8].float()} for i in range(0, 24, 8)]
    cb = callback(n_samples=32, max_steps=60, lr=1e-2)
    good = cb.utility_dsc(StubGAN3D(coupled=True), val)
    bad = cb.utility_dsc(StubGAN3D(coupled=False), val)
    assert 0.5 < good <= 1.0 and bad < good - 0.3
    # the same U-Net (same seed and samples) scored by hand, voxel counts pooled with numpy
    torch.manual_seed(0)
    net = cb.train_unet(*(t.float() for t in blobs3d(32, seed=0)), torch.device("cpu"))
    assert any(isinstance(m, torch.nn.Conv3d) for m in net.modules())
    with torch.no_grad():
        z = (image - image.mean((1, 2, 3, 4), keepdim=True)) / (image.std((1, 2, 3, 4), keepdim=True) + 1e-6)
        pred = (torch.sigmoid(net(z)) >= 0.5).numpy()
    truth = label.numpy() > 0
    by_hand = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert good == pytest.approx(float(by_hand), rel=1e-9)


class PatchData3D(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        image, label = blobs3d(16, seed=1)
        self.data = [{"image": image[i], "label": label[i].float()} for i in range(16)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8)


def test_3d_wgan_fit_logs_utility():
    from networks.gan3d import Generator3D, WGANCritic3D

    torch.manual_seed(0)
    gan = WGANGP(Generator3D(LATENT, 16, out_size=SIZE3), WGANCritic3D(ndf=16, in_size=SIZE3, norm="spectral"),
                 latent_dim=LATENT, n_critic=1, n_sample_grid=4)
    cb = callback(n_samples=16, max_steps=3, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, callbacks=[cb], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(gan, datamodule=PatchData3D())
    assert [h["epoch"] for h in cb.history] == [0]
    assert 0.0 <= float(trainer.callback_metrics["val/utility_dsc"]) <= 1.0
