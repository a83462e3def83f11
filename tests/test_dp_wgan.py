"""DP-WGAN properties (shared/notes/dp-privacy.md §10): per-sample gradients, the private/public split of the critic
update, noise scale, accounting, fresh Poisson batches, empty batches, G-step hygiene, fixed fake batch, logging."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant

from lightning_modules.dp_wgan import LOGGED_METRICS, DPWGAN, check_dp_critic
from networks.discriminator2d import DCGANDiscriminator2D, DPCritic2D
from networks.gan2d import Generator2D, WGANCritic2D
from networks.gan3d import WGANCritic3D
from tests.dp_helpers import SIZE, TinyDPData, expected_update, fit, flat_params, sgd, spy_critic_inputs, tiny_dpwgan


def test_opacus_version_is_the_declared_one() -> None:
    import opacus

    major, minor = (int(x) for x in opacus.__version__.split(".")[:2])
    assert (major, minor) == (1, 6), "pyproject declares opacus>=1.6,<1.7: the recipe relies on 1.6 behaviour"


@pytest.mark.parametrize("critic", [
    DPCritic2D(ndf=4, in_size=12, norm="group", groups=2), DPCritic2D(ndf=4, in_size=12, norm="instance"),
    DPCritic2D(ndf=4, in_size=12, norm="none"), WGANCritic2D(ndf=4, in_size=12, norm="none", kernel_size=4),
    WGANCritic2D(ndf=4, in_size=12, norm="instance", kernel_size=5), WGANCritic3D(ndf=8, in_size=(32, 8, 8), norm="instance")],
    ids=["group", "instance", "none", "wgan-k4", "wgan-k5", "3d-instance"])  # fmt: skip
def test_per_sample_gradients_equal_a_loop(critic: torch.nn.Module) -> None:
    check_dp_critic(critic)  # the 3D paper's critic (affine-free InstanceNorm3d) is DP-compatible as it is
    critic = copy.deepcopy(critic).double()  # fp64: the check is of the per-sample algebra, not of fp32 rounding
    x = torch.randn(5, 2, *critic.init_args["in_size"]) if isinstance(critic, WGANCritic3D) else torch.randn(5, 2, 12, 12)
    x = x.double()
    gsm = GradSampleModule(copy.deepcopy(critic), loss_reduction="mean")
    (-gsm(x).mean()).backward()
    hooked = torch.cat([p.grad_sample.flatten(1) for p in gsm.parameters()], 1)
    params = list(critic.parameters())
    loop = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(-critic(x[i : i + 1]).mean(), params)])
                        for i in range(5)])  # fmt: skip
    rel = ((hooked - loop).norm(dim=1) / loop.norm(dim=1)).max()
    assert rel < 1e-9, float(rel)


def _one_step(sigma: float, unit: str = "patch", fake_term: str = "public", **data_kw):
    module = tiny_dpwgan(noise_multiplier=sigma, critic_optimizer=sgd(), fake_term=fake_term)
    critic0 = copy.deepcopy(module.critic)
    data = TinyDPData(unit=unit, **data_kw)
    seen = spy_critic_inputs(module)
    fit(module, data, max_steps=1)
    update = flat_params(critic0) - flat_params(module.critic)  # SGD lr 1: θ₀ − θ₁ = applied gradient
    b_exp = data.privacy_sampling()["expected_batch_size"]
    patients = seen["patients"][0] if unit == "patient" else None
    clip = 1.0 if fake_term == "public_batch_clipped" else None
    want = expected_update(critic0, seen["real"][0], seen["fake"][0], 1.0, b_exp, patients, clip)
    return update, want, seen, module, b_exp


@pytest.mark.parametrize("fake_term", ["public", "public_batch_clipped"])
def test_without_noise_the_update_is_clipped_real_sum_plus_public_fake_term(fake_term: str) -> None:
    update, want, seen, _, _ = _one_step(0.0, fake_term=fake_term)
    assert len(seen["real"][0]) > 0
    assert torch.allclose(update, want, atol=1e-5), float((update - want).abs().max())


def _joint_update(critic0: torch.nn.Module, params: list[torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                  b_exp: float) -> torch.Tensor:
    """Σᵢ clip_C(∇_params[−D(realᵢ) + D(fakeᵢ)])/B_exp with C = 1, by a plain per-row loop (fake_term "joint")."""
    want = torch.zeros(sum(p.numel() for p in params))
    for r, f in zip(real, fake):
        g = torch.cat([x.flatten() for x in torch.autograd.grad(-critic0(r[None]).mean() + critic0(f[None]).mean(), params)])
        want += g * min(1.0, 1.0 / (float(g.norm()) + 1e-6))
    return want / b_exp


def test_joint_rows_clip_the_real_and_fake_terms_together() -> None:
    """fake_term "joint": update = Σᵢ clip_C(∇[−D(realᵢ) + D(fakeᵢ)])/B_exp, one fresh fake per real row, no public term."""
    module = tiny_dpwgan(noise_multiplier=0.0, critic_optimizer=sgd(), fake_term="joint")
    critic0 = copy.deepcopy(module.critic)
    seen: dict[str, torch.Tensor] = {}
    hooked_rows = module._hooked_rows

    def spy(real: torch.Tensor, fake: torch.Tensor | None) -> None:
        seen["real"], seen["fake"] = real.clone(), fake.clone()
        hooked_rows(real, fake)

    module._hooked_rows = spy  # type: ignore[method-assign]
    data = TinyDPData()
    fit(module, data, max_steps=1)
    update = flat_params(critic0) - flat_params(module.critic)
    real, fake = seen["real"], seen["fake"]
    assert len(real) == len(fake) > 0
    want = _joint_update(critic0, list(critic0.parameters()), real, fake, data.privacy_sampling()["expected_batch_size"])
    assert torch.allclose(update, want, atol=1e-5), float((update - want).abs().max())
    assert "train/fake_score" not in module.trainer.callback_metrics  # its fakes are |S| many: nothing logged


def test_frozen_critic_layers_stay_put_and_only_the_trained_rows_are_clipped() -> None:
    """critic_trainable "head_and_norms": conv weights frozen; the clipped rows hold the trained parameters only."""
    module = tiny_dpwgan(noise_multiplier=0.0, critic_optimizer=sgd(), fake_term="joint", critic_trainable="head_and_norms")
    trained = [n for n, p in module.critic.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith("head.") or module.critic.get_submodule(n.rsplit(".", 1)[0]).__class__.__name__
                           == "GroupNorm" for n in trained)  # fmt: skip
    critic0 = copy.deepcopy(module.critic)
    seen: dict[str, torch.Tensor] = {}
    hooked_rows = module._hooked_rows
    module._hooked_rows = lambda real, fake: (seen.update(real=real.clone(), fake=fake.clone()), hooked_rows(real, fake))[1]  # type: ignore[method-assign]
    data = TinyDPData()
    fit(module, data, max_steps=1)
    before, after = dict(critic0.named_parameters()), dict(module.critic.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trained)
    update = torch.cat([(before[n] - after[n]).detach().flatten() for n in trained])
    params = [before[n] for n in trained]
    want = _joint_update(critic0, params, seen["real"], seen["fake"], data.privacy_sampling()["expected_batch_size"])
    assert torch.allclose(update, want, atol=1e-5), float((update - want).abs().max())
    assert module.privacy_report()["critic_trainable"] == "head_and_norms"


def test_noise_is_drawn_once_at_sigma_c_over_expected_batch() -> None:
    update, want, _, module, b_exp = _one_step(2.0, n_patients=10, per_patient=10, batch_size=10)
    residual = update - want
    assert residual.numel() > 2000
    assert float(residual.std()) == pytest.approx(2.0 * 1.0 / b_exp, rel=0.05)


def test_empty_batch_is_a_counted_noise_only_step() -> None:
    module = tiny_dpwgan(noise_multiplier=2.0, critic_optimizer=sgd())
    critic0 = copy.deepcopy(module.critic)
    data = TinyDPData(force_empty_first=True)
    seen = spy_critic_inputs(module)
    fit(module, data, max_steps=1)
    assert seen["real"][0].shape[0] == 0 and seen["noise_n"][0] == data.batch_size  # fakes keep their fixed size
    residual = flat_params(critic0) - flat_params(module.critic) - expected_update(critic0, seen["real"][0][:0], seen["fake"][0], 1.0, 8.0)
    assert float(residual.std()) == pytest.approx(2.0 / 8.0, rel=0.05)
    assert module.accountant.history == [(2.0, data.privacy_sampling()["sample_rate"], 1)]


def test_accountant_counts_critic_updates_only_and_matches_a_fresh_rdp_accountant() -> None:
    module = tiny_dpwgan(noise_multiplier=1.3, n_critic=2)
    data = TinyDPData()
    fit(module, data, max_epochs=2)  # 2 epochs × 6 critic steps, 6 generator steps, 12 fake passes
    q = data.privacy_sampling()["sample_rate"]
    assert module.step_counts == {"critic": 12, "generator": 6}
    assert module.accountant.history == [(1.3, q, 12)]
    fresh = RDPAccountant()
    fresh.history = [(1.3, q, 12)]
    assert module.epsilon() == pytest.approx(fresh.get_epsilon(module.delta))
    assert module.delta == pytest.approx(1e-3)  # default min(1/N, 1e-3); N = 48 patches


def test_every_critic_step_draws_a_fresh_poisson_batch() -> None:
    module = tiny_dpwgan(n_critic=1)
    data = TinyDPData(n_patients=10, per_patient=10, batch_size=10)
    seen = spy_critic_inputs(module)
    fit(module, data, max_epochs=3)
    assert len(data.draws) == len(seen["real"]) == module.step_counts["critic"] == 30  # one draw per critic update
    assert [len(d) for d in data.draws] == [len(r) for r in seen["real"]]
    sizes = torch.tensor([len(d) for d in data.draws], dtype=torch.float)
    assert sizes.var() > 0  # Poisson sizes vary (a fixed-size loader would not)
    assert sizes.mean() == pytest.approx(10, abs=3)
    overlaps = [len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(data.draws, data.draws[1:])]
    assert sum(overlaps) / len(overlaps) < 0.3  # ≈ q = 0.1; reusing batches would give 1
    epochs = [data.draws[i * 10 : (i + 1) * 10] for i in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # no epoch replays another's subsets
    assert data.epochs_seen == [0, 1, 2]  # the module hands the epoch to the batch sampler


def test_generator_step_leaves_no_grad_sample_and_does_not_move_the_accountant() -> None:
    module = tiny_dpwgan(n_critic=1)
    fit(module, TinyDPData(), max_steps=2)  # one critic step, one generator step
    assert module.step_counts == {"critic": 1, "generator": 1}
    for p in module.critic.parameters():
        assert getattr(p, "grad_sample", None) is None and getattr(p, "summed_grad", None) is None
    assert module.accountant.history[0][2] == 1


def test_fake_batch_size_is_fixed_and_only_public_metrics_are_logged() -> None:
    module = tiny_dpwgan(n_critic=2, fake_batch_size=7)
    data = TinyDPData()
    seen = spy_critic_inputs(module)
    trainer = fit(module, data, max_epochs=2)
    assert len({len(r) for r in seen["real"]}) > 1  # realised sizes varied …
    assert set(seen["noise_n"]) == {7}  # … the fake batches (critic and generator) did not
    logged = set(trainer.callback_metrics) | set(trainer.logged_metrics)
    assert logged and logged <= set(LOGGED_METRICS), logged - set(LOGGED_METRICS)
    assert "privacy/epsilon" in logged


def test_target_epsilon_sets_sigma_and_stops_at_the_budget() -> None:
    module = tiny_dpwgan(noise_multiplier=None, target_epsilon=8.0)
    data = TinyDPData()
    fit(module, data, max_epochs=3)
    assert module.sigma is not None and 0 < module.sigma < 10
    assert module.epsilon() <= 8.0 and module.accountant.history[0][2] == 18
    stopped = tiny_dpwgan(noise_multiplier=0.8, target_epsilon=8.0)
    fit(stopped, TinyDPData(), max_epochs=50)
    assert stopped.step_budget is not None and stopped.accountant.history[0][2] == stopped.step_budget < 300
    assert stopped.epsilon() <= 8.0


def test_non_private_reference_has_infinite_epsilon_and_no_accountant_steps() -> None:
    module = tiny_dpwgan(noise_multiplier=math.inf)
    fit(module, TinyDPData(), max_steps=3)
    assert module.accountant.history == [] and module.privacy_report()["epsilon"] == math.inf


def test_refuses_batchnorm_spectral_norm_and_fp16() -> None:
    with pytest.raises(ValueError, match="BatchNorm"):
        tiny_dpwgan(critic=DCGANDiscriminator2D(ndf=4, in_size=24, minibatch_discrimination=False))
    with pytest.raises(ValueError, match="spectral norm"):
        tiny_dpwgan(critic=WGANCritic2D(ndf=4, in_size=12, norm="spectral"))
    module = tiny_dpwgan()
    module._trainer = SimpleNamespace(precision="16-mixed", world_size=1)  # Lightning refuses 16-mixed on a CPU itself
    with pytest.raises(ValueError, match="16-mixed.*GradScaler"):
        module._check_trainer()


def test_patch_size_mismatch_is_named_before_the_first_private_step() -> None:
    """DPWGAN.on_fit_start keeps GANModule's patch-size check (it once overrode it without calling super)."""
    data = TinyDPData(size=16)  # the generator makes 12×12 patches (tests.dp_helpers.SIZE)
    data.patch_settings = SimpleNamespace(patch_size=(16, 16))
    module = tiny_dpwgan()
    with pytest.raises(ValueError, match=r"TinyDPData patch_size \[16, 16\].*generator's output \[12, 12\]"):
        fit(module, data, max_steps=1)
    assert module.accountant.history == [] and module.step_counts["critic"] == 0


