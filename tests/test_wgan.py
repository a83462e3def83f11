"""WGAN-GP module: penalty vs independent per-sample computation, step schedule, resume, precision, grid."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch import nn
from torch.utils.data import DataLoader

from callbacks.sample_grid import SampleGridCallback, pair_grid
from lightning_modules.wgan import WGANGP, gradient_penalty
from networks.gan2d import Generator2D, WGANCritic2D

LATENT, SIZE, BATCH = 8, 24, 4


def tiny_wgan(norm: str = "instance", **kwargs) -> WGANGP:
    kwargs.setdefault("n_critic", 2)
    return WGANGP(Generator2D(LATENT, 4, out_size=SIZE), WGANCritic2D(ndf=4, in_size=SIZE, norm=norm),
                  latent_dim=LATENT, n_sample_grid=4, **kwargs)  # fmt: skip


def loader(n_batches: int = 4, shape: tuple[int, ...] = (SIZE, SIZE), batch: int = BATCH) -> DataLoader:
    """Seeded random real batches of (image in [-1, 1], binary label) patches of `shape` (2D or 3D)."""
    g = torch.Generator().manual_seed(123)
    data = [{"image": torch.rand(1, *shape, generator=g) * 2 - 1,
             "label": (torch.rand(1, *shape, generator=g) > 0.8).float()} for _ in range(n_batches * batch)]  # fmt: skip
    return DataLoader(data, batch_size=batch, shuffle=False)


def trainer(**kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, **kwargs)


# --------------------------------------------------------------------------- gradient penalty
def test_penalty_matches_per_sample_loop():
    torch.manual_seed(0)
    critic = WGANCritic2D(ndf=4, in_size=SIZE, norm="instance")
    real, fake = torch.randn(5, 2, SIZE, SIZE), torch.randn(5, 2, SIZE, SIZE)
    eps = torch.rand(5, 1, 1, 1)
    expected = []
    for i in range(5):  # one sample at a time, its own ε: no batch coupling possible
        x = (eps[i] * real[i : i + 1] + (1 - eps[i]) * fake[i : i + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        expected.append((g.flatten().norm() - 1) ** 2)
    torch.testing.assert_close(gradient_penalty(critic, real, fake, eps), torch.stack(expected).mean())


def test_penalty_of_linear_critic_is_analytic():
    """D(x) = <w, x>: ∇D = w for every x̂, so the penalty is (‖w‖ − 1)² whatever ε is."""
    w = torch.randn(2, SIZE, SIZE, dtype=torch.float64)

    class Linear(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(3, 2, SIZE, SIZE, dtype=torch.float64), torch.randn(3, 2, SIZE, SIZE, dtype=torch.float64)
    gp = gradient_penalty(Linear(), real, fake, torch.rand(3, 1, 1, 1, dtype=torch.float64))
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        gradient_penalty(Linear(), real, fake, torch.rand(1))


def test_penalty_unscales_a_grad_scaler():
    torch.manual_seed(0)
    critic = WGANCritic2D(ndf=4, in_size=SIZE, norm="instance")
    real, fake, eps = torch.randn(3, 2, SIZE, SIZE), torch.randn(3, 2, SIZE, SIZE), torch.rand(3, 1, 1, 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    torch.testing.assert_close(gradient_penalty(critic, real, fake, eps, scaler), gradient_penalty(critic, real, fake, eps))


# --------------------------------------------------------------------------- schedule
class Recording(WGANGP):
    """Records which real batch each critic step saw and the critic's gradients after each generator step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.real_seen: list[float] = []
        self.critic_grads_after_g: list[list] = []

    def _critic_step(self, real: torch.Tensor) -> None:
        self.real_seen.append(real.sum().item())
        super()._critic_step(real)

    def _generator_step(self, batch_size: int) -> None:
        super()._generator_step(batch_size)
        self.critic_grads_after_g.append([p.grad for p in self.critic.parameters()])


