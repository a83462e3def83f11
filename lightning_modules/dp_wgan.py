"""DP-WGAN of Kossen et al. 2022 (SPEC §3.3) with a valid privacy guarantee, per patch or per patient.

Design and measurements: ../shared/notes/dp-privacy.md (§2 recipe, §3 Lightning, §5 patient level, §9 pitfalls).

One critic step (= one `training_step` on a fresh Poisson batch of the training patients, datamodules.dp_data):
1. private real term: −D(real) with opacus' per-sample hooks on; at patient level the per-patch rows are
   averaged per patient (one row per sampled patient); an empty draw gives zero rows (a noise-only step);
2. public fake term: ∇ mean D(G(z)) with the hooks off, from a FIXED number of fakes (never the realised
   batch size, which would leak |S| — the parent's step ties them, so it is replaced here). With
   `fake_term: joint` there is no public term: each private row is ∇[−D(realᵢ) + D(fakeᵢ)] (one fresh fake per
   real row), so both terms are clipped alike (the CPU recipe, docs/DP_RESULTS.md);
3. `PublicGradDPOptimizer.step()`: clip each row to C, sum, add N(0, σ²C²) once, divide by B_exp, add the
   public term, RMSprop; the accountant's hook takes exactly one step with the sampler's q;
4. weight clipping ±0.01 (post-processing).
Every n_critic-th step the parent's generator step runs with the hooks off (no grad_sample is left, the
accountant does not move). σ = ∞ (`noise_multiplier: .inf`) is the non-private reference row: the same
sampling and step without clipping or noise (ε = ∞).

Privacy argument (note §2): step t releases Σ_{i∈S_t} clip_C(∇ℓ(x_i)) + N(0, σ²C²) — a sampled Gaussian mechanism
with sensitivity C under add/remove adjacency of a patch (patch) or of a patient's patches (patient); the fake
term, G-step and weight clip are post-processing. Nothing computed on the real batch is logged (no real losses,
realised sizes or clip fractions): only train/fake_score, train/generator_loss and privacy/* (`LOGGED_METRICS`).
The noise and the Poisson draws use OS entropy unless a seed is given (tests only: a known seed voids the
guarantee). No CSPRNG (opacus secure_mode needs torchcsprng, unavailable for this torch): stated in the record.

DP fine-tuning (`pretrained` + `critic_trainable`): start from a GAN trained on public (simulated) data and let
DP-SGD train only the critic's head and normaliser affine parameters — the noise norm grows with √(trained
parameters), the clipped signal does not. The generator is post-processing of the critic: it trains fully.
The ε record (logging, manifest, checkpoint, W&B) is `lightning_modules.dp_record.PrivacyRecord`.

Epoch = `steps_per_epoch` = round(1/q) critic steps (≈ one pass over the patches, or patients); the accountant
counts critic steps, so ε does not depend on that definition. DDP: the critic step runs in `no_sync` and the
distributed DP optimiser adds the noise on rank 0 and all-reduces the privatised + public gradient.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn.utils import parametrize

from lightning_modules.dp_accounting import (PublicGradDistributedDPOptimizer, PublicGradDPOptimizer, accountant_steps,
                                             make_accountant, noise_for_target, steps_within_budget)  # fmt: skip
from lightning_modules.dp_record import PrivacyRecord
from lightning_modules.wgan import WGANGP, gradient_penalty

#: The only metrics this module logs: public quantities (functions of the released networks and fresh noise) and ε.
LOGGED_METRICS = ("train/fake_score", "train/generator_loss", "privacy/epsilon", "privacy/accountant_steps",
                  "privacy/noise_multiplier")  # fmt: skip


def check_dp_critic(critic: nn.Module) -> None:
    """Refuse critics DP-SGD cannot train: BatchNorm (mixes samples), spectral norm (opacus #646), other opacus errors."""
    for name, m in critic.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"lightning_modules/dp_wgan.py: critic layer {name!r} is BatchNorm, which mixes the samples of a"
                             " batch, so per-sample gradients (DP-SGD) are undefined; use GroupNorm, InstanceNorm without"
                             " running statistics, or no normaliser (networks.discriminator2d.DPCritic2D)")  # fmt: skip
        if parametrize.is_parametrized(m) or hasattr(m, "weight_orig"):
            raise ValueError(f"lightning_modules/dp_wgan.py: critic layer {name!r} uses spectral norm, which opacus cannot"
                             " compute per-sample gradients through; use norm 'group', 'instance' or 'none'")  # fmt: skip
    errors = ModuleValidator.validate(critic, strict=False)
    if errors:
        raise ValueError(f"lightning_modules/dp_wgan.py: the critic is not DP-compatible (opacus): {errors}")


