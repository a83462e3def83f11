"""The WGAN-GP module on 3D patches (B, 2, H, W, D): per-sample penalty in 3D, the fp32 critic under bf16,
training, resume, generation and the 5D sample grid — through the same module as 2D (lightning_modules/wgan.py)."""

from __future__ import annotations

import functools
import math

import lightning as L
import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch import nn
from torch.utils.data import DataLoader

import lightning_modules.wgan as wgan_mod
from callbacks.sample_grid import SampleGridCallback, pair_grid
from lightning_modules.wgan import WGANGP, gradient_penalty, per_sample_grad_norms
from networks.gan3d import Generator3D, WGANCritic3D
from tests import test_wgan as wgan2d_tests
from tests.test_wgan import trainer

LATENT, SIZE, BATCH = 8, (32, 32, 8), 4  # the critic's last maps are 2×2×1


def tiny_wgan3d(norm: str = "instance", ndf: int = 16, size: tuple[int, int, int] = SIZE, **kwargs) -> WGANGP:
    kwargs.setdefault("n_critic", 1)
    return WGANGP(Generator3D(LATENT, 16, out_size=size), WGANCritic3D(ndf=ndf, in_size=size, norm=norm),
                  latent_dim=LATENT, n_sample_grid=4, **kwargs)  # fmt: skip


def loader(n_batches: int = 3) -> DataLoader:
    return wgan2d_tests.loader(n_batches, SIZE, BATCH)


