"""Base LightningModule of the GANs (WGAN-GP, DCGAN, DP-WGAN), 2D (B, 2, H, W) and 3D (B, 2, H, W, D) alike.

What every GAN of the suite shares lives here, so the subclasses only write their losses:
- manual optimisation with two optimisers, `configure_optimizers` → `[critic_opt, generator_opt]`
  (index 0 = critic/discriminator, index 1 = generator; `self.optimizers()` returns them in that order);
- label encoding of real batches ({0,1} → tanh range) and decoding (threshold) of generated labels;
- training noise drawn from per-step seeded generators: a resumed run draws exactly the noise the
  uninterrupted run would have drawn (the global RNG is not in Lightning checkpoints);
- a fixed-noise buffer for sample grids, made from `sample_seed` alone (independent of the global RNG,
  saved in the checkpoint, so the grid is the same before and after a resume);
- checkpoints that reload from plain data: the networks are stored in the hyper-parameters as
  `{"class_path", "init_args"}` (what LightningCLI stores too), never pickled, and the concrete class is
  written to `checkpoint["gan_class"]` so `workflows.synthesize` knows which class to load; class paths read
  back are resolved only inside the suite's packages (`lightning_modules.checkpoints`);
- a check before the first step that the data's patch size is what the generator makes and the critic takes;
- optionally an exponential moving average of the generator's weights (`generator_ema`), which every sample
  (grids, evaluation, synthesis) is then drawn from: GAN weights oscillate from step to step, and the average
  smooths what one snapshot happens to draw (Yazıcı et al. 2019, "The unusual effectiveness of averaging in GAN
  training"; StyleGAN and BigGAN sample from one too).

Subclasses implement `training_step` and count their optimiser steps in `self.step_counts` ("critic",
"generator"), which seeds the noise and is saved with the checkpoint.
"""

from __future__ import annotations

import copy
import functools
import os
import zlib
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from lightning_modules.checkpoints import import_class

DEFAULT_THRESHOLD = {"symmetric": 0.0, "binary": 0.8}


def build_network(spec: nn.Module | dict[str, Any], name: str) -> nn.Module:
    """A network from a module or a `{"class_path", "init_args"}` dict (checkpoint hyper-parameters).

    The class path must lie in the packages a checkpoint may name (`lightning_modules.checkpoints`), checked
    before importing: these dicts come from checkpoints, and importing runs a module's top-level code.
    """
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, dict) and "class_path" in spec:
        cls = import_class(spec["class_path"], f"{name} spec", f"{name} class_path", base=nn.Module)
        return cls(**spec.get("init_args", {}))
    raise TypeError(
        f"lightning_modules/gan_base.py: {name} must be an nn.Module or a class_path dict, got {type(spec).__name__}"
        " (a checkpoint without a network spec loads with load_from_checkpoint(path, {name}=module))"
    )


def network_spec(module: nn.Module, name: str) -> dict[str, Any] | None:
    """`{"class_path", "init_args"}` from a network's `init_args` attribute; None (with a warning) without one."""
    init_args = getattr(module, "init_args", None)
    if not isinstance(init_args, dict):
        rank_zero_warn(
            f"{name} ({type(module).__name__}) has no `init_args` dict: the checkpoint cannot rebuild it; pass"
            f" {name}=... to load_from_checkpoint."
        )
        return None
    return {"class_path": f"{type(module).__module__}.{type(module).__qualname__}", "init_args": dict(init_args)}


def build_optimizer(spec: OptimizerCallable | dict[str, Any] | None) -> OptimizerCallable:
    """Optimiser factory; None → Adam(1e-4, β=(0.0, 0.9)), the WGAN-GP paper setting."""
    if spec is None:
        return functools.partial(torch.optim.Adam, lr=1e-4, betas=(0.0, 0.9))
    if isinstance(spec, dict):
        cls = import_class(spec.get("class_path"), "optimizer spec", "optimizer class_path", base=torch.optim.Optimizer)
        return functools.partial(cls, **spec.get("init_args", {}))
    return spec


def optimizer_spec(spec: Any) -> Any:
    """A picklable-as-data form of an optimiser callable: partial(Class, **kw) → class_path dict, else None."""
    if spec is None or isinstance(spec, dict):
        return spec
    if isinstance(spec, functools.partial) and isinstance(spec.func, type) and not spec.args:
        return {"class_path": f"{spec.func.__module__}.{spec.func.__qualname__}", "init_args": dict(spec.keywords)}
    return None  # lambdas etc.: the reloaded module falls back to the default optimiser