def test_full_cycle_updates_both_nets_and_leaves_critic_without_gradient():
    L.seed_everything(0)
    model = Recording(Generator2D(LATENT, 4, out_size=SIZE), WGANCritic2D(ndf=4, in_size=SIZE),
                      latent_dim=LATENT, n_critic=2)  # fmt: skip
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    c0 = [p.detach().clone() for p in model.critic.parameters()]
    t = trainer(max_steps=6)  # global_step counts both optimisers: 2 × (2 critic + 1 generator)
    t.fit(model, loader(4))
    assert t.global_step == 6 and model.step_counts == {"critic": 4, "generator": 2}
    assert len(set(model.real_seen)) == 4  # every critic step on a fresh real batch
    assert all(not torch.equal(a, b) for a, b in zip(g0, model.generator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(c0, model.critic.parameters()))
    assert len(model.critic_grads_after_g) == 2
    assert all(g is None or not g.any() for grads in model.critic_grads_after_g for g in grads)
    assert all(p.requires_grad for p in model.parameters())  # toggling undone
    for key in ("train/critic_loss", "train/generator_loss", "train/wasserstein", "train/gradient_penalty"):
        assert math.isfinite(t.callback_metrics[key].item()), key


def test_bf16_mixed_runs_on_cpu():
    L.seed_everything(0)
    model = tiny_wgan("spectral")
    t = trainer(max_steps=3, precision="bf16-mixed")
    t.fit(model, loader(2))
    assert model.step_counts == {"critic": 2, "generator": 1}
    assert all(math.isfinite(v.item()) for v in t.callback_metrics.values())
    assert t.callback_metrics["train/gradient_penalty"].item() > 0


def test_weight_clipping_without_penalty():
    L.seed_everything(0)
    model = tiny_wgan("none", gp_weight=0.0, weight_clip=0.01)
    trainer(max_steps=3).fit(model, loader(2))
    assert max(p.abs().max().item() for p in model.critic.parameters()) <= 0.01
    assert model.hparams.weight_clip == 0.01


@pytest.mark.parametrize("kwargs", [{"n_critic": 0}, {"gp_weight": -1.0}, {"weight_clip": 0.0}, {"label_encoding": "x"}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="lightning_modules"):
        tiny_wgan(**kwargs)


# --------------------------------------------------------------------------- resume, checkpoints
def _fit(epochs: int, ckpt_path: str | None = None, save: str | None = None,
         make_model: Callable[[], WGANGP] = lambda: tiny_wgan("spectral"),
         make_data: Callable[[], DataLoader] = lambda: loader(4)) -> tuple[WGANGP, L.Trainer]:
    """Seeded fit of a fresh model (tests/test_wgan3d.py passes its 3D model and data)."""
    L.seed_everything(0)
    model = make_model()
    t = trainer(max_epochs=epochs)
    t.fit(model, make_data(), ckpt_path=ckpt_path)
    if save:
        t.save_checkpoint(save)
    return model, t


def test_resume_equals_straight_run(tmp_path):
    ckpt = str(tmp_path / "half.ckpt")
    half, _ = _fit(1, save=ckpt)
    grid_before = half.sample_grid()
    resumed, t_resumed = _fit(2, ckpt_path=ckpt)
    straight, t_straight = _fit(2)
    assert t_resumed.global_step == t_straight.global_step == 12  # 2 epochs × (4 critic + 2 generator)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for opt_a, opt_b in zip(t_straight.optimizers, t_resumed.optimizers):
        for sa, sb in zip(opt_a.state_dict()["state"].values(), opt_b.state_dict()["state"].values()):
            for key in sa:
                torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)
    # fixed grid: same noise after the resume, and the reloaded module reproduces the grid exactly
    torch.testing.assert_close(resumed.grid_noise, half.grid_noise, rtol=0, atol=0)
    reloaded = WGANGP.load_from_checkpoint(ckpt, weights_only=True)
    torch.testing.assert_close(reloaded.sample_grid(), grid_before, rtol=0, atol=0)


def test_grid_noise_ignores_global_rng():
    torch.manual_seed(1)
    a = tiny_wgan(sample_seed=7)
    torch.manual_seed(2)
    b = tiny_wgan(sample_seed=7)
    expected = torch.randn(4, LATENT, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.grid_noise, expected, rtol=0, atol=0)
    torch.testing.assert_close(b.grid_noise, expected, rtol=0, atol=0)
    state = torch.get_rng_state()
    a.sample_grid()
    assert torch.equal(state, torch.get_rng_state())
    assert a.training  # train/eval state restored


@pytest.mark.parametrize("encoding, threshold", [("symmetric", 0.0), ("binary", 0.8)])
def test_checkpoint_keeps_label_settings(tmp_path, encoding, threshold):
    model = tiny_wgan(label_encoding=encoding)
    t = trainer(max_steps=1)
    t.fit(model, loader(1))
    t.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert (hp["label_encoding"], hp["label_threshold"]) == (encoding, threshold)
    assert ckpt["gan_class"] == "lightning_modules.wgan.WGANGP"
    assert hp["generator"]["class_path"] == "networks.gan2d.Generator2D"
    reloaded = WGANGP.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    assert reloaded.label_threshold == threshold and reloaded.n_critic == 2
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------------------------------- labels and generation
def test_encode_real():
    batch = {"image": torch.zeros(2, 1, 6, 6), "label": torch.tensor([0.0, 1.0]).repeat(36).reshape(2, 1, 6, 6)}
    sym = tiny_wgan().encode_real(batch)
    assert sym.shape == (2, 2, 6, 6) and set(sym[:, 1].unique().tolist()) == {-1.0, 1.0}
    binary = tiny_wgan(label_encoding="binary").encode_real(batch)
    assert torch.equal(binary[:, 1:], batch["label"])
    with pytest.raises(ValueError, match="B,1,H,W"):
        tiny_wgan().encode_real({"image": torch.zeros(2, 6, 6), "label": torch.zeros(2, 6, 6)})


class AffineGenerator(nn.Module):
    """Output channels are known functions of z[:, 0], so thresholding can be checked independently."""

    latent_dim = LATENT

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        v = torch.tanh(self.scale * z[:, 0]).reshape(-1, 1, 1, 1).expand(-1, 2, 3, 3)
        return v


@pytest.mark.parametrize("encoding, threshold", [("symmetric", None), ("binary", None), ("binary", 0.3)])
def test_generate_thresholds_and_is_seeded(encoding, threshold):
    model = WGANGP(AffineGenerator(), WGANCritic2D(ndf=2, in_size=6), latent_dim=LATENT,
                   label_encoding=encoding, label_threshold=threshold)  # fmt: skip
    images, labels = model.generate(10, batch_size=3, seed=5)
    z0 = torch.randn(10, LATENT, generator=torch.Generator().manual_seed(5))[:, 0]
    thr = threshold if threshold is not None else {"symmetric": 0.0, "binary": 0.8}[encoding]
    assert images.shape == labels.shape == (10, 1, 3, 3) and labels.dtype == torch.uint8
    torch.testing.assert_close(images[:, 0, 0, 0], torch.tanh(z0))
    assert torch.equal(labels[:, 0, 0, 0], (torch.tanh(z0) > thr).to(torch.uint8))
    again, _ = model.generate(10, batch_size=7, seed=5)
    torch.testing.assert_close(again, images, rtol=0, atol=0)


# --------------------------------------------------------------------------- sample grid
def test_pair_grid_layout():
    raw = torch.stack([torch.full((2, 4, 5), v) for v in (-1.0, 0.0, 1.0)])  # 3 samples → 2×2 cells
    raw[:, 1] = torch.tensor([-0.5, 0.5, 0.1]).reshape(3, 1, 1)
    grid = pair_grid(raw, threshold=0.2, gap=1)
    assert grid.shape == (2 * (4 + 1) + 1, 2 * (2 * 5 + 1 + 2) + 1)
    assert np.all(grid[1:5, 1:6] == 0.0) and np.all(grid[1:5, 7:12] == 0.0)  # image −1 → 0, label −0.5 → 0
    assert np.all(grid[1:5, 14:19] == 0.5) and np.all(grid[1:5, 20:25] == 1.0)  # image 0 → 0.5, label 0.5 → 1
    assert np.all(grid[6:10, 1:6] == 1.0) and np.all(grid[6:10, 7:12] == 0.0)  # label 0.1 < 0.2 → 0


def test_sample_grid_callback_writes_png(tmp_path):
    L.seed_everything(0)
    model = tiny_wgan()
    t = trainer(max_epochs=2, default_root_dir=tmp_path, callbacks=[SampleGridCallback(every_n_epochs=2)])
    t.fit(model, loader(2))
    files = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert files == ["epoch_0001.png"]
    png = imread(tmp_path / "samples" / files[0])
    expected = pair_grid(model.sample_grid(), model.label_threshold)
    assert png.shape[:2] == expected.shape
    np.testing.assert_allclose(png[..., 0], expected, atol=1 / 255 + 1e-6)