@pytest.mark.slow  # W&B start-up takes ~20 s on the shared CPU
def test_epsilon_goes_to_the_wandb_summary(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="tofgan", save_dir=str(tmp_path), offline=True)
    module = tiny_dpwgan()
    try:
        fit(module, TinyDPData(), max_steps=3, logger=logger)
        summary = logger.experiment.summary
        assert summary["privacy/epsilon"] == pytest.approx(module.epsilon()) and summary["privacy/steps"] == 3
        assert summary["privacy/unit"] == "patch"
    finally:
        wandb.finish()


def test_per_sample_gradient_penalty_rows_equal_a_loop_and_train() -> None:
    module = tiny_dpwgan(gradient_penalty="per_sample_func", penalty_weight=10.0, critic=DPCritic2D(ndf=4, in_size=SIZE, norm="instance"))
    real, fake = torch.randn(3, 2, SIZE, SIZE), torch.randn(2, 2, SIZE, SIZE)
    module._per_sample_penalty_grads(real, fake)
    params = list(module.critic.parameters())
    rows = torch.cat([p.grad_sample.flatten(1) for p in params], 1)
    eps = torch.rand(3, 1, 1, 1, generator=module.step_rng("penalty"))
    for i in range(3):
        x_hat = (eps[i] * real[i : i + 1] + (1 - eps[i]) * fake[i % 2 : i % 2 + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(module.critic(x_hat).sum(), x_hat, create_graph=True)
        loss = -module.critic(real[i : i + 1]).sum() + 10.0 * (g.flatten().norm() - 1) ** 2
        loop = torch.cat([x.flatten() for x in torch.autograd.grad(loss, params)])
        assert torch.allclose(rows[i], loop, atol=1e-4), float((rows[i] - loop).abs().max())
    trained = tiny_dpwgan(gradient_penalty="per_sample_func", weight_clip=None)
    fit(trained, TinyDPData(), max_steps=3)
    assert trained.accountant.history[0][2] == 3 and trained.privacy_report()["gradient_penalty"] == "per_sample_func"


def test_non_private_reference_takes_the_same_penalty() -> None:
    module = tiny_dpwgan(noise_multiplier=math.inf, gradient_penalty="per_sample_func", weight_clip=None)
    fit(module, TinyDPData(), max_steps=2)
    assert module.step_counts["critic"] == 2 and all(p.isfinite().all() for p in module.critic.parameters())
