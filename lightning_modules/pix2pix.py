"""Pix2Pix: DSC-MRI frames → one perfusion map, pix2pix or temp-pix2pix (thesis ch. 7, SPEC §3.4).

One module serves both architectures: the generator is injected (`networks.pix2pix.UnetGenerator`, the 80 frames as
channels, or `TemporalUnetGenerator`), the discriminator is the PatchGAN on cat(frames, map). Manual optimisation,
one discriminator step then one generator step per batch, with one generator forward shared by both (pix2pix):
- D: 0.5·[BCEwL(D(x, y), 1) + BCEwL(D(x, G(x).detach()), 0)], real and fake in separate forwards (pix2pix);
- G, D frozen (`toggled_optimizer`: no D gradient is left): BCEwL(D(x, G(x)), 1) + λ·|G(x) − y|₁;
  λ = 1 as the thesis (pix2pix used 100, lightning-bolts 200: set `lambda_l1`).
Adam 1e-4, β = (0.5, 0.999) for both unless optimisers are injected.

Units: the data are min–max scaled to [−1, 1] with the training set's global range (`datamodules.perfusion_data`).
The target map's range (lo, hi) is copied from the DataModule's `target_scaler` at fit start into buffers, so a
checkpoint carries it and test metrics are in physical units without the training data; a test DataModule whose
scaler differs triggers a warning (the checkpoint's range is used: it is what the network was trained to invert).

Evaluation: BatchNorm in eval mode (running statistics) by default, recorded in the hyper-parameters;
`eval_batchnorm="batch"` uses the batch's statistics as the original pix2pix test script did (running statistics
untouched). Validation logs `val/l1` (normalised, for model selection) and per-patient means; test logs
`test/<comparison>/<region>/<metric>_mean|_sd` (metrics.perfusion: MAE, NRMSE, SSIM, PSNR) for
"norm" (prediction vs target in [−1, 1], data range 2, the thesis' numbers), "pred_vs_pipeline", "pred_vs_truth" and
"pipeline_vs_truth" (physical units, data range = the target's training range), whole slice and brain mask, and
writes per-slice / per-patient CSVs, summary.json and example slices (example.npz) to `report_dir`.

Fine-tuning (steno-occlusive from acute-like, 50 epochs): `pretrained` names a Pix2Pix checkpoint whose generator
and discriminator weights are loaded at construction, strictly.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_modules.gan_base import _built_by_cli, build_network, build_optimizer, record_specs
from metrics.perfusion import UNDEFINED_POLICY, PerfusionScores

ADAM = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-4, "betas": (0.5, 0.999)}}


def net_input_frames(generator: nn.Module) -> int | None:
    """Frames the generator takes: `frames` (temp-pix2pix) or input channels (pix2pix)."""
    args = getattr(generator, "init_args", {}) or {}
    return args.get("frames", args.get("in_channels"))


def load_pix2pix_weights(module: nn.Module, path: str) -> None:
    """Generator and discriminator weights of a Pix2Pix checkpoint, strictly (errors name the file)."""
    from lightning_modules.checkpoints import load_checkpoint_dict

    state = load_checkpoint_dict(Path(path), "pretrained Pix2Pix checkpoint").get("state_dict", {})
    for name in ("generator", "discriminator"):
        sub = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        try:
            getattr(module, name).load_state_dict(sub, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: its {name} weights do not fit the configured {name} (same architecture and "
                             f"widths needed).\n{str(err).splitlines()[0]}") from err  # fmt: skip


class Pix2Pix(LightningModule):
    """pix2pix / temp-pix2pix; see the module docstring.

    Args:
        generator: (B, T, H, W) in [−1, 1] → (B, 1, H, W) in [−1, 1].
        discriminator: (B, T + 1, H, W) → (B, 1, h, w) logits (or probabilities with the authors' sigmoid).
        generator_optimizer, discriminator_optimizer: optimiser factories (None: Adam 1e-4, β = (0.5, 0.999)).
        lambda_l1: weight of the L1 term (thesis 1; pix2pix 100).
        eval_batchnorm: "running" statistics (eval mode) or the "batch"'s statistics at validation/test.
        pretrained: Pix2Pix checkpoint whose G and D weights initialise this module (fine-tuning).
        report_dir: folder of the test CSVs/JSON/examples; default the trainer's log dir.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        generator_optimizer: OptimizerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
        lambda_l1: float = 1.0,
        eval_batchnorm: Literal["running", "batch"] = "running",
        pretrained: str | None = None,
        report_dir: str | None = None,
    ) -> None:
        super().__init__()
        from_cli = _built_by_cli()
        self.save_hyperparameters(ignore=[] if from_cli else ["generator", "discriminator"])
        if lambda_l1 < 0 or eval_batchnorm not in ("running", "batch"):
            raise ValueError(f"lightning_modules/pix2pix.py: need lambda_l1 ≥ 0 and eval_batchnorm 'running' or "
                             f"'batch', got {lambda_l1}, {eval_batchnorm!r}")  # fmt: skip
        self.automatic_optimization = False
        self.generator = build_network(generator, "generator")
        self.discriminator = build_network(discriminator, "discriminator")
        self._check_widths()
        self._factories = (build_optimizer(discriminator_optimizer or ADAM), build_optimizer(generator_optimizer or ADAM))
        if not from_cli:
            record_specs(self.hparams, {"generator": generator, "discriminator": discriminator},
                         ("generator_optimizer", "discriminator_optimizer"))  # fmt: skip
        self._hparams_initial = copy.deepcopy(self._hparams)  # loggers record the specs, not the modules
        self.lambda_l1, self.eval_batchnorm, self.report_dir = float(lambda_l1), eval_batchnorm, report_dir
        self.register_buffer("target_lo", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("target_hi", torch.tensor(1.0, dtype=torch.float64))
        self.scores = PerfusionScores()
        self.examples: dict[str, dict[str, np.ndarray]] = {}
        if pretrained:
            load_pix2pix_weights(self, pretrained)

    def _check_widths(self) -> None:
        frames = net_input_frames(self.generator)
        d_in = (getattr(self.discriminator, "init_args", {}) or {}).get("in_channels")
        if frames is not None and d_in is not None and d_in != frames + 1:
            raise ValueError(f"lightning_modules/pix2pix.py: the discriminator sees cat(frames, map), so its in_channels"
                             f" must be {frames} + 1 = {frames + 1}, got {d_in}")  # fmt: skip

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """[discriminator optimiser, generator optimiser] (index 0 is the critic/discriminator, as in the suite)."""
        d_factory, g_factory = self._factories
        return [d_factory(self.discriminator.parameters()), g_factory(self.generator.parameters())]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.generator(frames)

    # ----------------------------------------------------------------- units
    def setup(self, stage: str) -> None:
        scaler = getattr(getattr(self._trainer, "datamodule", None), "target_scaler", None)
        if scaler is None:
            return
        if stage == "fit":
            self.target_lo.fill_(float(scaler.lo))
            self.target_hi.fill_(float(scaler.hi))
        elif (float(scaler.lo), float(scaler.hi)) != (self.target_lo.item(), self.target_hi.item()):
            self._data_range_warning = (float(scaler.lo), float(scaler.hi))

    def on_test_start(self) -> None:
        seen = getattr(self, "_data_range_warning", None)
        if seen is not None and seen != (self.target_lo.item(), self.target_hi.item()):
            rank_zero_warn(f"lightning_modules/pix2pix.py: the DataModule's target range {seen} differs from the"
                           f" checkpoint's ({self.target_lo.item()}, {self.target_hi.item()}); metrics use the"
                           " checkpoint's (what the network was trained on)")  # fmt: skip

    @property
    def target_span(self) -> float:
        lo, hi = self.target_lo.item(), self.target_hi.item()
        return hi - lo if hi > lo else 1.0

    def to_physical(self, x: torch.Tensor) -> torch.Tensor:
        """[−1, 1] → physical units of the target map (the DataModule's `MinMaxScaler.to_physical`)."""
        return (x.double() + 1.0) * (self.target_span / 2.0) + self.target_lo.item()

    def on_fit_start(self) -> None:
        frames = getattr(getattr(self._trainer, "datamodule", None), "frames", None)
        wanted = net_input_frames(self.generator)
        if frames is not None and wanted is not None and frames != wanted:
            raise ValueError(f"lightning_modules/pix2pix.py: the data give {frames} frames (--data.init_args.frames)"
                             f" but the generator takes {wanted}; set them equal (the paper: 80)")  # fmt: skip

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        frames, target = batch["frames"], batch["target"]
        fake = self.generator(frames)
        self._discriminator_step(frames, target, fake.detach())
        self._generator_step(frames, target, fake)

    def _discriminate(self, frames: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        return self.discriminator(torch.cat([frames, maps.to(frames.dtype)], 1)).float()

    def _discriminator_step(self, frames: torch.Tensor, target: torch.Tensor, fake: torch.Tensor) -> None:
        opt = self.optimizers()[0]
        with self.toggled_optimizer(opt):
            logit_real, logit_fake = self._discriminate(frames, target), self._discriminate(frames, fake)
            loss = 0.5 * (F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
                          + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake)))  # fmt: skip
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()  # frees D's gradients before the generator phase
        self.log("train/d_loss", loss.detach(), batch_size=len(frames), prog_bar=True)

    def _generator_step(self, frames: torch.Tensor, target: torch.Tensor, fake: torch.Tensor) -> None:
        opt = self.optimizers()[1]
        with self.toggled_optimizer(opt):  # D parameters: requires_grad False, so D gets no gradient here
            logit = self._discriminate(frames, fake)
            adversarial = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
            l1 = F.l1_loss(fake.float(), target.float())
            loss = adversarial + self.lambda_l1 * l1
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()
        self.log_dict({"train/g_loss": loss.detach(), "train/g_adversarial": adversarial.detach(),
                       "train/l1": l1.detach()}, batch_size=len(frames), prog_bar=True)  # fmt: skip

    # ----------------------------------------------------------------- evaluation
    @contextlib.contextmanager
    def _batchnorm_mode(self) -> Iterator[None]:
        """With eval_batchnorm "batch": BN layers use the batch's statistics; momentum 0 and the restored counter
        leave the running statistics and the state dict as they were."""
        if self.eval_batchnorm == "running":
            yield
            return
        norms = [m for m in self.generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.training, m.momentum, m.num_batches_tracked.clone()) for m in norms]
        for m in norms:
            m.train()
            m.momentum = 0.0
        try:
            yield
        finally:
            for m, (training, momentum, tracked) in zip(norms, saved):
                m.train(training)
                m.momentum = momentum
                m.num_batches_tracked.copy_(tracked)

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> torch.Tensor:
        """Predicted maps (B, 1, H, W) in physical units."""
        with self._batchnorm_mode():
            return self.to_physical(self.generator(batch["frames"])).float()

    def _score_batch(self, batch: dict[str, Any], physical: bool) -> torch.Tensor:
        with self._batchnorm_mode():
            pred = self.generator(batch["frames"]).float()
        mask, patients, slices = batch["mask"], list(batch["patient"]), [int(s) for s in batch["slice"]]
        self.scores.add("norm", pred, batch["target"], 2.0, mask, patients, slices)
        if physical:
            phys, span = self.to_physical(pred), self.target_span
            self.scores.add("pred_vs_pipeline", phys, batch["pipeline"], span, mask, patients, slices)
            truth = batch["truth"]
            if torch.isfinite(truth).all():  # real cohorts have no truth (NaN maps)
                self.scores.add("pred_vs_truth", phys, truth, span, mask, patients, slices)
                self.scores.add("pipeline_vs_truth", batch["pipeline"], truth, span, mask, patients, slices)
            self._keep_example(batch, phys)
        return pred

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self._score_batch(batch, physical=True)
        self.log("val/l1", F.l1_loss(pred, batch["target"].float()), batch_size=len(pred), prog_bar=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score_batch(batch, physical=True)

    def on_validation_epoch_start(self) -> None:
        self.scores, self.examples = PerfusionScores(), {}

    on_test_epoch_start = on_validation_epoch_start

    def _gathered_summary(self) -> dict[str, float]:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, self.scores.rows)
            for rows in parts:
                self.scores.merge(rows)
        return self.scores.summary()

    def _log_summary(self, stage: str) -> dict[str, float]:
        summary = self._gathered_summary()
        logged = {f"{stage}/{k}": v for k, v in summary.items()
                  if k.endswith(("_mean", "_sd")) and math.isfinite(v)}  # undefined ones: summary.json only
        self.log_dict(logged, sync_dist=False, rank_zero_only=True)
        return summary

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_summary("val")

    def on_test_epoch_end(self) -> None:
        summary = self._log_summary("test")
        if self.trainer.is_global_zero:
            out = Path(self.report_dir or self.trainer.log_dir or ".")
            self.scores.write(out, {**self.report_info(), "summary": summary})
            self._write_examples(out / "example.npz")

    def _write_examples(self, path: Path) -> None:
        """example.npz: per test patient (this rank's), input frames and maps of its most-brain slice."""
        arrays = {f"{p}/{k}": np.asarray(v) for p, ex in self.examples.items() for k, v in ex.items()}
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)

    def _keep_example(self, batch: dict[str, Any], phys: torch.Tensor) -> None:
        """Per patient, the slice with most brain (for the comparison figure): its maps and four input frames,
        the first (baseline), the bolus peak (lowest mean brain signal), 10 frames later and the last."""
        frames = batch["frames"]
        for i, patient in enumerate(batch["patient"]):
            area = int(batch["mask"][i].sum())
            if area <= self.examples.get(patient, {}).get("area", -1):
                continue
            brain = batch["mask"][i, 0]
            peak = int(frames[i][:, brain].mean(1).argmin()) if area else frames.shape[1] // 2
            picks = np.array([0, peak, min(peak + 10, frames.shape[1] - 1), frames.shape[1] - 1])
            self.examples[patient] = {
                "area": area, "slice": int(batch["slice"][i]), "frame_index": picks,
                "frames": frames[i, picks].float().cpu().numpy(), "pred": phys[i, 0].float().cpu().numpy(),
                **{k: batch[k][i, 0].float().cpu().numpy() for k in ("pipeline", "truth", "mask")}}  # fmt: skip

    def report_info(self) -> dict[str, Any]:
        """What a test report states about units and policies."""
        return {"generator": type(self.generator).__name__, "target_range": [self.target_lo.item(), self.target_hi.item()],
                "lambda_l1": self.lambda_l1, "eval_batchnorm": self.eval_batchnorm, "undefined_policy": UNDEFINED_POLICY,
                "data_range": {"norm": 2.0, "physical": self.target_span}}  # fmt: skip

    def manifest_extras(self) -> dict[str, Any]:
        return {"pix2pix": self.report_info()}