def record_specs(hparams: Any, nets: dict[str, Any], optimizer_keys: tuple[str, ...]) -> None:
    """Replace the networks and optimiser factories saved in `hparams` by their plain specs (never pickled)."""
    for key, net in nets.items():
        hparams[key] = net if isinstance(net, dict) else network_spec(net, key)
    for key in optimizer_keys:
        hparams[key] = optimizer_spec(hparams[key])


@torch.no_grad()
def _eval_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward in eval mode (BatchNorm/spectral-norm state untouched), in the net's device and dtype."""
    param = next(net.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    was_training = net.training
    net.eval()
    try:
        return net(x)
    finally:
        net.train(was_training)


def averaged_generator(generator: nn.Module, decay: float) -> AveragedModel:
    """EMA copy of the generator (torch's `AveragedModel`; buffers averaged too, so BatchNorm statistics follow).
    Frozen: no optimiser and no DDP gradient reduction ever sees it."""
    average = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    return average.requires_grad_(False)


def _size_settings(net: nn.Module, name: str) -> str:
    """The size settings of a network, as the config names them (e.g. `generator.init_args.out_size=32`)."""
    init_args = getattr(net, "init_args", None) or {}
    sizes = [f"--model.init_args.{name}.init_args.{k}={v}" for k, v in init_args.items()
             if "size" in k and k != "kernel_size"]
    return f"{name} {type(net).__name__}" + (f": {', '.join(sizes)}" if sizes else "")


def _built_by_cli() -> bool:
    """True while LightningCLI instantiates the module: its hparams are then class_path dicts already."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - older/newer Lightning
        return False
    return _given_hyperparameters.get() is not None


class GANModule(LightningModule):
    """Shared GAN machinery; see the module docstring. Subclasses write `training_step`.

    Args:
        generator: z (N, latent_dim) → (N, 2, H, W) or (N, 2, H, W, D) in [-1, 1] (channel 0 image, 1 label).
        critic: (N, 2, *spatial) → (N,) score/logit.
        generator_optimizer, critic_optimizer: optimiser factories (None: Adam 1e-4, β = (0.0, 0.9)).
        latent_dim: noise size (must match the generator's `latent_dim` attribute when it has one).
        label_encoding: "symmetric" maps the {0,1} label to {-1,+1}; "binary" keeps {0,1} (authors' code).
        label_threshold: generated label > threshold → 1; None → 0.0 (symmetric) / 0.8 (binary).
        n_sample_grid: fixed-noise samples shown by `callbacks.sample_grid.SampleGridCallback`.
        sample_seed: seed of that fixed noise.
        noise_seed: base seed of the training noise; None → the `seed_everything` seed (PL_GLOBAL_SEED) or 0.
        generator_ema: decay of an exponential moving average of the generator's weights, updated after every
            generator step and used for all sampling; None → sample from the trained weights (the papers).
    """

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        generator_optimizer: OptimizerCallable | None = None,
        critic_optimizer: OptimizerCallable | None = None,
        latent_dim: int = 128,
        label_encoding: Literal["symmetric", "binary"] = "symmetric",
        label_threshold: float | None = None,
        n_sample_grid: int = 16,
        sample_seed: int = 0,
        noise_seed: int | None = None,
        generator_ema: float | None = None,
    ) -> None:
        super().__init__()
        from_cli = _built_by_cli()
        # Networks are stored as specs, never pickled (a 43 M-parameter G would be copied into the hparams).
        self.save_hyperparameters(ignore=[] if from_cli else ["generator", "critic"])
        if label_encoding not in DEFAULT_THRESHOLD:
            raise ValueError(
                f"lightning_modules/gan_base.py: label_encoding must be 'symmetric' or 'binary', got {label_encoding!r}"
            )
        self.automatic_optimization = False
        self.generator = build_network(generator, "generator")
        self.critic = build_network(critic, "critic")
        g_latent = getattr(self.generator, "latent_dim", latent_dim)
        if g_latent != latent_dim:
            raise ValueError(
                f"lightning_modules/gan_base.py: latent_dim {latent_dim} != generator latent_dim {g_latent}"
            )
        if generator_ema is not None and not 0.0 < generator_ema < 1.0:
            raise ValueError(
                f"lightning_modules/gan_base.py: generator_ema must lie in (0, 1) or be None, got {generator_ema}"
            )
        self.generator_average = None if generator_ema is None else averaged_generator(self.generator, generator_ema)
        self._optimizer_factories = (build_optimizer(critic_optimizer), build_optimizer(generator_optimizer))
        if not from_cli:
            record_specs(self.hparams, {"generator": generator, "critic": critic},
                         ("generator_optimizer", "critic_optimizer"))  # fmt: skip
        threshold = DEFAULT_THRESHOLD[label_encoding] if label_threshold is None else float(label_threshold)
        self.hparams["label_threshold"] = threshold  # resolved, so checkpoints and manifests state it
        self._hparams_initial = copy.deepcopy(self._hparams)
        self.latent_dim = latent_dim
        self.label_encoding = label_encoding
        self.label_threshold: float = self.hparams["label_threshold"]
        noise = torch.randn(n_sample_grid, latent_dim, generator=torch.Generator().manual_seed(sample_seed))
        self.register_buffer("grid_noise", noise, persistent=True)
        self.step_counts: dict[str, int] = {"critic": 0, "generator": 0}

    # ----------------------------------------------------------------- optimisers and checkpoints
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """[critic optimiser, generator optimiser] — index 0 is the critic everywhere in the suite."""
        critic_factory, generator_factory = self._optimizer_factories
        return [critic_factory(self.critic.parameters()), generator_factory(self.generator.parameters())]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gan_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["gan_step_counts"] = dict(self.step_counts)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.step_counts = dict(checkpoint.get("gan_step_counts", {"critic": 0, "generator": 0}))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """One EMA update per generator step (a batch may hold none: n_critic > 1); the average's own counter
        resumes with the checkpoint, so a resumed run averages exactly as the uninterrupted one."""
        average = self.generator_average
        if average is not None and self.step_counts["generator"] > int(average.n_averaged):
            average.update_parameters(self.generator)

    @property
    def sampling_generator(self) -> nn.Module:
        """The network samples come from: the weight average once it holds a step, else the trained generator."""
        average = self.generator_average
        return self.generator if average is None or int(average.n_averaged) == 0 else average.module

    # ----------------------------------------------------------------- data/model agreement
    def on_fit_start(self) -> None:
        self.check_patch_size()

    def check_patch_size(self) -> None:
        """Before the first step: the generator's output and the critic's input have the datamodule's patch size.

        A mismatch would otherwise surface at the first step as a `torch.cat` size error naming no setting.
        One forward of each network in eval mode, without gradients or random numbers (resumed runs unchanged).
        """
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        settings = getattr(datamodule, "patch_settings", None)
        if settings is None:
            return
        patch = [int(s) for s in settings.patch_size]
        data = f"{type(datamodule).__name__} patch_size {patch} (--data.init_args.patch_size)"
        z = torch.zeros(1, self.latent_dim)
        fake = _eval_forward(self.generator, z)
        if list(fake.shape[2:]) != patch:
            raise ValueError(f"lightning_modules/gan_base.py: the data's {data} differs from the generator's output"
                             f" {list(fake.shape[2:])} ({_size_settings(self.generator, 'generator')}); set them equal")
        critic = _size_settings(self.critic, "critic")
        try:
            scores = _eval_forward(self.critic, torch.zeros(2, fake.shape[1], *patch))
        except RuntimeError as err:
            raise ValueError(f"lightning_modules/gan_base.py: the critic does not accept the data's {data}"
                             f" ({critic}): {str(err).splitlines()[0]}") from err
        if scores.numel() != 2:
            raise ValueError(f"lightning_modules/gan_base.py: the critic gives {tuple(scores.shape)} scores for 2"
                             f" patches of the data's {data} ({critic}); expected one per patch")

    @property
    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """The precision plugin's GradScaler under "16-mixed" (None for 32/bf16 or outside a Trainer)."""
        trainer = self._trainer
        return getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None

    # ----------------------------------------------------------------- noise
    def step_rng(self, phase: str) -> torch.Generator:
        """Generator for one optimiser step: seeded by (noise seed, rank, step counts, phase).

        Stateless, so a resumed run repeats the uninterrupted run's noise; the rank makes DDP ranks differ.
        """
        seed = self.hparams.get("noise_seed")
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        rank = self.global_rank if self._trainer is not None else 0
        counts = self.step_counts
        entropy = [seed & 0xFFFFFFFF, rank, counts["critic"], counts["generator"], zlib.crc32(phase.encode())]
        state = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)
        return torch.Generator(device=self.device).manual_seed(state)

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else self.device
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    # ----------------------------------------------------------------- labels
    def encode_real(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """{"image" [-1,1], "label" {0,1}} of shape (B,1,H,W) or (B,1,H,W,D) → (B, 2, …) in the generator's range."""
        image, label = batch["image"], batch["label"].to(batch["image"].dtype)
        if image.ndim not in (4, 5) or image.shape[1] != 1 or label.shape != image.shape:
            raise ValueError(
                f"lightning_modules/gan_base.py: expected image and label of shape (B,1,H,W) or (B,1,H,W,D), got"
                f" {tuple(image.shape)} and {tuple(label.shape)}"
            )
        if self.label_encoding == "symmetric":
            label = label * 2 - 1
        return torch.cat([image, label], dim=1)

    def decode_label(self, label: torch.Tensor) -> torch.Tensor:
        return (label > self.label_threshold).to(torch.uint8)

    # ----------------------------------------------------------------- evaluation loops
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Nothing to compute per batch: defining the step makes Lightning run the validation loop, whose
        real batches reach `callbacks.gan_evaluation.GANEvaluationCallback` via `on_validation_batch_end`."""

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """As `validation_step`: the test loaders' real patches (train, held-out) go to the evaluation callback."""

    # ----------------------------------------------------------------- sampling
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """Raw (n_sample_grid, 2, *spatial) output for the fixed noise, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self.sampling_generator(self.grid_noise).float()
        finally:
            self.train(was_training)

    @torch.no_grad()
    def generate_batches(
        self, n: int, batch_size: int = 256, seed: int | None = None, progress: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """n pairs, one batch at a time: images (b,1,*spatial) float32 in [-1,1], labels (b,1,*spatial) uint8.

        Streaming: memory is bounded by `batch_size` whatever n (a paper-scale 3D set is 11,750 × 5 MiB), apart
        from the noise, drawn at once (512 B per pair at latent 128) from a CPU generator seeded with `seed`
        (None: fresh entropy), so the noise depends on the seed only, not on `batch_size` or the device (the pairs
        then agree up to the convs' rounding, which may depend on the batch: ≈1e-8 for 3D on a CPU). Eval mode
        (BN running statistics), no grad, from `sampling_generator`; the module's train/eval state is restored
        when the iteration ends.
        """
        if n < 1 or batch_size < 1:
            raise ValueError(f"lightning_modules/gan_base.py: n and batch_size must be ≥ 1, got {n}, {batch_size}")
        rng = torch.Generator()
        if seed is None:
            rng.seed()
        else:
            rng.manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=rng)
        was_training, generator = self.training, self.sampling_generator
        self.eval()
        try:
            for start in tqdm(range(0, n, batch_size), desc="generating", disable=not progress, unit="batch"):
                out = generator(z[start : start + batch_size].to(self.device)).float().cpu()
                yield out[:, :1].contiguous(), self.decode_label(out[:, 1:2])
        finally:
            self.train(was_training)

    def generate(
        self, n: int, batch_size: int = 256, seed: int | None = None, progress: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All n pairs of `generate_batches` in memory: images (n,1,*spatial) float32, labels (n,1,*spatial) uint8.

        For large n (3D) stream instead: `workflows.synthesize` writes `generate_batches` to disk batch by batch.
        """
        images = labels = torch.empty(0)
        pos = 0
        for image, label in self.generate_batches(n, batch_size, seed, progress):
            if pos == 0:  # preallocated: 41,000 96×96 pairs are 1.9 GB, no second copy from a cat
                images = torch.empty((n, *image.shape[1:]), dtype=torch.float32)
                labels = torch.empty((n, *label.shape[1:]), dtype=torch.uint8)
            images[pos : pos + len(image)], labels[pos : pos + len(label)] = image, label
            pos += len(image)
        return images, labels
