"""metrics.dp_audit: the one-run audit (Steinke, Nasr, Jagielski 2023) passes a correct DP-SGD step and flags one whose
noise is σ/10 of what the accountant assumes — through a plain opacus step and through DPWGAN's own critic step."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from metrics.dp_audit import (audit_dp_step, audit_dp_training, canary_directions, dirac_canaries, epsilon_from_guesses,
                              epsilon_lower_bound, write_canary_set)

pytest.importorskip("opacus")
from opacus import GradSampleModule  # noqa: E402
from opacus.accountants import RDPAccountant  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402

D0, M, N_RECORDS, C = 50, 2000, 500, 1.0
SIGMA, Q, STEPS, DELTA = 4.0, 0.5, 10, 1e-5


def critic_loss(out: torch.Tensor) -> torch.Tensor:
    """The DP critic's private real term: −D(real) per record."""
    return -out.flatten()


def claimed_epsilon() -> float:
    acct = RDPAccountant()
    acct.history = [(SIGMA, Q, STEPS)]
    return float(acct.get_epsilon(DELTA))


# ----------------------------------------------------------------------------- a plain opacus DP-SGD step
def opacus_step_factory(sigma_impl: float, expected_batch: float):
    """One real opacus DP-SGD step (GradSampleModule + DPOptimizer), noise multiplier `sigma_impl`."""

    def make(model: nn.Module):
        gsm = GradSampleModule(model, loss_reduction="mean")
        opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=sigma_impl, max_grad_norm=C,
                          expected_batch_size=int(expected_batch), loss_reduction="mean",
                          generator=torch.Generator().manual_seed(0))

        def step(batch: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            if len(batch):
                critic_loss(gsm(batch)).mean().backward()
            else:  # empty Poisson draw: a noise-only step, never skipped
                for p in model.parameters():
                    p.grad_sample = torch.zeros((0, *p.shape))
            opt.step()

        return step

    return make


def run_opacus_audit(sigma_impl: float):
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(D0 + M, 1, bias=False))  # a tiny critic whose first layer sees the canaries
    nn.init.zeros_(critic[0].weight)
    records = torch.zeros(N_RECORDS, D0 + M)
    records[:, :D0] = torch.randn(N_RECORDS, D0) * 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return audit_dp_step(critic, opacus_step_factory(sigma_impl, Q * (N_RECORDS + M / 2)), critic_loss, records,
                             dirac_canaries(D0 + M, D0, M), sample_rate=Q, steps=STEPS, claimed_epsilon=claimed_epsilon(),
                             delta=DELTA, seed=0)


@pytest.mark.slow
def test_correct_step_passes_and_tenfold_too_little_noise_is_flagged():
    ok = run_opacus_audit(SIGMA)
    assert not ok.violation and ok.epsilon_lower_bound <= ok.claimed_epsilon
    broken = run_opacus_audit(SIGMA / 10)
    assert broken.violation, broken
    assert broken.epsilon_lower_bound > ok.claimed_epsilon and broken.canary_auc > ok.canary_auc


def test_lower_bound_from_guesses():
    assert epsilon_from_guesses(1000, 100, 50, 1e-5, 0.05) == 0.0  # chance accuracy rejects nothing
    perfect = epsilon_from_guesses(1000, 100, 100, 1e-5, 0.05)
    assert 2.0 < perfect < 6.0  # bounded by the number of guesses
    assert epsilon_from_guesses(1000, 100, 90, 1e-5, 0.05) < perfect
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    assert epsilon_lower_bound(rng.normal(size=1000), included, 1.0).epsilon_lower_bound < 0.5
    leak = epsilon_lower_bound(included + rng.normal(0, 0.01, 1000), included, 1.0)
    assert leak.violation and leak.canary_auc == 1.0


def test_dirac_canary_directions_are_their_own_coordinates():
    model = nn.Sequential(nn.Linear(6, 1, bias=False))
    directions = canary_directions(model, critic_loss, dirac_canaries(6, 2, 4))
    expected = torch.zeros(4, 6)
    expected[torch.arange(4), 2 + torch.arange(4)] = -1.0  # gradient of −w·x is −x, normalised
    torch.testing.assert_close(directions, expected)


def test_canary_set_file(tmp_path):
    info = write_canary_set(str(tmp_path / "c.npz"), 400, [24, 24], seed=1)
    with np.load(tmp_path / "c.npz") as data:
        assert data["images"].shape == (400, 1, 24, 24) and data["labels"].dtype == np.uint8
        assert int(data["included"].sum()) == info["included"] and 150 < info["included"] < 250


# ----------------------------------------------------------------------------- through the DP-WGAN's own critic step
S = 48  # 2 × 48 × 48 critic inputs: room for D0 + M image pixels


class LinearCritic(nn.Module):
    """A DP-valid critic whose first layer sees each canary pixel through its own weight."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2 * S * S, 1, bias=False)
        nn.init.zeros_(self.lin.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1)).flatten()


class ZeroGenerator(nn.Module):
    """Fakes of zeros: the public fake term then adds nothing to the canary coordinates."""

    latent_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[0], 2, S, S) + 0 * self.unused


def dpwgan_training(sigma_impl: float, n_records: int):
    """Runs the batches through DPWGAN.training_step under a Lightning Trainer (its optimiser, accountant, hooks)."""
    import lightning as L
    from torch.utils.data import DataLoader

    dp_wgan = pytest.importorskip("lightning_modules.dp_wgan")

    def make(critic: nn.Module):
        module = dp_wgan.DPWGAN(ZeroGenerator(), critic, critic_optimizer=functools.partial(torch.optim.SGD, lr=1.0),
                                latent_dim=4, n_critic=5, weight_clip=None, noise_multiplier=sigma_impl, max_grad_norm=C,
                                delta=DELTA, label_encoding="binary", dp_noise_seed=0, prv_alongside=False)

        class Batches(L.LightningDataModule):
            def __init__(self, batches: list[torch.Tensor]) -> None:
                super().__init__()
                self.batches = [{"image": b[:, :1], "label": b[:, 1:]} for b in batches]

            def privacy_sampling(self) -> dict:
                n = n_records + M // 2
                return {"unit": "patch", "sampling": "poisson", "sample_rate": Q, "expected_batch_size": Q * n,
                        "population": n, "steps_per_epoch": len(self.batches), "patches_per_patient": None}

            def train_dataloader(self) -> DataLoader:
                return DataLoader(self.batches, batch_size=None)

        def train(batches: list[torch.Tensor]) -> None:
            trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
            trainer.fit(module, datamodule=Batches(batches))
            assert module.privacy_report()["steps"] == STEPS  # one accountant step per critic step

        return train

    return make


@pytest.mark.slow
@pytest.mark.parametrize("sigma_impl, flagged", [(SIGMA, False), (SIGMA / 10, True)])
def test_dpwgan_critic_step_audit(sigma_impl, flagged):
    torch.manual_seed(0)
    records = torch.zeros(N_RECORDS, 2, S, S)
    records[:, 0].view(N_RECORDS, -1)[:, :D0] = torch.randn(N_RECORDS, D0) * 0.3
    canaries = torch.zeros(M, 2, S, S)
    canaries[:, 0].view(M, -1)[torch.arange(M), D0 + torch.arange(M)] = 10.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = audit_dp_training(LinearCritic(), dpwgan_training(sigma_impl, N_RECORDS), critic_loss, records,
                                   canaries, sample_rate=Q, steps=STEPS, claimed_epsilon=claimed_epsilon(), delta=DELTA)
    assert result.violation == flagged, result
