"""Tiny in-memory DP-WGAN setups for tests/test_dp_*.py: the real DPWGAN, samplers and optimiser, 12×12 pairs."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.dp_data import EmptySafeCollate, PoissonBatchSampler
from lightning_modules.dp_wgan import DPWGAN
from networks.discriminator2d import DPCritic2D
from networks.gan2d import Generator2D

SIZE, LATENT = 12, 8


class PairDataset(Dataset):
    """Random (image, label) pairs with a patient index; `scale` multiplies one patient's images (adjacency tests)."""

    def __init__(self, n_patients: int, per_patient: int, seed: int = 0, scale: dict[int, float] | None = None,
                 size: int = SIZE) -> None:  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        n = n_patients * per_patient
        self.image = torch.rand(n, 1, size, size, generator=g) * 2 - 1
        self.label = (torch.rand(n, 1, size, size, generator=g) > 0.8).float()
        self.patient = torch.arange(n_patients).repeat_interleave(per_patient)
        for u, s in (scale or {}).items():
            self.image[self.patient == u] *= s

    def __len__(self) -> int:
        return len(self.patient)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.image[i], "label": self.label[i], "patient": self.patient[i]}


class TinyDPData(L.LightningDataModule):
    """What DPWGAN needs from a data module: `privacy_sampling()` and a Poisson train loader."""

    def __init__(self, unit: str = "patch", n_patients: int = 6, per_patient: int = 8, batch_size: int = 8,
                 patients_per_step: int = 2, patches_per_patient: int = 4, seed: int = 0,
                 scale: dict[int, float] | None = None, force_empty_first: bool = False, size: int = SIZE) -> None:  # fmt: skip
        super().__init__()
        self.unit, self.batch_size, self.seed = unit, batch_size, seed
        self.m, self.k = patients_per_step, patches_per_patient
        self.dataset = PairDataset(n_patients, per_patient, scale=scale, size=size)
        self.n_patients, self.force_empty_first = n_patients, force_empty_first
        self.draws: list[list[int]] = []  # spy: every index set the sampler yielded
        self.epochs_seen: list[int] = []  # spy: set_epoch calls

    def privacy_sampling(self) -> dict[str, Any]:
        n = len(self.dataset)
        q, pop, exp = (self.batch_size / n, n, float(self.batch_size)) if self.unit == "patch" else (
            self.m / self.n_patients, self.n_patients, float(self.m))
        return {"unit": self.unit, "sampling": "poisson", "sample_rate": q, "expected_batch_size": exp, "population": pop,
                "steps_per_epoch": max(1, round(1 / q)), "patches_per_patient": self.k if self.unit == "patient" else None}

    def train_dataloader(self) -> DataLoader:
        info, patient = self.privacy_sampling(), self.dataset.patient.numpy()
        if self.unit == "patch":
            groups, per = [np.asarray([i]) for i in range(len(patient))], None
        else:
            groups, per = [np.flatnonzero(patient == u) for u in range(self.n_patients)], self.k
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        sampler = SpySampler(self, groups, info["sample_rate"], info["steps_per_epoch"], per, self.seed, rank, world)
        return DataLoader(self.dataset, batch_sampler=sampler, collate_fn=EmptySafeCollate(self.dataset[0]))


class SpySampler(PoissonBatchSampler):
    def __init__(self, owner: TinyDPData, *args: Any) -> None:
        super().__init__(*args)
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.owner.epochs_seen.append(epoch)

    def __iter__(self):  # type: ignore[override]
        for i, batch in enumerate(super().__iter__()):
            if self.owner.force_empty_first and not self.owner.draws:
                batch = []
            self.owner.draws.append(list(batch))
            yield batch


