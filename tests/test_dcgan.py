"""DCGAN: discriminator shapes and minibatch discrimination, label smoothing, feature matching, steps, checkpoints."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_modules.dcgan import DCGAN, feature_matching_loss, smoothed_targets
from networks.discriminator2d import DCGANDiscriminator2D, MinibatchDiscrimination
from networks.gan2d import Generator2D

LATENT, SIZE, BATCH = 8, 24, 8


def tiny_dcgan(mbd: bool = True, **kwargs) -> DCGAN:
    return DCGAN(Generator2D(LATENT, 4, out_size=SIZE), DCGANDiscriminator2D(ndf=4, in_size=SIZE, minibatch_discrimination=mbd),
                 latent_dim=LATENT, n_sample_grid=4, **kwargs)  # fmt: skip


def loader(n_batches: int = 3) -> DataLoader:
    g = torch.Generator().manual_seed(7)
    data = [{"image": torch.rand(1, SIZE, SIZE, generator=g) * 2 - 1,
             "label": (torch.rand(1, SIZE, SIZE, generator=g) > 0.8).float()} for _ in range(n_batches * BATCH)]  # fmt: skip
    return DataLoader(data, batch_size=BATCH, shuffle=False)


def trainer(**kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, **kwargs)


# --------------------------------------------------------------------------- discriminator
@pytest.mark.parametrize("size, kernel, ndf, widths", [(24, 5, 4, [4, 8]), (48, 4, 3, [3, 6, 12]), (96, 3, 2, [2, 4, 8, 16]), (12, 5, 4, [4])])
def test_discriminator_shape_table(size, kernel, ndf, widths):
    d = DCGANDiscriminator2D(ndf=ndf, in_size=size, kernel_size=kernel).eval()
    x = torch.randn(5, 2, size, size)
    convs = [m for m in d.body.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == widths
    assert d.body(x).shape == (5, widths[-1], 6, 6)
    assert d.features(x).shape == (5, 50, 2, 2)
    assert d(x).shape == (5,)
    bns = [isinstance(getattr(b.adn, "N", None), nn.BatchNorm2d) for b in d.body]
    assert bns == [False] + [True] * (len(widths) - 1)  # no BatchNorm on the first layer (DCGAN)
    leaky = [m for m in d.body.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == len(widths) and all(m.negative_slope == 0.2 for m in leaky)


def test_paper_width_parameter_count():
    """Hand count: 2→96 (+bias), 96→192→384→768 (BN γ, β), 768→50 projection, Linear 200², T 200×500, 300→1."""
    d = DCGANDiscriminator2D()
    convs = 2 * 96 * 25 + 96 + sum(a * b * 25 + 2 * b for a, b in [(96, 192), (192, 384), (384, 768)])
    expected = convs + 768 * 50 * 25 + (200 * 200 + 200) + 200 * 100 * 5 + (300 + 1)
    assert sum(p.numel() for p in d.parameters()) == expected
    no_mbd = DCGANDiscriminator2D(minibatch_discrimination=False)
    assert sum(p.numel() for p in no_mbd.parameters()) == expected - 200 * 500 - 100


@pytest.mark.parametrize("kwargs, match", [({"in_size": 6}, "≥ 12"), ({"in_size": 20}, "3·2\\^k"), ({"kernel_size": 7}, "kernel_size"),
                                           ({"ndf": 0}, "≥ 1"), ({"mbd_dim": 0}, "≥ 1")])  # fmt: skip
def test_discriminator_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DCGANDiscriminator2D(**kwargs)


def test_minibatch_layer_matches_loop():
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(6, n_kernels=3, kernel_dim=2)
    x = torch.randn(4, 6, dtype=torch.float64)
    layer.T.data = layer.T.data.double() * 10
    out = layer(x)
    m = (x @ layer.T).reshape(4, 3, 2)
    for i in range(4):
        for b in range(3):
            c = sum(math.exp(-(m[i, b] - m[j, b]).abs().sum().item()) for j in range(4) if j != i)
            assert out[i, 6 + b].item() == pytest.approx(c, rel=1e-9)
    torch.testing.assert_close(out[:, :6], x)
    assert torch.equal(layer(x[:1])[:, 6:], torch.zeros(1, 3, dtype=torch.float64))  # alone: nothing to compare


@pytest.mark.parametrize("mbd", [True, False])
def test_logit_depends_on_other_samples_only_with_minibatch_discrimination(mbd):
    torch.manual_seed(0)
    d = DCGANDiscriminator2D(ndf=4, in_size=SIZE, minibatch_discrimination=mbd).eval()  # eval: BN does not mix
    x = torch.randn(4, 2, SIZE, SIZE)
    y = x.clone()
    y[3] = x[0] + 0.01 * torch.randn_like(x[0])  # only sample 3 changes: it moves next to sample 0
    with torch.no_grad():
        a, b = d(x), d(y)
    if mbd:
        assert (a[:3] - b[:3]).abs().min() > 1e-4  # the others' logits move with sample 3
    else:
        assert torch.equal(a[:3], b[:3])


# --------------------------------------------------------------------------- label smoothing
def test_smoothed_targets_cover_their_ranges():
    model = tiny_dcgan()
    real, fake = model.draw_targets(20000, torch.Generator().manual_seed(0))
    for t, (lo, hi) in ((real, (0.7, 1.2)), (fake, (0.0, 0.3))):
        assert lo <= t.min().item() < lo + 0.01 and hi - 0.01 < t.max().item() <= hi
        counts = np.histogram(t.numpy(), bins=5, range=(lo, hi))[0]
        assert counts.min() > 0.18 * len(t)  # spread over the whole range (uniform: 0.2 each)
    assert real.mean().item() == pytest.approx(0.95, abs=0.01) and fake.mean().item() == pytest.approx(0.15, abs=0.01)
    custom = tiny_dcgan(real_label_range=(0.9, 1.0), fake_label_range=(0.05, 0.1)).draw_targets(1000)
    assert 0.9 <= custom[0].min() and custom[0].max() <= 1.0 and 0.05 <= custom[1].min() and custom[1].max() <= 0.1
    hard_real, hard_fake = tiny_dcgan(label_smoothing=False).draw_targets(50)
    assert torch.equal(hard_real, torch.ones(50)) and torch.equal(hard_fake, torch.zeros(50))
    assert torch.equal(smoothed_targets(3, 0.5, 0.5), torch.full((3,), 0.5))


# --------------------------------------------------------------------------- feature matching
@pytest.mark.parametrize("mode", ["per_sample", "batch_mean"])
def test_feature_matching_zero_for_equal_features(mode):
    f = torch.randn(5, 3, 2, 2)
    assert feature_matching_loss(f, f.clone(), mode).item() == 0.0


def test_feature_matching_against_hand_computation():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    fake = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    # per sample: (|1| + |2| + |−2| + |−1|) / 4; batch means (2, 3) vs (2.5, 2.5): (0.5 + 0.5) / 2
    assert feature_matching_loss(real, fake, "per_sample").item() == pytest.approx(1.5)
    assert feature_matching_loss(real, fake, "batch_mean").item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        feature_matching_loss(real, fake[:1], "per_sample")
    with pytest.raises(ValueError, match="mode"):
        feature_matching_loss(real, fake, "none")


# --------------------------------------------------------------------------- training steps
class Recording(DCGAN):
    """Keeps the discriminator's gradients after every generator step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.critic_grads_after_g: list[list] = []

    def _generator_step(self, real: torch.Tensor) -> None:
        super()._generator_step(real)
        self.critic_grads_after_g.append([p.grad for p in self.critic.parameters()])