# --------------------------------------------------------------------------- penalty in 3D
def test_penalty_matches_per_sample_loop_3d():
    torch.manual_seed(0)
    critic = WGANCritic3D(ndf=16, in_size=SIZE, norm="instance")
    real, fake, eps = torch.randn(4, 2, *SIZE), torch.randn(4, 2, *SIZE), torch.rand(4, 1, 1, 1, 1)
    expected = []
    for i in range(4):  # one sample at a time with its own ε: no coupling across the batch possible
        x = (eps[i] * real[i : i + 1] + (1 - eps[i]) * fake[i : i + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        expected.append((g.flatten().norm() - 1) ** 2)
    torch.testing.assert_close(gradient_penalty(critic, real, fake, eps), torch.stack(expected).mean())


def test_penalty_of_linear_critic_is_analytic_3d():
    """D(x) = <w, x>: ∇D = w for every x̂, so the penalty is (‖w‖ − 1)² exactly, per sample."""
    w = torch.randn(2, *SIZE, dtype=torch.float64)

    class Linear(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(3, 2, *SIZE, dtype=torch.float64), torch.randn(3, 2, *SIZE, dtype=torch.float64)
    gp = gradient_penalty(Linear(), real, fake, torch.rand(3, 1, 1, 1, 1, dtype=torch.float64))
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-12)
    with pytest.raises(ValueError, match=r"\(B, 1, 1, 1, 1\)"):  # a 2D ε on 5D input
        gradient_penalty(Linear(), real, fake, torch.rand(3, 1, 1, 1, dtype=torch.float64))


def test_penalty_channels_last_3d_equals_contiguous():
    torch.manual_seed(0)
    critic = WGANCritic3D(ndf=16, in_size=SIZE, norm="spectral").double().eval()
    real, fake = torch.randn(3, 2, *SIZE, dtype=torch.float64), torch.randn(3, 2, *SIZE, dtype=torch.float64)
    eps = torch.rand(3, 1, 1, 1, 1, dtype=torch.float64)
    plain = gradient_penalty(critic, real, fake, eps)
    cl = torch.channels_last_3d
    last = gradient_penalty(critic.to(memory_format=cl), real.to(memory_format=cl), fake.to(memory_format=cl), eps)
    torch.testing.assert_close(last, plain, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- precision of the critic
def _critic_loss_and_norms(model: WGANGP, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-sample norms and the critic's parameter gradients of a penalty + score loss, in the critic's context."""
    model.critic.zero_grad()
    with model.critic_autocast(x.device.type):
        norms = per_sample_grad_norms(model.score, x.clone())
        ((norms - 1) ** 2).mean().add(model.score(x).mean()).backward()
    return norms.detach(), [p.grad.clone() for p in model.critic.parameters()]


def test_bf16_with_fp32_critic_gives_fp32_norms_and_grads():
    """Under CPU bf16 autocast the "fp32" critic reproduces fp32 per-sample norms and critic gradients; the
    critic left under autocast ("auto") is off by more than 1e-3 (why the switch exists)."""
    torch.manual_seed(0)
    model = tiny_wgan3d(ndf=32, size=(32, 32, 16))
    x = torch.randn(4, 2, 32, 32, 16)
    ref_norms, ref_grads = _critic_loss_and_norms(model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.score(x).dtype == torch.float32
        norms, grads = _critic_loss_and_norms(model, x)
        model.critic_precision = "auto"
        auto_norms, _ = _critic_loss_and_norms(model, x)
    torch.testing.assert_close(norms, ref_norms, rtol=0, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (auto_norms - ref_norms).abs().max() > 1e-3


@pytest.mark.parametrize("precision, setting, autocast_in_penalty",
                         [("bf16-mixed", "fp32", False), ("bf16-mixed", "auto", True), ("32-true", "fp32", False)])
def test_training_step_runs_the_penalty_in_the_chosen_precision(monkeypatch, precision, setting, autocast_in_penalty):
    """The module's own critic step: autocast is off inside the penalty exactly when the switch says so."""
    seen: list[tuple[bool, tuple[int, ...]]] = []
    original = wgan_mod.per_sample_grad_norms

    def spy(critic, x_hat, scaler=None):
        seen.append((torch.is_autocast_enabled("cpu"), tuple(x_hat.shape)))
        return original(critic, x_hat, scaler)

    monkeypatch.setattr(wgan_mod, "per_sample_grad_norms", spy)
    L.seed_everything(0)
    model = tiny_wgan3d("spectral", critic_precision=setting)
    trainer(max_steps=2, precision=precision).fit(model, loader(1))
    assert seen == [(autocast_in_penalty, (BATCH, 2, *SIZE))]


def test_bad_critic_precision():
    with pytest.raises(ValueError, match="critic_precision"):
        tiny_wgan3d(critic_precision="fp16")


# --------------------------------------------------------------------------- training, resume, outputs
_fit = functools.partial(wgan2d_tests._fit, make_model=lambda: tiny_wgan3d("spectral"), make_data=lambda: loader(2))


def test_resume_equals_straight_run_3d(tmp_path):
    ckpt = str(tmp_path / "half.ckpt")
    _fit(1, save=ckpt)
    resumed, t_resumed = _fit(2, ckpt_path=ckpt)
    straight, t_straight = _fit(2)
    assert t_resumed.global_step == t_straight.global_step == 8  # 2 epochs × 2 × (1 critic + 1 generator)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    reloaded = WGANGP.load_from_checkpoint(ckpt, weights_only=True)
    assert isinstance(reloaded.generator, Generator3D) and reloaded.generator.init_args["out_size"] == list(SIZE)
    assert all(math.isfinite(v.item()) for v in t_straight.callback_metrics.values())


def test_encode_real_and_generate_3d():
    model = tiny_wgan3d(label_encoding="binary", label_threshold=0.3)
    batch = {"image": torch.zeros(2, 1, *SIZE), "label": torch.ones(2, 1, *SIZE)}
    assert torch.equal(model.encode_real(batch)[:, 1:], batch["label"])
    with pytest.raises(ValueError, match="B,1,H,W,D"):
        model.encode_real({"image": torch.zeros(2, 1, 1, *SIZE), "label": torch.zeros(2, 1, 1, *SIZE)})
    images, labels = model.generate(5, batch_size=2, seed=3)
    assert images.shape == labels.shape == (5, 1, *SIZE) and labels.dtype == torch.uint8
    torch.testing.assert_close(model.generate(5, batch_size=2, seed=3)[0], images, rtol=0, atol=0)
    # another batch size: the same noise; CPU 3D convs may sum in another order (≈1e-8)
    torch.testing.assert_close(model.generate(5, batch_size=4, seed=3)[0], images, rtol=0, atol=1e-6)


def test_pair_grid_5d_shows_mid_slice_and_mip():
    """Cell = [mid-z image | mid-z label | image MIP | label MIP]; a vessel voxel off the mid slice shows in the MIPs only."""
    raw = torch.full((1, 2, 4, 5, 6), -1.0)
    raw[0, 0, 1, 2, 0] = 1.0  # bright image voxel at z = 0
    raw[0, 1, 3, 4, 5] = 0.9  # label voxel at z = 5 (> threshold)
    raw[0, 1, 0, 0, 3] = 0.9  # label voxel on the mid slice (z = 6 // 2)
    grid = pair_grid(raw, threshold=0.5, gap=1)
    assert grid.shape == (1 + 4 + 1, 1 + 4 * 5 + 3 + 2)
    mid_img, mid_lab, mip_img, mip_lab = (grid[1:5, 1 + k * 6 : 6 + k * 6] for k in range(4))
    assert mid_img.max() == 0.0 and mip_img[1, 2] == 1.0 and mip_img.sum() == 1.0
    assert mid_lab[0, 0] == 1.0 and mid_lab.sum() == 1.0
    assert mip_lab[3, 4] == 1.0 and mip_lab[0, 0] == 1.0 and mip_lab.sum() == 2.0


def test_sample_grid_callback_writes_5d_png(tmp_path):
    L.seed_everything(0)
    model = tiny_wgan3d()
    t = trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[SampleGridCallback()])
    t.fit(model, loader(1))
    png = imread(tmp_path / "samples" / "epoch_0000.png")
    expected = pair_grid(model.sample_grid(), model.label_threshold)
    assert png.shape[:2] == expected.shape and expected.shape[1] > 4 * SIZE[1]
    np.testing.assert_allclose(png[..., 0], expected, atol=1 / 255 + 1e-6)
