"""WGAN-GP and WGAN-GP-SN of Kossen et al. 2021 (SPEC §3.1) and of the 3D paper (Subramaniam et al. 2022,
SPEC §3.2; networks in `networks.gan3d`), and weight-clipped WGAN (gp_weight=0).

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
has no scaler (bf16 has fp32's range), but its 8-bit mantissa puts the per-sample gradient norms of a
critic under autocast off by up to 0.1 (measured, 3D InstanceNorm critic; notes/3d-paper.md A2), which the
penalty (‖∇‖ − 1)² cannot tolerate: with `critic_precision="fp32"` (default) the critic's forward, the
penalty's `autograd.grad` and the backward all run with autocast disabled under bf16 (inputs cast to fp32;
TF32 on Ampere+; a backward left under autocast would redo e.g. the head's matmul in bf16), the generator's
forward stays in bf16. The
critic is ~6 % of a 3D iteration's FLOPs. Under "16-mixed" the critic stays under autocast (the paper's
SN-MP). Losses are reduced in fp32.

2D and 3D alike: ε has shape (B, 1, …) with one 1 per non-batch axis of the input, the norm is per sample.

DDP: the generator is not used in the critic phase's backward and the critic gets no gradient in the
generator phase (its parameters are toggled to requires_grad=False), so DDP needs
`find_unused_parameters=True` (configs/trainer/ddp.yaml). Double backward through DDP works because the
penalty's `autograd.grad` is taken w.r.t. the input only and Lightning re-arms the reducer per
`manual_backward`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_modules.gan_base import GANModule


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → fp32; fp32 and fp64 unchanged (float64 checks keep their precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def per_sample_grad_norms(
    critic: Callable[[torch.Tensor], torch.Tensor],
    x_hat: torch.Tensor,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """(B,) norms ‖∇ₓ D(x̂ᵢ)‖₂ (fp32, or fp64 for fp64 input), one per sample, with the graph kept
    (create_graph) so they train the critic.

    With an enabled GradScaler the critic output is scaled before `autograd.grad` and the gradient unscaled.
    """
    x_hat = x_hat.requires_grad_(True)
    out = at_least_fp32(critic(x_hat)).sum()
    scaled = scaler is not None and scaler.is_enabled()
    if scaled:
        out = scaler.scale(out)
    (grad,) = torch.autograd.grad(out, x_hat, create_graph=True)
    grad = at_least_fp32(grad)
    if scaled:
        grad = grad / scaler.get_scale()
    return grad.flatten(1).norm(2, dim=1)


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    eps: torch.Tensor,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """mean over samples of (‖∇ₓ D(x̂)‖₂ − 1)², x̂ = ε·real + (1−ε)·fake, with ε of shape (B, 1, …) (one 1 per
    non-batch axis: (B,1,1,1) in 2D, (B,1,1,1,1) in 3D).

    Per-sample ε and per-sample norm (the authors' code used one ε and the whole batch's norm, SPEC §6).
    `critic` is the critic module or a callable around it (`WGANGP.score`, which sets the critic's precision).
    """
    if eps.shape != (real.shape[0],) + (1,) * (real.ndim - 1):
        raise ValueError(f"lightning_modules/wgan.py: eps must have shape (B{', 1' * (real.ndim - 1)}) for input"
                         f" {tuple(real.shape)}, got {tuple(eps.shape)}")
    x_hat = eps * real + (1 - eps) * fake.detach().to(real.dtype)
    return ((per_sample_grad_norms(critic, x_hat, scaler) - 1) ** 2).mean()


class WGANGP(GANModule):
    """Wasserstein GAN with per-sample gradient penalty; see the module docstring for the schedule.

    Args (beyond `GANModule`'s):
        n_critic: critic steps per generator step (each on its own real batch).
        gp_weight: λ of the penalty; 0 disables it (then use `weight_clip`, the original WGAN / DP-WGAN).
        weight_clip: clamp every critic parameter to [−c, c] after each critic step (None: no clipping).
        critic_precision: "fp32" runs the critic with autocast disabled under bf16 autocast (see the module
            docstring); "auto" leaves it under the trainer's autocast. Either way nothing changes under
            "32-true" or "16-mixed".
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
        critic_precision: Literal["auto", "fp32"] = "fp32",
        generator_ema: float | None = None,
    ) -> None:
        super().__init__(
            generator, critic, generator_optimizer, critic_optimizer, latent_dim, label_encoding,
            label_threshold, n_sample_grid, sample_seed, noise_seed, generator_ema,
        )  # fmt: skip
        if n_critic < 1 or gp_weight < 0 or (weight_clip is not None and weight_clip <= 0):
            raise ValueError(
                f"lightning_modules/wgan.py: need n_critic ≥ 1, gp_weight ≥ 0, weight_clip > 0 or None; got"
                f" {n_critic}, {gp_weight}, {weight_clip}"
            )
        if critic_precision not in ("auto", "fp32"):
            raise ValueError(
                f"lightning_modules/wgan.py: critic_precision must be 'auto' or 'fp32', got {critic_precision!r}"
            )
        self.n_critic = n_critic
        self.gp_weight = gp_weight
        self.weight_clip = weight_clip
        self.critic_precision = critic_precision

    def critic_autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """Context of every critic computation, forward, penalty's autograd.grad and backward alike: autocast off
        under bf16 autocast with critic_precision "fp32" (an op recorded under autocast, e.g. a Linear's mm in
        the double backward, would otherwise run in bf16 again); otherwise nothing changes."""
        if (self.critic_precision == "fp32" and torch.is_autocast_enabled(device_type)
                and torch.get_autocast_dtype(device_type) == torch.bfloat16):  # fmt: skip
            return torch.autocast(device_type, enabled=False)
        return contextlib.nullcontext()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Critic scores (B,) in fp32 (fp64 for a fp64 critic). Outside autocast the input takes the critic's
        dtype (a bf16 fake meets the fp32 critic under critic_precision "fp32")."""
        with self.critic_autocast(x.device.type):
            if not torch.is_autocast_enabled(x.device.type):
                param = next(self.critic.parameters(), None)
                x = x if param is None else x.to(param.dtype)
            return at_least_fp32(self.critic(x))

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
            with self.critic_autocast(real.device.type):
                scores = self.score(torch.cat([real, fake]))
                wasserstein = scores[:b].mean() - scores[b:].mean()
                loss = -wasserstein
                penalty = torch.zeros((), device=real.device)
                if self.gp_weight > 0:
                    eps_shape = (b,) + (1,) * (real.ndim - 1)
                    eps = torch.rand(eps_shape, generator=rng, device=real.device, dtype=real.dtype)
                    penalty = gradient_penalty(self.score, real, fake, eps, self.grad_scaler)
                    loss = loss + self.gp_weight * penalty
                opt.zero_grad()
                self.manual_backward(loss)
            opt.step()
            opt.zero_grad()  # frees the critic's gradients before the generator phase
        self.clip_critic_weights()
        self.step_counts["critic"] += 1
        self.log_dict({"train/critic_loss": loss.detach(), "train/wasserstein": wasserstein.detach(),
                       "train/gradient_penalty": penalty.detach()}, batch_size=b, prog_bar=True)  # fmt: skip

    def clip_critic_weights(self) -> None:
        """Clamp every critic parameter to [−weight_clip, weight_clip] (no-op when weight_clip is None)."""
        if self.weight_clip is not None:
            with torch.no_grad():
                for p in self.critic.parameters():
                    p.clamp_(-self.weight_clip, self.weight_clip)

    def _generator_step(self, batch_size: int) -> None:
        opt = self.optimizers()[1]
        rng = self.step_rng("generator")
        with self.toggled_optimizer(opt):  # critic parameters: requires_grad=False, no gradient left behind
            fake = self.generator(self.sample_noise(batch_size, rng))
            with self.critic_autocast(fake.device.type):  # G's backward then runs without autocast too
                loss = -self.score(fake).mean()
                opt.zero_grad()
                self.manual_backward(loss)
            opt.step()
            opt.zero_grad()
        self.step_counts["generator"] += 1
        self.log("train/generator_loss", loss.detach(), batch_size=batch_size, prog_bar=True)