@pytest.mark.parametrize("fm, mbd, smoothing", [("per_sample", True, True), ("batch_mean", True, False), ("none", False, True)])
def test_steps_update_both_nets_and_leave_discriminator_without_gradient(fm, mbd, smoothing):
    L.seed_everything(0)
    model = Recording(Generator2D(LATENT, 4, out_size=SIZE), DCGANDiscriminator2D(ndf=4, in_size=SIZE, minibatch_discrimination=mbd),
                      latent_dim=LATENT, feature_matching=fm, label_smoothing=smoothing)  # fmt: skip
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    d0 = [p.detach().clone() for p in model.critic.parameters()]
    t = trainer(max_epochs=1)
    t.fit(model, loader(3))
    assert t.global_step == 6 and model.step_counts == {"critic": 3, "generator": 3}  # n_critic = 1
    assert all(not torch.equal(a, b) for a, b in zip(g0, model.generator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, model.critic.parameters()))
    assert len(model.critic_grads_after_g) == 3
    assert all(g is None or not g.any() for grads in model.critic_grads_after_g for g in grads)
    assert all(p.requires_grad for p in model.parameters())  # toggling undone
    logged = t.callback_metrics
    for key in ("train/discriminator_loss", "train/generator_loss", "train/d_real", "train/d_fake"):
        assert math.isfinite(logged[key].item()), key
    assert 0 < logged["train/d_real"].item() < 1 and 0 < logged["train/d_fake"].item() < 1


