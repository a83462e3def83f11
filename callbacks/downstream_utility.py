"""Downstream utility of a GAN while it trains: DSC on real validation patches of a small U-Net trained on
the GAN's own samples (the DP paper chose its GAN epoch this way, SPEC §3.3).

Every `every_n_epochs` training epochs: `n_samples` pairs from `pl_module.generate(seed=seed)` (fixed
noise, so epochs are compared on equal terms), a small half U-Net (2D or 3D, as the GAN's samples) trained on
them for `max_steps` Adam steps with the paper's soft-Dice loss and per-patch z-score (a plain torch loop on the
GAN's device: no nested Trainer, which would fight the outer one over loggers, callbacks and the DDP process
group), then the DSC pooled over all voxels of the real validation patches (the image and label of the GAN
datamodule's `val_dataloader()`, or of a patch store given as `val_store`), as `SegmentationModule` pools `val/dsc`.
Logged: `val/utility_dsc` and `val/utility_seconds` (also printed), at the end of the validation epoch when
the GAN runs a validation loop (so a ModelCheckpoint that monitors it sees it), else at the training epoch's end.

DDP: rank zero computes (the other ranks would only repeat the same seeded work) and broadcasts the two
numbers with `trainer.strategy.broadcast`, which every rank calls, so all ranks log the same value and no
rank waits on a collective that another skips. The GAN runs through the bare LightningModule (not the DDP
wrapper) in eval mode, so rank zero's extra forward passes trigger no gradient sync or SyncBN collective.
Select the GAN epoch with `ModelCheckpoint(monitor="val/utility_dsc", mode="max", every_n_epochs=K)` (same K).

The GAN is left as it was: generation is no-grad in eval mode (BN running statistics are not updated), the
train/eval flag of every submodule is restored, its optimisers are not touched, and the global torch RNG
(CPU and CUDA) is forked, so the U-Net's initialisation and dropout draw nothing from the GAN's stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from monai.losses import DiceLoss
from torch import nn
from tqdm.auto import tqdm

from lightning_modules.input_norm import zscore
from networks.unet2d import HalfUNet2D


def pooled_dsc(tp: float, fp: float, fn: float) -> float:
    """2TP / (2TP + FP + FN); 1 when both masks are empty (BinaryF1Score(zero_division=1) in val/dsc)."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


