"""Judging the GAN while it trains (`val/…` every K epochs) and on a checkpoint (`tofgan test` → report).

Validation: real patches come from the validation loop (`GANModule.validation_step` is empty; this callback
reads the batches), a seeded uniform subset of at most `max_real` of them, collected once (the real val set
does not change) together with its features, Fréchet statistics and label measures. Each evaluation
generates `n_samples` pairs from the fixed `sample_seed` (same noise every time: differences come from the
generator only) and logs `val/fid`, `val/prd_auc`, `val/prd_f8`, `val/prd_f1_8`, `val/ssim_synthetic`,
`val/ssim_real`, `val/label_*` and `val/eval_seconds`; PRD and the real-vs-synthetic embedding go to
`<run>/evaluation/` as PNG (and to W&B via `log_image`), every number also to `evaluation/val_metrics.jsonl`.

Test (`tofgan test --ckpt_path gan.ckpt` with the GAN datamodule): its test loaders are [train patches,
held-out test-patient patches]; the full report (`workflows.evaluate_gan`) is written to `report_dir`.

DDP: every rank collects its share of the real batches; they are gathered, rank zero computes, and the
scalars are broadcast, so every rank logs the same values (`rank_zero_only=False`; `sync_dist=True` then
averages identical values, silencing Lightning's epoch-level warning): `ModelCheckpoint(monitor="val/fid",
mode="min")` works on all ranks. Keep an evaluation shorter than the process-group
timeout (30 min by default): the other ranks wait in the broadcast meanwhile.

Model selection by any logged key: `ModelCheckpoint(monitor="val/fid", mode="min", every_n_epochs=K)` with K
= `every_n_epochs` (on other epochs the monitor would hold the last evaluation's value), or after training
`workflows.select_checkpoint.select_checkpoint(run_dir, "min:val/fid")` (reads metrics.csv, only evaluated
epochs). The extractor is an attribute of this callback, never of the LightningModule: it is not saved in
GAN checkpoints, and this callback keeps no checkpoint state.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks.gan_evaluation_scores import (EvalConfig, PatchReservoir, RealReference, Timer, gather_patches,
                                             score_synthetic, validation_figures)
from callbacks.run_manifest import run_dir
from lightning_modules.checkpoints import load_checkpoint_dict
from networks.feature_extractors import FeatureExtractor, sha256_file
from workflows.evaluate_gan import jsonable, test_report, write_report


class GANEvaluationCallback(Callback):
    """FID / PRD / SSIM diversity / label realism during GAN training, and the full report at test time.

    Args:
        extractor: feature network for FID, PRD and the embedding (any `FeatureExtractor`).
        extractor_checkpoint: shortcut: a segmentation checkpoint → `workflows.domain_extractor.domain_extractor`.
            Neither given: FID, PRD and the embedding are skipped (one warning); SSIM and label realism remain.
        every_n_epochs: evaluate at validation ends of epochs E with (E + 1) % every_n_epochs == 0.
        n_samples / max_real: synthetic samples and (seeded subset of) real validation patches per evaluation.
        test_n_samples / test_max_real: the same at test time (real cap per set: train and held-out).
        sample_seed: noise seed of the synthetic set (fixed across evaluations).
        seed: seed of subsets, PRD clustering, SSIM pairs and the embedding.
        prd_num_clusters / prd_num_runs / prd_n_init: PRD at test (reference: 20 / 10 / 10);
        val_prd_num_runs / val_prd_n_init: cheaper PRD during training (clusters as at test).
        ssim_pairs: random pairs per set for the pairwise SSIM.
        embedding: "tsne" (exact, O(N²)), "pca" or "none"; *_embedding_max_per_set: points per set.
        label_spacing: patch voxel size (mm) for radii; None → the datamodule's `patch_spacing()` or voxels.
        log_figures: save/log PRD and embedding figures at validation (the test report always has them).
        report_dir: test report folder; None → `<run>/gan_evaluation`.
    """

    def __init__(
        self,
        extractor: FeatureExtractor | None = None,
        extractor_checkpoint: str | None = None,
        every_n_epochs: int = 1,
        n_samples: int = 1000,
        max_real: int = 1000,
        test_n_samples: int = 2000,
        test_max_real: int = 2000,
        sample_seed: int = 1234,
        seed: int = 0,
        batch_size: int = 256,
        prd_num_clusters: int = 20,
        prd_num_runs: int = 10,
        prd_n_init: int = 10,
        val_prd_num_runs: int = 3,
        val_prd_n_init: int = 2,
        ssim_pairs: int = 500,
        embedding: Literal["tsne", "pca", "none"] = "tsne",
        val_embedding_max_per_set: int = 200,
        test_embedding_max_per_set: int = 500,
        label_spacing: list[float] | None = None,
        log_figures: bool = True,
        report_dir: str | None = None,
        progress: bool = False,
    ) -> None:
        if extractor is not None and extractor_checkpoint is not None:
            raise ValueError("GANEvaluationCallback: give extractor or extractor_checkpoint, not both")
        if min(every_n_epochs, n_samples, max_real, test_n_samples, test_max_real) < 1 or min(n_samples, max_real) < 2:
            raise ValueError("GANEvaluationCallback: every_n_epochs ≥ 1 and sample counts ≥ 2 required")
        self.extractor = extractor
        self.extractor_checkpoint = extractor_checkpoint
        self.every_n_epochs, self.sample_seed, self.seed = every_n_epochs, sample_seed, seed
        self.n_samples, self.max_real = n_samples, max_real
        self.test_n_samples, self.test_max_real = test_n_samples, test_max_real
        self.label_spacing, self.log_figures, self.report_dir = label_spacing, log_figures, report_dir
        common = dict(prd_num_clusters=prd_num_clusters, ssim_pairs=ssim_pairs, embedding=embedding,
                      batch_size=batch_size, seed=seed, progress=progress)
        self.val_cfg = EvalConfig(prd_num_runs=val_prd_num_runs, prd_n_init=val_prd_n_init,
                                  embedding_max_per_set=val_embedding_max_per_set, **common)  # type: ignore[arg-type]
        self.test_cfg = EvalConfig(prd_num_runs=prd_num_runs, prd_n_init=prd_n_init,
                                   embedding_max_per_set=test_embedding_max_per_set, **common)  # type: ignore[arg-type]
        self._warned = False
        self._val_reservoir: PatchReservoir | None = None
        self._val_real: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val_ref: RealReference | None = None
        self._test_reservoirs: dict[int, PatchReservoir] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "generate"):
            raise TypeError(f"GANEvaluationCallback needs a GAN module with generate(), got {type(pl_module).__name__}")
        if self.extractor is None and self.extractor_checkpoint is not None and trainer.is_global_zero:
            from workflows.domain_extractor import domain_extractor

            self.extractor = domain_extractor(self.extractor_checkpoint)
        if self.extractor is None and self.extractor_checkpoint is None and not self._warned:
            rank_zero_warn("GANEvaluationCallback: no feature extractor (set `extractor_checkpoint`, e.g. a domain "
                           "extractor from workflows.domain_extractor): FID, PRD and the embedding are skipped")
            self._warned = True
        spacing = self.label_spacing
        if spacing is None and hasattr(trainer.datamodule, "patch_spacing"):
            spacing = trainer.datamodule.patch_spacing()
        for cfg in (self.val_cfg, self.test_cfg):
            cfg.spacing = tuple(spacing) if spacing else None

    def _prepare(self, pl_module: LightningModule) -> None:
        if self.extractor is not None:
            self.extractor.to(pl_module.device)

    # ------------------------------------------------------------------ validation
    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or self._val_real is not None:
            return
        if self._val_reservoir is None:
            self._val_reservoir = PatchReservoir(math.ceil(self.max_real / trainer.world_size), self.seed + trainer.global_rank)
        self._val_reservoir.add(batch["image"], batch["label"])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._val_real is None:  # collective: every rank, even one that saw no batch
            self._val_real = gather_patches(self._val_reservoir or PatchReservoir(1, 0), self.max_real, self.seed)
            self._val_reservoir = None
        if trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        out = run_dir(trainer) / "evaluation"  # every rank: trainer.log_dir is a collective under DDP
        scalars = self._on_rank_zero(trainer, lambda: self._evaluate_val(trainer, pl_module, out))
        for key, value in scalars.items():
            pl_module.log(f"val/{key}", float(value), sync_dist=True, rank_zero_only=False)

    def _evaluate_val(self, trainer: Trainer, pl_module: LightningModule, out: Path) -> dict[str, float]:
        start, timer, cfg = time.perf_counter(), Timer(), self.val_cfg
        self._prepare(pl_module)
        if self._val_ref is None:
            assert self._val_real is not None
            with timer.stage("real_reference"):
                self._val_ref = RealReference.build("real val", *self._val_real, self.extractor, cfg)
        with timer.stage("generate"):
            images, labels = pl_module.generate(self.n_samples, cfg.batch_size, seed=self.sample_seed)
        scores = score_synthetic(images, labels, self._val_ref, self.extractor, cfg, timer)
        figs = validation_figures(scores, self._val_ref, cfg, timer) if self.log_figures else {}
        self._save_figures(trainer, figs, out, f"epoch_{trainer.current_epoch:04d}", "val")
        scalars = scores.scalars()
        scalars["eval_seconds"] = time.perf_counter() - start
        record = {"epoch": trainer.current_epoch, "global_step": trainer.global_step, "scalars": scalars,
                  "fid": scores.fid, "prd": scores.prd.summary() if scores.prd else None, "diversity": scores.diversity,
                  "n_synthetic": len(images), "n_real": len(self._val_ref.images), "seconds": timer.seconds}
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "val_metrics.jsonl", "a") as fh:
            fh.write(json.dumps(jsonable(record)) + "\n")
        stages = ", ".join(f"{k} {v:.1f}" for k, v in timer.seconds.items())
        rank_zero_info(f"GAN evaluation, epoch {trainer.current_epoch}: {len(images)} synthetic vs "
                       f"{len(self._val_ref.images)} real patches in {scalars['eval_seconds']:.1f} s ({stages})")
        return scalars

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._test_reservoirs = {}

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx not in self._test_reservoirs:
            cap = math.ceil(self.test_max_real / trainer.world_size)
            self._test_reservoirs[dataloader_idx] = PatchReservoir(cap, self.seed + 1000 * dataloader_idx + trainer.global_rank)
        self._test_reservoirs[dataloader_idx].add(batch["image"], batch["label"])

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from datamodules.gan_data import TEST_HELDOUT_IDX, TEST_TRAIN_IDX

        sets = {}
        for idx in (TEST_TRAIN_IDX, TEST_HELDOUT_IDX):  # collectives: same order on every rank
            reservoir = self._test_reservoirs.get(idx, PatchReservoir(1, 0))
            sets[idx] = gather_patches(reservoir, self.test_max_real, self.seed + idx)
        out = Path(self.report_dir) if self.report_dir else run_dir(trainer) / "gan_evaluation"  # every rank
        scalars = self._on_rank_zero(trainer, lambda: self._evaluate_test(trainer, pl_module, sets, out))
        for key, value in scalars.items():
            pl_module.log(f"test/{key}", float(value), sync_dist=True, rank_zero_only=False)

    def _evaluate_test(self, trainer: Trainer, pl_module: LightningModule, sets: dict[int, tuple],
                       out: Path) -> dict[str, float]:
        start, timer, cfg = time.perf_counter(), Timer(), self.test_cfg
        self._prepare(pl_module)
        (train_x, train_y), (held_x, held_y) = sets[0], sets[1]
        if len(train_x) < 2:
            raise RuntimeError("GANEvaluationCallback: the test loaders gave no real training patches "
                               "(use datamodules.gan_data.GANPatchDataModule: test loaders = [train, held-out])")
        with timer.stage("real_reference"):
            train = RealReference.build("real train", train_x, train_y, self.extractor, cfg)
            heldout = RealReference.build("real held-out", held_x, held_y, self.extractor, cfg) if len(held_x) >= 2 else None
        with timer.stage("generate"):
            images, labels = pl_module.generate(self.test_n_samples, cfg.batch_size, seed=self.sample_seed)
        report, figs = test_report(images, labels, train, heldout, self.extractor, cfg, timer)
        scalars = dict(report["scalars"], eval_seconds=time.perf_counter() - start)
        report["meta"] = self._test_meta(trainer, pl_module, len(images), len(train_x), len(held_x))
        report["seconds"] = dict(timer.seconds, total=scalars["eval_seconds"])
        json_path, md_path = write_report(report, figs, out)
        for name in figs:
            self._log_image(trainer, f"test/{name}", out / f"{name}.png")
        rank_zero_info(f"GAN evaluation report: {md_path} ({scalars['eval_seconds']:.1f} s, {len(images)} synthetic)")
        return scalars

    def _test_meta(self, trainer: Trainer, pl_module: LightningModule, n_syn: int, n_train: int, n_held: int) -> dict:
        ckpt = trainer.ckpt_path if trainer.ckpt_path and Path(trainer.ckpt_path).is_file() else None
        # epoch/step as stored: the trainer's own counters restart at 0 under `test`
        stored = load_checkpoint_dict(ckpt, "GAN checkpoint", mmap=True) if ckpt else {}
        return {"checkpoint": str(ckpt) if ckpt else None, "checkpoint_sha256": sha256_file(ckpt) if ckpt else None,
                "gan_class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
                "epoch": stored.get("epoch"), "global_step": stored.get("global_step"),
                "label_encoding": getattr(pl_module, "label_encoding", None),
                "label_threshold": getattr(pl_module, "label_threshold", None),
                "n_synthetic": n_syn, "sample_seed": self.sample_seed, "n_real_train": n_train, "n_real_heldout": n_held,
                "extractor": getattr(self.extractor, "name", None),
                "extractor_sha256": getattr(self.extractor, "weights_sha256", None)}

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _on_rank_zero(trainer: Trainer, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Run fn on rank zero and broadcast its result; a failure there is re-raised on every rank instead
        of leaving the others waiting in the broadcast."""
        result: dict[str, Any] = {}
        error: BaseException | None = None
        if trainer.is_global_zero:
            try:
                result = {"scalars": fn()}
            except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks are told
                error, result = err, {"error": f"{type(err).__name__}: {err}"}
        result = trainer.strategy.broadcast(result, src=0)
        if error is not None:
            raise error
        if "error" in result:
            raise RuntimeError(f"GANEvaluationCallback failed on rank 0: {result['error']}")
        return result["scalars"]

    def _save_figures(self, trainer: Trainer, figs: dict, out: Path, stem: str, prefix: str) -> None:
        from metrics.plots import save_figure

        for name, fig in figs.items():
            path = save_figure(fig, out / f"{stem}_{name}.png")
            self._log_image(trainer, f"{prefix}/{name}", path)

    @staticmethod
    def _log_image(trainer: Trainer, key: str, path: Path) -> None:
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
