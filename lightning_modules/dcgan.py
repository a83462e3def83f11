"""DCGAN of Kossen et al. 2021 (SPEC §3.1): BCE discriminator, label smoothing, feature matching.

Step schedule: every `training_step` is ONE discriminator step on the fresh real batch it receives, then
ONE generator step (n_critic is fixed at 1 for the DCGAN, as in the paper and the authors' code). Both
steps draw their own noise from `step_rng` (seeded by the step counts, so a resume repeats the noise).
`global_step` counts both optimisers: 2 per batch.

The discriminator is passed as `critic` (the `GANModule` name of network/optimiser index 0). It outputs
logits; the sigmoid lives in `binary_cross_entropy_with_logits` (stable for large |logit|, and safe under
autocast, where a sigmoid followed by BCE is refused). Real and fake go through it in separate forward
passes: BatchNorm and minibatch discrimination see single-source batches, as in DCGAN and the authors' code.

Label smoothing (Salimans et al. 2016; the authors' "noisy labels"): per-sample targets real ~U(0.7, 1.2),
fake ~U(0, 0.3). BCE with logits, −[t·log σ(x) + (1−t)·log(1−σ(x))], is a valid expression for any t; for
t > 1 one sample's loss is unbounded below (it keeps pushing that logit up), but the loss is linear in t, so
in expectation it is the loss with the mean target (0.95 real, 0.15 fake), bounded and minimised at
σ(x) = 0.95: the noise adds gradient variance, not a different optimum. The authors' BCELoss on sigmoid
outputs did the same (with log clamped at −100).

Feature matching (G loss, Salimans et al. 2016 §3.1), L1 between the discriminator's last-conv features
f of real and fake batches:
- "per_sample" (paper and authors' code): mean_i,k |f_k(real_i) − f_k(fake_i)| — pairs real i with fake i,
  an arbitrary pairing; the authors also divided by 100, which Adam's scale invariance makes a no-op;
- "batch_mean" (Salimans et al.): mean_k |mean_i f_k(real_i) − mean_i f_k(fake_i)|;
- "none": the non-saturating BCE loss −log σ(D(G(z))).
The real features are computed under no_grad and the discriminator's parameters are toggled off, so the
generator phase leaves no gradient in the discriminator (the authors' code backpropagated into D there).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_modules.gan_base import GANModule

FeatureMatching = Literal["none", "per_sample", "batch_mean"]


def smoothed_targets(
    n: int, low: float, high: float, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """n targets ~U(low, high) (float32); low == high gives the constant (no smoothing)."""
    u = torch.rand(n, generator=generator, device=device if generator is None else generator.device)
    return low + (high - low) * u


def feature_matching_loss(real: torch.Tensor, fake: torch.Tensor, mode: FeatureMatching) -> torch.Tensor:
    """L1 feature matching between (N, …) feature batches; see the module docstring for the two forms."""
    if real.shape != fake.shape:
        raise ValueError(f"lightning_modules/dcgan.py: feature shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")
    real, fake = real.flatten(1).float(), fake.flatten(1).float()
    if mode == "per_sample":
        return (real - fake).abs().mean()
    if mode == "batch_mean":
        return (real.mean(0) - fake.mean(0)).abs().mean()
    raise ValueError(f"lightning_modules/dcgan.py: feature matching mode must be 'per_sample' or 'batch_mean', got {mode!r}")


class DCGAN(GANModule):
    """DCGAN with one-sided-noise label smoothing and feature matching; see the module docstring.

    Args (beyond `GANModule`'s; `critic` is the discriminator, it needs `features(x)` for feature matching):
        generator_optimizer, critic_optimizer: None → Adam(3e-4, β = (0.5, 0.999)), the paper's setting.
        latent_dim: 100 in the paper.
        label_smoothing: draw targets from the ranges below (False: real 1, fake 0).
        real_label_range, fake_label_range: U(low, high) of the smoothed targets.
        feature_matching: generator loss, "per_sample" (paper), "batch_mean" (Salimans) or "none" (BCE).
    """

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        generator_optimizer: OptimizerCallable | None = None,
        critic_optimizer: OptimizerCallable | None = None,
        latent_dim: int = 100,
        label_smoothing: bool = True,
        real_label_range: tuple[float, float] = (0.7, 1.2),
        fake_label_range: tuple[float, float] = (0.0, 0.3),
        feature_matching: FeatureMatching = "per_sample",
        label_encoding: Literal["symmetric", "binary"] = "symmetric",
        label_threshold: float | None = None,
        n_sample_grid: int = 16,
        sample_seed: int = 0,
        noise_seed: int | None = None,
        generator_ema: float | None = None,
    ) -> None:
        adam = functools.partial(torch.optim.Adam, lr=3e-4, betas=(0.5, 0.999))
        super().__init__(
            generator, critic, generator_optimizer or adam, critic_optimizer or adam, latent_dim, label_encoding,
            label_threshold, n_sample_grid, sample_seed, noise_seed, generator_ema=generator_ema,
        )  # fmt: skip
        if feature_matching not in ("none", "per_sample", "batch_mean"):
            raise ValueError(
                f"lightning_modules/dcgan.py: feature_matching must be 'none', 'per_sample' or 'batch_mean', got {feature_matching!r}"
            )
        for name, rng in (("real_label_range", real_label_range), ("fake_label_range", fake_label_range)):
            if len(rng) != 2 or rng[0] > rng[1]:
                raise ValueError(f"lightning_modules/dcgan.py: {name} must be (low, high) with low ≤ high, got {rng}")
        if feature_matching != "none" and not callable(getattr(self.critic, "features", None)):
            raise TypeError(f"lightning_modules/dcgan.py: feature_matching={feature_matching!r} needs critic.features(x)")
        self.label_smoothing = label_smoothing
        self.real_range = tuple(map(float, real_label_range)) if label_smoothing else (1.0, 1.0)
        self.fake_range = tuple(map(float, fake_label_range)) if label_smoothing else (0.0, 0.0)
        self.feature_matching: FeatureMatching = feature_matching

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        real = self.encode_real(batch)
        self._discriminator_step(real)
        self._generator_step(real)

    def draw_targets(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(real targets, fake targets), each (n,), from the configured ranges."""
        return smoothed_targets(n, *self.real_range, generator), smoothed_targets(n, *self.fake_range, generator)

    def _discriminator_step(self, real: torch.Tensor) -> None:
        opt = self.optimizers()[0]
        rng, b = self.step_rng("discriminator"), real.shape[0]
        with self.toggled_optimizer(opt):
            with torch.no_grad():
                fake = self.generator(self.sample_noise(b, rng)).to(real.dtype)
            logit_real, logit_fake = self.critic(real).float(), self.critic(fake).float()
            t_real, t_fake = self.draw_targets(b, rng)
            loss = F.binary_cross_entropy_with_logits(logit_real, t_real.to(logit_real.device)) + \
                F.binary_cross_entropy_with_logits(logit_fake, t_fake.to(logit_fake.device))  # fmt: skip
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()  # frees the discriminator's gradients before the generator phase
        self.step_counts["critic"] += 1
        self.log_dict({"train/discriminator_loss": loss.detach(), "train/d_real": torch.sigmoid(logit_real).mean().detach(),
                       "train/d_fake": torch.sigmoid(logit_fake).mean().detach()}, batch_size=b, prog_bar=True)  # fmt: skip

    def _generator_step(self, real: torch.Tensor) -> None:
        opt = self.optimizers()[1]
        rng, b = self.step_rng("generator"), real.shape[0]
        with self.toggled_optimizer(opt):  # discriminator parameters: requires_grad=False
            fake = self.generator(self.sample_noise(b, rng))
            if self.feature_matching == "none":
                logit = self.critic(fake).float()
                loss = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
            else:
                with torch.no_grad():
                    real_features = self.critic.features(real)
                loss = feature_matching_loss(real_features, self.critic.features(fake), self.feature_matching)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()
        self.step_counts["generator"] += 1
        self.log("train/generator_loss", loss.detach(), batch_size=b, prog_bar=True)