class DownstreamUtilityCallback(Callback):
    """Args:
        every_n_epochs: run after every K-th training epoch.
        n_samples: synthetic pairs per evaluation.
        unet_features: filters per level of the small half U-Net (2**(len-1) must divide the patch size).
        max_steps, batch_size, lr: its fixed training budget (Adam).
        seed: noise seed of the samples and seed of the U-Net's initialisation and batch order.
        val_store: a patch store of real validation patches to use instead of the datamodule's val loader.
        max_val_patches: stop validating after this many patches (None: all).
        threshold: probability threshold of the U-Net's masks.
        generate_batch_size: generator batch size (memory only).
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        n_samples: int = 2000,
        unet_features: list[int] = [8, 16, 32],  # noqa: B006 - read only
        max_steps: int = 200,
        batch_size: int = 32,
        lr: float = 1e-3,
        seed: int = 0,
        val_store: str | None = None,
        max_val_patches: int | None = None,
        threshold: float = 0.5,
        generate_batch_size: int = 256,
    ) -> None:
        if every_n_epochs < 1 or n_samples < 1 or max_steps < 1 or batch_size < 1:
            raise ValueError("callbacks/downstream_utility.py: every_n_epochs, n_samples, max_steps and batch_size "
                             f"must be ≥ 1, got {every_n_epochs}, {n_samples}, {max_steps}, {batch_size}")
        self.every_n_epochs, self.n_samples = every_n_epochs, n_samples
        self.unet_features = [int(f) for f in unet_features]
        self.max_steps, self.batch_size, self.lr, self.seed = max_steps, batch_size, lr, seed
        self.val_store, self.max_val_patches = val_store, max_val_patches
        self.threshold, self.generate_batch_size = threshold, generate_batch_size
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ data
    def val_batches(self, trainer: Trainer) -> Iterable[dict[str, torch.Tensor]]:
        if self.val_store is not None:
            from torch.utils.data import DataLoader

            from datamodules.base import PatchDataset

            return DataLoader(PatchDataset(self.val_store), batch_size=64)
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "val_dataloader"):
            raise ValueError("callbacks/downstream_utility.py: no datamodule with val_dataloader(); set val_store")
        return dm.val_dataloader()

    def _train_batches(self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(images)
        while True:
            order = torch.randperm(n, generator=gen)
            for start in range(0, n - min(self.batch_size, n) + 1, min(self.batch_size, n)):
                idx = order[start : start + self.batch_size]
                yield images[idx], labels[idx]

    # ------------------------------------------------------------------ the evaluation
    def utility_dsc(self, pl_module: LightningModule, val_batches: Iterable[dict[str, torch.Tensor]]) -> float:
        """Samples, trains the small U-Net, returns its pooled validation DSC; the GAN is left untouched."""
        device = pl_module.device
        modes = {name: m.training for name, m in pl_module.named_modules()}
        fork_devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=fork_devices):
                images, labels = pl_module.generate(self.n_samples, batch_size=self.generate_batch_size,
                                                    seed=self.seed)
                return self._fit_and_validate(images, labels.float(), val_batches, device)
        finally:
            for name, m in pl_module.named_modules():
                m.training = modes[name]

    def _fit_and_validate(self, images: torch.Tensor, labels: torch.Tensor,
                          val_batches: Iterable[dict[str, torch.Tensor]], device: torch.device) -> float:
        return self.validate(self.train_unet(images, labels, device), val_batches, device)

    def train_unet(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> nn.Module:
        """The small half U-Net (2D or 3D, as the samples: (N, 1, H, W[, D])) after `max_steps` Adam steps."""
        torch.manual_seed(self.seed)  # inside fork_rng: the U-Net's init and dropout only
        net = HalfUNet2D(spatial_dims=images.ndim - 2, features=self.unet_features, dropout=0.0).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        loss_fn = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, batch=True)
        batches = self._train_batches(images, labels, torch.Generator().manual_seed(self.seed))
        net.train()
        with torch.enable_grad():
            for _ in tqdm(range(self.max_steps), desc="utility U-Net", leave=False):
                x, y = next(batches)
                loss = loss_fn(net(zscore(x.to(device))), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return net.eval()

    @torch.no_grad()
    def validate(self, net: nn.Module, val_batches: Iterable[dict[str, torch.Tensor]], device: torch.device) -> float:
        """DSC pooled over every voxel of the (first `max_val_patches`) real validation patches."""
        tp = fp = fn = 0.0
        seen = 0
        for batch in val_batches:
            x, y = batch["image"].to(device).float(), batch["label"].to(device) > 0.5
            if self.max_val_patches is not None:
                x, y = x[: self.max_val_patches - seen], y[: self.max_val_patches - seen]
            pred = torch.sigmoid(net(zscore(x))) >= self.threshold
            tp += float((pred & y).sum())
            fp += float((pred & ~y).sum())
            fn += float((~pred & y).sum())
            seen += len(x)
            if self.max_val_patches is not None and seen >= self.max_val_patches:
                break
        if seen == 0:
            raise ValueError("callbacks/downstream_utility.py: the validation loader gave no patches")
        return pooled_dsc(tp, fp, fn)

    # ------------------------------------------------------------------ the hooks
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """With a validation loop, log with the other val metrics: ModelCheckpoint reads them at validation end."""
        if not trainer.sanity_checking:
            self._run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Without a validation loop (or in an epoch where it did not run), here instead."""
        self._run(trainer, pl_module)

    def _run(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs or (self.history and self.history[-1]["epoch"] == epoch):
            return
        result: Any = None
        if trainer.is_global_zero:
            started = time.perf_counter()
            dsc = self.utility_dsc(pl_module, self.val_batches(trainer))
            result = (dsc, time.perf_counter() - started)
            print(f"epoch {epoch}: val/utility_dsc {dsc:.4f} ({result[1]:.1f} s)", flush=True)
        dsc, seconds = trainer.strategy.broadcast(result, src=0)
        self.history.append({"epoch": epoch, "dsc": dsc, "seconds": seconds})
        for key, value in (("val/utility_dsc", dsc), ("val/utility_seconds", seconds)):
            pl_module.log(key, float(value), on_step=False, on_epoch=True, sync_dist=False)