def tiny_dpwgan(**kwargs: Any) -> DPWGAN:
    defaults: dict[str, Any] = dict(noise_multiplier=1.0, max_grad_norm=1.0, n_critic=5, weight_clip=None,
                                    dp_noise_seed=0, latent_dim=LATENT, n_sample_grid=2)  # fmt: skip
    defaults.update(kwargs)
    torch.manual_seed(0)  # before both networks: two calls build the same critic whatever ran before (test order)
    critic = defaults.pop("critic", None) or DPCritic2D(ndf=8, in_size=SIZE, norm="group", groups=4)
    torch.manual_seed(0)
    generator = Generator2D(latent_dim=LATENT, ngf=4, out_size=SIZE)
    return DPWGAN(generator, critic, **defaults)


def sgd(lr: float = 1.0):
    """θ₁ = θ₀ − lr·update: the critic's applied gradient can be read back from the parameters."""
    import functools

    return functools.partial(torch.optim.SGD, lr=lr)


def fit(module: DPWGAN, data: L.LightningDataModule, max_steps: int = -1, max_epochs: int = 1, **trainer: Any) -> L.Trainer:
    kw: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                              max_steps=max_steps, max_epochs=max_epochs, num_sanity_val_steps=0)  # fmt: skip
    kw.update(trainer)
    t = L.Trainer(**kw)
    t.fit(module, datamodule=data)
    return t


def spy_critic_inputs(module: DPWGAN) -> dict[str, list[torch.Tensor]]:
    """Records the real batch, patients and fake batch of every critic step (wraps the module's own methods)."""
    seen: dict[str, list[torch.Tensor]] = {"real": [], "patients": [], "fake": [], "noise_n": []}
    critic_step, fake_batch, sample_noise = module._critic_step, module._fake_batch, module.sample_noise

    def _critic_step(real, patients=None):
        seen["real"].append(real.detach().clone())
        seen["patients"].append(None if patients is None else patients.clone())
        return critic_step(real, patients)

    def _fake_batch():
        out = fake_batch()
        seen["fake"].append(out.detach().clone())
        return out

    def _sample_noise(n, generator=None):
        seen["noise_n"].append(n)
        return sample_noise(n, generator)

    module._critic_step, module._fake_batch, module.sample_noise = _critic_step, _fake_batch, _sample_noise  # type: ignore[method-assign]
    return seen


def flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def expected_update(critic0: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, clip: float, b_exp: float,
                    patients: torch.Tensor | None = None, fake_clip: float | None = None) -> torch.Tensor:
    """Σ_rows clip_C(∇(−D(real_row)))/B_exp + ∇ mean D(fake), by a plain per-example loop (rows: patches or patients)."""
    critic = copy.deepcopy(critic0)
    params = list(critic.parameters())
    rows = [[i] for i in range(len(real))] if patients is None else [
        torch.nonzero(patients == u).flatten().tolist() for u in torch.unique(patients)]
    total = torch.zeros(sum(p.numel() for p in params))
    for idx in rows:
        g = torch.autograd.grad(-critic(real[idx]).mean(), params)
        g = torch.cat([x.flatten() for x in g])
        total += g * min(1.0, clip / (float(g.norm()) + 1e-6))
    g_fake = torch.cat([x.flatten() for x in torch.autograd.grad(critic(fake).mean(), params)])
    if fake_clip is not None:
        g_fake = g_fake * min(1.0, fake_clip / (float(g_fake.norm()) + 1e-12))
    return total / b_exp + g_fake


class DumpCritic(L.Callback):
    """Writes each rank's critic before/after training and its accountant history to `$DP_DUMP_DIR/rank<r>.pt` (DDP tests)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.start = flat_params(pl_module.critic).clone()

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        import os

        out = {"start": self.start, "end": flat_params(pl_module.critic), "history": pl_module.accountant.history,
               "sampling": pl_module.sampling, "steps": dict(pl_module.step_counts)}  # fmt: skip
        torch.save(out, os.path.join(os.environ["DP_DUMP_DIR"], f"rank{trainer.global_rank}.pt"))