def test_paper_optimiser_defaults():
    opt_d, opt_g = tiny_dcgan().configure_optimizers()
    for opt in (opt_d, opt_g):
        assert isinstance(opt, torch.optim.Adam)
        assert opt.defaults["lr"] == 3e-4 and tuple(opt.defaults["betas"]) == (0.5, 0.999)


@pytest.mark.parametrize("kwargs, error", [({"feature_matching": "l2"}, ValueError), ({"real_label_range": (1.2, 0.7)}, ValueError),
                                           ({"label_encoding": "x"}, ValueError)])  # fmt: skip
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match="lightning_modules"):
        tiny_dcgan(**kwargs)


@pytest.mark.filterwarnings("ignore:critic .* has no `init_args`")
def test_feature_matching_needs_features():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(2 * SIZE * SIZE, 1), nn.Flatten(0))
    with pytest.raises(TypeError, match="features"):
        DCGAN(Generator2D(LATENT, 4, out_size=SIZE), critic, latent_dim=LATENT)
    DCGAN(Generator2D(LATENT, 4, out_size=SIZE), critic, latent_dim=LATENT, feature_matching="none")


# --------------------------------------------------------------------------- checkpoints
def _fit(epochs: int, ckpt_path: str | None = None, save: str | None = None) -> DCGAN:
    L.seed_everything(0)
    model = tiny_dcgan(feature_matching="batch_mean", label_encoding="binary")
    t = trainer(max_epochs=epochs)
    t.fit(model, loader(2), ckpt_path=ckpt_path)
    if save:
        t.save_checkpoint(save)
    return model


def test_checkpoint_reloads_resumes_and_synthesizes(tmp_path):
    from datamodules.patch_store import PatchStore
    from workflows.synthesize import synthesize

    ckpt = str(tmp_path / "half.ckpt")
    half = _fit(1, save=ckpt)
    raw = torch.load(ckpt, weights_only=True)
    hp = raw["hyper_parameters"]
    assert raw["gan_class"] == "lightning_modules.dcgan.DCGAN"
    assert hp["critic"]["class_path"] == "networks.discriminator2d.DCGANDiscriminator2D"
    assert (hp["feature_matching"], hp["label_encoding"], hp["label_threshold"]) == ("batch_mean", "binary", 0.8)
    reloaded = DCGAN.load_from_checkpoint(ckpt, weights_only=True)
    assert reloaded.real_range == (0.7, 1.2) and reloaded.feature_matching == "batch_mean"
    for (name, a), b in zip(half.state_dict().items(), reloaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # resume: the step-seeded noise makes 1 + 1 epochs equal 2 straight epochs
    resumed, straight = _fit(2, ckpt_path=ckpt), _fit(2)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # synthesize finds the class through the checkpoint's gan_class entry
    store = PatchStore(synthesize(ckpt, str(tmp_path / "synth"), n_samples=6, batch_size=4, seed=1))
    z = torch.randn(6, LATENT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = reloaded.eval().generator(z)
    np.testing.assert_array_equal(store.labels, (out[:, 1:] > 0.8).numpy().astype(np.uint8))


def test_bf16_mixed_runs_on_cpu():
    L.seed_everything(0)
    model = tiny_dcgan()
    t = trainer(max_steps=4, precision="bf16-mixed")
    t.fit(model, loader(2))
    assert model.step_counts == {"critic": 2, "generator": 2}
    assert all(math.isfinite(v.item()) for v in t.callback_metrics.values())
