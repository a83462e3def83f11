"""WGAN-GP and WGAN-GP-SN of Kossen et al. 2021 (SPEC §3.1), and weight-clipped WGAN (gp_weight=0).

Step schedule: every `training_step` is ONE critic step on the fresh real batch it receives; after every
`n_critic`-th critic step the same `training_step` also makes one generator step. So each critic update
sees new real data (the authors' code reused one batch for all 5; SPEC §3.3/§6), an epoch is
len(dataloader) critic steps and len(dataloader)/n_critic generator steps, and Lightning's
`global_step` counts both optimisers: a cycle of n_critic + 1 steps (set `max_steps` accordingly).

Mixed precision (SPEC §6): Lightning runs `training_step` under autocast. The penalty's critic output is
computed under that autocast; under "16-mixed" it is multiplied by the precision plugin's GradScaler scale
before `autograd.grad(create_graph=True)` (fp16 gradients would underflow otherwise) and the input
gradient is divided by the same scale; the per-sample norm is taken in fp32. `manual_backward` then scales
the whole loss again as usual and the plugin's `optimizer.step()` unscales/skips inf steps. "bf16-mixed"
has no scaler (bf16 has fp32's range): only the fp32 norm applies. Losses are reduced in fp32.

DDP: the generator is not used in the critic phase's backward and the critic gets no gradient in the
generator phase (its parameters are toggled to requires_grad=False), so DDP needs
`find_unused_parameters=True` (configs/trainer/ddp.yaml). Double backward through DDP works because the
penalty's `autograd.grad` is taken w.r.t. the input only and Lightning re-arms the reducer per
`manual_backward`.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_modules.gan_base import GANModule


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    eps: torch.Tensor,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """mean over samples of (‖∇ₓ D(x̂)‖₂ − 1)², x̂ = ε·real + (1−ε)·fake, with ε of shape (B,1,1,1).

    Per-sample ε and per-sample norm (the authors' code used one ε and the whole batch's norm, SPEC §6).
    The graph is kept (create_graph) so the penalty trains the critic.
    """
    if eps.shape != (real.shape[0], 1, 1, 1):
        raise ValueError(f"lightning_modules/wgan.py: eps must have shape (B,1,1,1), got {tuple(eps.shape)}")
    x_hat = (eps * real + (1 - eps) * fake.detach().to(real.dtype)).requires_grad_(True)
    out = critic(x_hat).float().sum()
    if scaler is not None and scaler.is_enabled():
        out = scaler.scale(out)
    (grad,) = torch.autograd.grad(out, x_hat, create_graph=True)
    grad = grad.float()
    if scaler is not None and scaler.is_enabled():
        grad = grad / scaler.get_scale()
    norm = grad.flatten(1).norm(2, dim=1)
    return ((norm - 1) ** 2).mean()


class WGANGP(GANModule):
    """Wasserstein GAN with per-sample gradient penalty; see the module docstring for the schedule.

    Args (beyond `GANModule`'s):
        n_critic: critic steps per generator step (each on its own real batch).
        gp_weight: λ of the penalty; 0 disables it (then use `weight_clip`, the original WGAN / DP-WGAN).
        weight_clip: clamp every critic parameter to [−c, c] after each critic step (None: no clipping).
    """

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        generator_optimizer: OptimizerCallable | None = None,
        critic_optimizer: OptimizerCallable | None = None,
        latent_dim: int = 128,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        weight_clip: float | None = None,
        label_encoding: Literal["symmetric", "binary"] = "symmetric",
        label_threshold: float | None = None,
        n_sample_grid: int = 16,
        sample_seed: int = 0,
        noise_seed: int | None = None,
    ) -> None:
        super().__init__(
            generator, critic, generator_optimizer, critic_optimizer, latent_dim, label_encoding,
            label_threshold, n_sample_grid, sample_seed, noise_seed,
        )  # fmt: skip
        if n_critic < 1 or gp_weight < 0 or (weight_clip is not None and weight_clip <= 0):
            raise ValueError(
                f"lightning_modules/wgan.py: need n_critic ≥ 1, gp_weight ≥ 0, weight_clip > 0 or None; got"
                f" {n_critic}, {gp_weight}, {weight_clip}"
            )
        self.n_critic = n_critic
        self.gp_weight = gp_weight
        self.weight_clip = weight_clip

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        real = self.encode_real(batch)
        self._critic_step(real)
        if self.step_counts["critic"] % self.n_critic == 0:
            self._generator_step(real.shape[0])

    def _critic_step(self, real: torch.Tensor) -> None:
        opt = self.optimizers()[0]
        rng, b = self.step_rng("critic"), real.shape[0]
        with self.toggled_optimizer(opt):
            with torch.no_grad():
                fake = self.generator(self.sample_noise(b, rng)).to(real.dtype)
            scores = self.critic(torch.cat([real, fake])).float()
            wasserstein = scores[:b].mean() - scores[b:].mean()
            loss = -wasserstein
            penalty = torch.zeros((), device=real.device)
            if self.gp_weight > 0:
                eps = torch.rand(b, 1, 1, 1, generator=rng, device=real.device, dtype=real.dtype)
                penalty = gradient_penalty(self.critic, real, fake, eps, self.grad_scaler)
                loss = loss + self.gp_weight * penalty
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()  # frees the critic's gradients before the generator phase
        if self.weight_clip is not None:
            with torch.no_grad():
                for p in self.critic.parameters():
                    p.clamp_(-self.weight_clip, self.weight_clip)
        self.step_counts["critic"] += 1
        self.log_dict({"train/critic_loss": loss.detach(), "train/wasserstein": wasserstein.detach(),
                       "train/gradient_penalty": penalty.detach()}, batch_size=b, prog_bar=True)  # fmt: skip

    def _generator_step(self, batch_size: int) -> None:
        opt = self.optimizers()[1]
        rng = self.step_rng("generator")
        with self.toggled_optimizer(opt):  # critic parameters: requires_grad=False, no gradient left behind
            fake = self.generator(self.sample_noise(batch_size, rng))
            loss = -self.critic(fake).float().mean()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()
        self.step_counts["generator"] += 1
        self.log("train/generator_loss", loss.detach(), batch_size=batch_size, prog_bar=True)