def freeze_critic(critic: nn.Module, trainable: str) -> None:
    """requires_grad only on the parameters `trainable` names (DPWGAN's critic_trainable); opacus, the optimisers and
    Lightning's optimiser toggling all skip frozen parameters."""
    if trainable == "all":
        return
    leaves = [m for m in critic.modules() if not list(m.children()) and list(m.parameters(recurse=False))]
    keep = {leaves[-1]}
    if trainable == "head_and_norms":
        keep |= {m for m in leaves if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm))}
    for m in leaves:
        for p in m.parameters(recurse=False):
            p.requires_grad_(m in keep)


@contextlib.contextmanager
def quiet_backward_hooks() -> Iterator[None]:
    """opacus' full backward hooks stay registered (disabled by a flag); torch warns at every critic backward that
    the input needs no gradient — true and harmless here, so the warning is silenced for these passes only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


class DPWGAN(PrivacyRecord, WGANGP):
    """Weight-clipped WGAN whose critic is trained with DP-SGD (module docstring).

    Args (beyond `WGANGP`'s; the gradient penalty is off: weight clipping bounds the critic, as in the paper):
        noise_multiplier: σ; `.inf` = non-private reference; None = from `target_epsilon`.
        max_grad_norm: C, the per-sample (per-patient) clipping norm.
        target_epsilon: with noise_multiplier None, σ is chosen so that ε(RDP) = target at the planned number of
            critic steps (max_epochs × steps per epoch, or max_steps); in both cases training stops hard when
            one more step would exceed it.
        delta: δ; None → min(1/N, 1e-3) with N the patches (patch level) or patients (patient level).
        fake_term: "public" (unclipped ∇ mean D(fake), added after the noise: the paper-faithful split),
            "public_batch_clipped" (that term rescaled to norm ≤ C), or "joint": each clipped row is
            ∇[−D(realᵢ) + D(fakeᵢ)] with one fresh fake per real row (DCGAN example of opacus; jusjusjus
            DP-WGAN-GP), so real and fake terms are clipped alike — the critic's per-sample norms are ≫ C,
            and with an unclipped public term the critic learns almost only from the fakes (docs/DP_RESULTS.md).
        fake_batch_size: fakes per critic step (global, fixed) and per generator step; None → the expected real batch
            (patches). With fake_term "joint" the critic's fakes are one per real row instead.
        gradient_penalty: "none" (weight clipping only, the paper) or "per_sample_func" (DP-WGAN-GP: a per-sample
            penalty inside each clipped row, by torch.func; set weight_clip null with it).
        penalty_weight: λ of that penalty.
        prv_alongside: also report the PRV accountant's ε (tighter, labelled; RDP is the guarantee).
        dp_noise_seed: seed of the DP noise; None = OS entropy. A seed is for tests only (it voids the guarantee).
        pretrained: a GAN checkpoint trained on PUBLIC data (e.g. the simulated cohort) whose generator and critic
            weights start a fresh fit (not a resume): DP fine-tuning; the public pre-training costs no privacy.
        critic_trainable: critic parameters DP-SGD trains; the others stay frozen at their initial (with `pretrained`:
            public pre-trained) values. "all"; "head" (the last layer with parameters); "head_and_norms" (plus the
            normalisers' affine scales and shifts). The noise norm grows as √(trained parameters) while the clipped
            signal does not, so fine-tuning a few hundred parameters of a public critic keeps the update's
            signal-to-noise ratio usable where training all 10⁴–10⁷ drowns it (DP fine-tuning practice).
    """

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        generator_optimizer: OptimizerCallable | None = None,
        critic_optimizer: OptimizerCallable | None = None,
        latent_dim: int = 128,
        n_critic: int = 5,
        weight_clip: float | None = 0.01,
        noise_multiplier: float | None = 1.0,
        max_grad_norm: float = 1.0,
        target_epsilon: float | None = None,
        delta: float | None = None,
        fake_term: Literal["public", "public_batch_clipped", "joint"] = "public",
        fake_batch_size: int | None = None,
        gradient_penalty: Literal["none", "per_sample_func"] = "none",
        penalty_weight: float = 10.0,
        prv_alongside: bool = True,
        dp_noise_seed: int | None = None,
        pretrained: str | None = None,
        critic_trainable: Literal["all", "head", "head_and_norms"] = "all",
        label_encoding: Literal["symmetric", "binary"] = "symmetric",
        label_threshold: float | None = None,
        n_sample_grid: int = 16,
        sample_seed: int = 0,
        noise_seed: int | None = None,
        generator_ema: float | None = None,
    ) -> None:
        super().__init__(
            generator, critic, generator_optimizer, critic_optimizer, latent_dim, n_critic, 0.0, weight_clip,
            label_encoding, label_threshold, n_sample_grid, sample_seed, noise_seed, generator_ema=generator_ema,
        )  # fmt: skip
        check_dp_critic(self.critic)
        if noise_multiplier is None and target_epsilon is None:
            raise ValueError("lightning_modules/dp_wgan.py: give noise_multiplier or target_epsilon")
        if (noise_multiplier is not None and noise_multiplier < 0) or max_grad_norm <= 0:
            raise ValueError(f"lightning_modules/dp_wgan.py: need noise_multiplier ≥ 0 and max_grad_norm > 0, got"
                             f" {noise_multiplier}, {max_grad_norm}")  # fmt: skip
        if fake_term not in ("public", "public_batch_clipped", "joint"):
            raise ValueError(f"lightning_modules/dp_wgan.py: fake_term must be 'public', 'public_batch_clipped' or 'joint',"
                             f" got {fake_term!r}")  # fmt: skip
        self.private = noise_multiplier is None or math.isfinite(noise_multiplier)
        self.sigma = noise_multiplier
        self.max_grad_norm, self.target_epsilon, self.delta = max_grad_norm, target_epsilon, delta
        self.fake_term, self.fake_batch_size, self.prv_alongside = fake_term, fake_batch_size, prv_alongside
        self.dp_noise_seed, self.pretrained = dp_noise_seed, pretrained
        if gradient_penalty not in ("none", "per_sample_func") or penalty_weight < 0:
            raise ValueError(f"lightning_modules/dp_wgan.py: gradient_penalty must be 'none' or 'per_sample_func' and"
                             f" penalty_weight ≥ 0, got {gradient_penalty!r}, {penalty_weight}")  # fmt: skip
        self.gradient_penalty, self.penalty_weight = gradient_penalty, penalty_weight
        if critic_trainable not in ("all", "head", "head_and_norms"):
            raise ValueError(f"lightning_modules/dp_wgan.py: critic_trainable must be 'all', 'head' or 'head_and_norms',"
                             f" got {critic_trainable!r}")  # fmt: skip
        self.critic_trainable = critic_trainable
        freeze_critic(self.critic, critic_trainable)
        self.accountant = make_accountant("rdp")
        self.sampling: dict[str, Any] = {}
        self.step_budget: int | None = None

    # ----------------------------------------------------------------- setup
    @property
    def gsm(self) -> GradSampleModule:
        return self.__dict__["_gsm"]

    def _sampling_info(self) -> dict[str, Any]:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "privacy_sampling"):
            raise ValueError("lightning_modules/dp_wgan.py: DPWGAN needs a Poisson-sampling data module with"
                             " privacy_sampling() (datamodules.dp_data.DPGANPatchDataModule, configs/data/pegasus_dp_gan.yaml)")
        return datamodule.privacy_sampling()

    def planned_critic_steps(self) -> int:
        """Critic steps the trainer will run: max_epochs × steps per epoch, capped by max_steps (both optimisers count)."""
        trainer, per_epoch = self.trainer, self.sampling["steps_per_epoch"]
        plans = [trainer.max_epochs * per_epoch] if trainer.max_epochs and trainer.max_epochs > 0 else []
        if trainer.max_steps and trainer.max_steps > 0:
            plans.append(math.ceil(trainer.max_steps * self.n_critic / (self.n_critic + 1)))
        if not plans:
            raise ValueError("lightning_modules/dp_wgan.py: target_epsilon needs trainer.max_epochs or trainer.max_steps")
        return min(plans)

    def _resolve_privacy(self) -> None:
        """q, B_exp and δ from the sampler; σ from the target ε; the step budget of the hard stop."""
        self.sampling = self._sampling_info()
        if self.delta is None:
            self.delta = min(1.0 / self.sampling["population"], 1e-3)
        q = self.sampling["sample_rate"]
        if self.sigma is None:
            self.sigma = noise_for_target(self.target_epsilon, self.delta, q, self.planned_critic_steps())
        if self.private and self.target_epsilon is not None:
            self.step_budget = steps_within_budget(self.target_epsilon, self.delta, self.sigma, q)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        critic_opt, generator_opt = super().configure_optimizers()
        self._resolve_privacy()
        if not self.private:
            return [critic_opt, generator_opt]
        if self.gradient_penalty == "none":  # torch.func (the penalty path) cannot pass opacus' backward hooks
            self.__dict__["_gsm"] = GradSampleModule(self.critic, loss_reduction="mean")  # unregistered: no `_module.` keys
            self.gsm.disable_hooks()  # on only for the private real pass
        world = self.trainer.world_size
        seed = secrets.randbits(63) if self.dp_noise_seed is None else self.dp_noise_seed
        seed = int(np.random.SeedSequence([seed, accountant_steps(self.accountant.history)]).generate_state(1)[0])
        cls = PublicGradDistributedDPOptimizer if world > 1 else PublicGradDPOptimizer
        dp_opt = cls(critic_opt, noise_multiplier=self.sigma, max_grad_norm=self.max_grad_norm,
                     expected_batch_size=self.sampling["expected_batch_size"] / world, loss_reduction="mean",
                     generator=torch.Generator(device=self.device).manual_seed(seed))  # fmt: skip
        dp_opt.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sampling["sample_rate"]))
        return [dp_opt, generator_opt]

    def on_fit_start(self) -> None:
        self._check_trainer()
        super().on_fit_start()  # GANModule's patch-size check: a mismatch is named before the first (private) step
        if self.pretrained and self.trainer.ckpt_path is None:  # a resume restores its own weights instead
            state = torch.load(self.pretrained, map_location=self.device, weights_only=True)["state_dict"]
            nets = {k: v for k, v in state.items() if k.startswith(("generator.", "critic."))}
            missing, unexpected = self.load_state_dict(nets, strict=False)
            if unexpected or any(k.startswith(("generator.", "critic.")) for k in missing):
                raise ValueError(f"{self.pretrained}: pretrained networks do not match this DPWGAN's (missing"
                                 f" {missing[:3]}, unexpected {unexpected[:3]})")  # fmt: skip

    def _check_trainer(self) -> None:
        precision = str(self.trainer.precision)
        if precision.startswith("16"):
            raise ValueError(f"lightning_modules/dp_wgan.py: precision {precision!r} is refused for DP training: the fp16"
                             " GradScaler multiplies the per-sample gradients before clipping (unscale_ fixes only p.grad),"
                             " so every sample is clipped; use '32-true' or 'bf16-mixed'")  # fmt: skip
        if self.trainer.world_size > 1 and self.trainer._accelerator_connector.use_distributed_sampler:
            raise ValueError("lightning_modules/dp_wgan.py: set trainer.use_distributed_sampler: false — the DP data module"
                             " shards the Poisson sampling itself; Lightning's sampler would replace it")  # fmt: skip

    # ----------------------------------------------------------------- training
    def fake_batch_per_rank(self) -> int:
        total = self.fake_batch_size or round(self.sampling["expected_batch_size"] * (self.sampling["patches_per_patient"] or 1))
        return max(1, total // self.trainer.world_size)

    def on_train_epoch_start(self) -> None:
        """Tell the Poisson batch sampler the epoch (Lightning calls set_epoch only on a loader's `sampler`)."""
        sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.current_epoch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Hard stop: no critic step beyond the ε budget (returning −1 ends the epoch, should_stop the fit)."""
        if self.step_budget is not None and accountant_steps(self.accountant.history) >= self.step_budget:
            self.trainer.should_stop = True
            return -1
        return None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        real = self.encode_real(batch)
        self._critic_step(real, batch.get("patient"))
        if self.step_counts["critic"] % self.n_critic == 0:
            self._generator_step(self.fake_batch_per_rank())  # hooks are off: no grad_sample, no accountant step

    def _critic_step(self, real: torch.Tensor, patients: torch.Tensor | None = None) -> None:  # type: ignore[override]
        opt = self.optimizers()[0]
        ddp = self.trainer.model if isinstance(self.trainer.model, nn.parallel.DistributedDataParallel) else None
        no_sync = ddp.no_sync() if (ddp is not None and self.private) else torch.enable_grad()
        with no_sync, self.toggled_optimizer(opt):  # the DP optimiser all-reduces the privatised gradient itself
            opt.zero_grad(set_to_none=True)  # also clears grad_sample / summed_grad
            fake = None if (self.private and self.fake_term == "joint") else self._fake_batch()
            fake_score = None
            if self.private:
                self._private_rows(real, patients)
                if fake is not None:
                    fake_score = self._public_fake_grad(fake)
            else:
                fake_score = self._nonprivate_grad(real, fake)
            opt.step()
            # zeros, not None: under DDP the private backward marked the critic "used" during no_sync, so the next
            # synced backward (the G-step) all-reduces the critic's grads and needs them defined
            opt.zero_grad(set_to_none=False)
        self.clip_critic_weights()
        self.step_counts["critic"] += 1
        if fake_score is not None:  # joint rows: the fakes are inside the private sum (|S| of them): nothing logged
            self.log("train/fake_score", fake_score, batch_size=self.fake_batch_per_rank())

    def _private_rows(self, real: torch.Tensor, patients: torch.Tensor | None) -> None:
        """grad_sample = the rows opacus clips: per patch (patch level) or per-patient mean (patient level) gradients of
        ℓᵢ = −D(realᵢ) [+ D(fakeᵢ) with fake_term "joint"] [+ λ·GPᵢ with the per-sample penalty].

        fakeᵢ (joint term, penalty partner) is one fresh fake per real row, drawn from noise independent of the data:
        coupling the fakes of the records two neighbouring batches share, adding or removing one record adds or
        removes one row (norm ≤ C), so the sensitivity stays C. Their number |S| is visible only through the noised sum.
        """
        params = [p for p in self.critic.parameters() if p.requires_grad]
        if real.shape[0] == 0:  # empty Poisson draw: a noise-only step, still counted (never skipped)
            for p in params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            return
        partner = None
        if self.fake_term == "joint" or self.gradient_penalty == "per_sample_func":
            with torch.no_grad():
                partner = self.generator(self.sample_noise(len(real), self.step_rng("critic_rows"))).to(real.dtype)
        if self.gradient_penalty == "per_sample_func":
            self._per_sample_penalty_grads(real, partner)
        else:
            self._hooked_rows(real, partner if self.fake_term == "joint" else None)
        if self.sampling["unit"] == "patient":
            if patients is None:
                raise ValueError("lightning_modules/dp_wgan.py: patient-level DP needs batches with 'patient' ids")
            _, segment = torch.unique(patients.to(real.device), return_inverse=True)
            counts = torch.bincount(segment).to(params[0].dtype)
            for p in params:
                rows = torch.zeros((len(counts), *p.shape), device=p.device, dtype=p.grad_sample.dtype)
                p.grad_sample = rows.index_add_(0, segment, p.grad_sample) / counts.view(-1, *[1] * p.dim())

    def _hooked_rows(self, real: torch.Tensor, joint_fake: torch.Tensor | None) -> None:
        """Per-sample rows by opacus' hooks: ∇(−D(realᵢ)), or with joint fakes ∇(−D(realᵢ)) + ∇D(fakeᵢ) from ONE
        forward/backward of [real; fake] (GroupNorm/InstanceNorm are per sample, so concatenating mixes nothing)."""
        x = (real if joint_fake is None else torch.cat([real, joint_fake])).detach().requires_grad_(True)
        sign = torch.ones(len(x), device=x.device)
        sign[: len(real)] = -1.0
        self.gsm.enable_hooks()
        try:
            with quiet_backward_hooks():  # loss_reduction="mean": grad_sample rows = ∇(sign_j·D(x_j))
                # differentiate w.r.t. the INPUT: the hooks still see every layer's output gradient, but autograd
                # skips the batch-summed weight gradients (p.grad), which DP-SGD replaces by the clipped sum anyway
                torch.autograd.grad((sign * self.critic(x).float()).mean(), [x])
        finally:
            self.gsm.disable_hooks()
        if joint_fake is not None:
            for p in self.critic.parameters():
                if p.requires_grad:
                    p.grad_sample = p.grad_sample[: len(real)] + p.grad_sample[len(real) :]

    def _per_sample_penalty_grads(self, real: torch.Tensor, partner: torch.Tensor) -> None:
        """DP-WGAN-GP: rows ∇θ[−D(xᵢ) + λ(‖∇ₓD(x̂ᵢ)‖ − 1)²] by torch.func (opacus hooks cannot do the double backward).

        The penalty touches real_i, so it is inside the clipped row. x̂ᵢ pairs real_i with partner i (mod its length:
        `_private_rows` passes one fresh fake per row); with fake_term "joint" the row also has +D(partnerᵢ).
        """
        joint = self.fake_term == "joint"
        params = {n: p.detach() for n, p in self.critic.named_parameters() if p.requires_grad}
        partner = partner.detach().to(real.dtype)[torch.arange(len(real), device=real.device) % len(partner)]
        eps = torch.rand(len(real), *[1] * (real.dim() - 1), generator=self.step_rng("penalty"), device=real.device)

        def score(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.critic, p, (x.unsqueeze(0),)).float().sum()

        def loss(p: dict[str, torch.Tensor], x: torch.Tensor, f: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
            g = torch.func.grad(score, argnums=1)(p, e * x + (1 - e) * f)
            fake_score = score(p, f) if joint else 0.0
            return -score(p, x) + fake_score + self.penalty_weight * (torch.sqrt((g.float() ** 2).sum() + 1e-12) - 1) ** 2

        rows = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0, 0), randomness="different")(params, real, partner, eps)
        for name, p in self.critic.named_parameters():
            if name in params:
                p.grad_sample = rows[name].to(p.dtype)

    def _fake_batch(self) -> torch.Tensor:
        with torch.no_grad():
            return self.generator(self.sample_noise(self.fake_batch_per_rank(), self.step_rng("critic")))

    def _public_fake_grad(self, fake: torch.Tensor) -> torch.Tensor:
        """p.public_grad = ∇ mean D(fake) (hooks off; fixed fake count), added by the optimiser after the noise."""
        params = [p for p in self.critic.parameters() if p.requires_grad]
        score = self.critic(fake).float().mean()
        with quiet_backward_hooks():
            grads = torch.autograd.grad(score, params)
        if self.fake_term == "public_batch_clipped":
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
            grads = tuple(g * min(1.0, self.max_grad_norm / (float(norm) + 1e-12)) for g in grads)
        for p, g in zip(params, grads):
            p.public_grad = g
        return score.detach()

    def _nonprivate_grad(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """σ = ∞ reference: the same step without clipping or noise (−mean D(real) + mean D(fake))."""
        fake_score = self.critic(fake).float().mean()
        loss = fake_score - (self.critic(real).float().mean() if real.shape[0] else 0.0)
        if self.gradient_penalty == "per_sample_func" and real.shape[0]:  # the same penalty, batch-averaged
            partner = fake[torch.arange(len(real), device=real.device) % len(fake)]
            eps = torch.rand(len(real), *[1] * (real.dim() - 1), generator=self.step_rng("penalty"), device=real.device)
            loss = loss + self.penalty_weight * gradient_penalty(self.critic, real, partner, eps.to(real.dtype), self.grad_scaler)
        self.manual_backward(loss)
        return fake_score.detach()
