"""Vessel segmentation: trains on patch batches, evaluates whole volumes by sliding window.

Model selection uses `val/dsc`: the hard DSC (threshold `threshold`) pooled over all validation patch
voxels of the epoch (torchmetrics `BinaryF1Score`, which is 2TP/(2TP+FP+FN), synced under DDP), as the
papers selected the U-Net on the validation DSC. Monitor it with mode "max".

Input normalisation happens here, not in the data: z-score per patch in training and per sliding window
at inference (inside the window predictor), so train and test see the same statistics whether the patches
are raw, [-1, 1] GAN output or synthetic.

Intracranial evaluation (label and prediction both masked by the brain mask) is computed only for patients
whose batch says `has_brain_mask` true: volume batches always carry a `brain_mask` (all ones when the patient
has none), and a ones-mask would silently duplicate the all-vessel numbers under the intracranial name.

Spacing: volumes are predicted on the grid the data gives as `model_affine` (resampled to the DataModule's
`target_spacing`, `datamodules.preprocess`) and the probabilities are resampled back onto the native grid of
the label before thresholding, so metrics and written predictions are native. The spacing the net was trained
at (`train_spacing`, taken from the DataModule at fit start) is saved in the checkpoint's hyper-parameters; a
volume seen at another spacing (no `target_spacing`, or a different one) gets a warning naming both. With skull
stripping (batch `skull_strip`) predictions outside the brain mask are set to 0.

2D and 3D: the same module trains the 2D papers' half U-Net on axial patches and the 3D paper's U-Net
(`networks.unet.UNet`, `configs/model/unet3d.yaml`) on 3D patches; `roi_size` (2 or 3 entries) must match the net's
`spatial_dims` and the data's patch size (checked at construction and at fit start). Test reports give, per patient
and as mean ± SD, DSC, 95HD (mm), bAVD in mm (`bavd`) and in voxels (`bavd_vox`, the 3D paper's unit), for all
vessels and intracranial.

Transfer learning (Kossen et al. 2021, Fig. 3): `pretrained` names a checkpoint of a U-Net trained on
synthetic pairs; its network weights are loaded at construction, strictly (same architecture or an error).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from torch import nn
from torchmetrics.classification import BinaryF1Score
from torchmetrics.functional.classification import binary_f1_score

from datamodules.preprocess import resample_to_grid, same_spacing
from lightning_modules.input_norm import INPUT_NORMS
from metrics.segmentation import METRIC_NAMES, PerPatientSegmentationMetrics

EMPTY_MASK_POLICY = (
    "both masks empty: DSC 1, distances 0; exactly one empty: DSC 0, distances NaN and left out of the distance "
    "means (counted as n_undefined)"
)


def intracranial_rows(batch: dict[str, Any]) -> list[int]:
    """Batch rows that have a real brain mask: all rows with a `brain_mask` unless `has_brain_mask` says no."""
    if batch.get("brain_mask") is None:
        return []
    n = len(batch["brain_mask"])
    has = batch.get("has_brain_mask")
    if has is None:  # a hand-made batch that gives a mask means it
        return list(range(n))
    has = torch.as_tensor(has).reshape(-1).bool().tolist()
    if len(has) != n:
        raise ValueError(f"SegmentationModule: has_brain_mask has {len(has)} entries for a batch of {n}")
    return [i for i, h in enumerate(has) if h]


def load_net_weights(net: nn.Module, path: str) -> None:
    """Loads `net`'s weights from a Lightning checkpoint (keys `net.*`) or a plain state dict, strictly.

    `weights_only=True`: the checkpoint is data, never code; suite checkpoints hold only plain data.
    """
    from lightning_modules.checkpoints import load_checkpoint_dict  # lazy: the loader imports the suite's registry

    file = Path(path)
    raw = load_checkpoint_dict(file, "pretrained checkpoint or state dict")  # data only; errors name the file
    state = raw.get("state_dict", raw)
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{file}: holds no state dict")
    if any(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{file}: its weights do not fit the configured net "
                         f"({type(net).__name__}); same architecture (features, channels) needed.\n{err}") from err


class SegmentationModule(LightningModule):
    """A U-Net (or any logits net), 2D or 3D, trained with soft Dice; per-patient DSC/95HD/bAVD at test time.

    Args:
        net: a network returning logits, 2D (`len(roi_size) == 2`, applied slice by slice along z) or 3D.
        optimizer: optimiser factory, injected by LightningCLI (paper: Adam, lr 1e-4 or 8e-5; set lr in config).
        scheduler: optional learning-rate schedule factory, stepped once per epoch (the papers used a constant
            rate; the short CPU runs decay it so that the last epochs do not swing, e.g. CosineAnnealingLR).
        input_norm: "zscore" per patch / per window; "zscore_foreground": the same with mean and SD over the
            foreground (`zscore_foreground`: no false vessels along a skull-stripped brain's edge); or "none".
        threshold: probability threshold for binary masks.
        roi_size: sliding-window size; 2 entries → axial 2D windows, 3 entries → 3D windows.
        overlap, sw_batch_size, sw_mode: `monai.inferers.sliding_window_inference` settings.
        slice_batch: axial slices per sliding-window call, bounding memory for 2D nets on whole volumes.
        report_dir: where test CSV/JSON go; default the trainer's log dir.
        pretrained: checkpoint (Lightning .ckpt of a SegmentationModule, or a plain state dict of the net or
            module) whose network weights initialise `net`. A checkpoint of a run fine-tuned from it still
            records this path; reloading that run re-reads the file before the run's own weights replace
            it, so set `pretrained: null` (`--model.init_args.pretrained null`) if the file has moved.
        train_spacing: voxel size (mm) the net was trained at; leave null: fit sets it from the DataModule
            (`cohort_spacing()`) and the checkpoint keeps it, to warn when test data come at another spacing.

    Loss: `DiceLoss(sigmoid=True, smooth_nr=1, smooth_dr=1, batch=True)` = 1 − Dice_smooth1 over the whole
    batch, i.e. the paper's −Dice (Keras `dice_coef` with smooth 1 on the flattened batch) plus a constant.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        input_norm: Literal["zscore", "zscore_foreground", "none"] = "zscore",
        threshold: float = 0.5,
        roi_size: Sequence[int] = (96, 96),
        overlap: float = 0.5,
        sw_batch_size: int = 64,
        sw_mode: Literal["gaussian", "constant"] = "gaussian",
        slice_batch: int = 64,
        report_dir: str | None = None,
        pretrained: str | None = None,
        train_spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if len(roi_size) not in (2, 3):
            raise ValueError(f"SegmentationModule: roi_size must have 2 or 3 entries, got {list(roi_size)}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"SegmentationModule: overlap must be in [0, 1), got {overlap}")
        net_dims = getattr(net, "spatial_dims", None)
        if net_dims is not None and net_dims != len(roi_size):
            raise ValueError(f"SegmentationModule: roi_size {list(roi_size)} has {len(roi_size)} entries but the net "
                             f"{type(net).__name__} is {net_dims}D (spatial_dims={net_dims}); give a {net_dims}-entry "
                             "roi_size (--model.init_args.roi_size)")
        self.save_hyperparameters()
        self.net = net
        self.optimizer, self.scheduler = optimizer, scheduler
        self.input_norm = input_norm
        self.threshold = float(threshold)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap, self.sw_batch_size, self.sw_mode = float(overlap), int(sw_batch_size), sw_mode
        self.slice_batch = int(slice_batch)
        self.report_dir = report_dir
        self.pretrained = pretrained
        self.train_spacing = tuple(float(v) for v in train_spacing) if train_spacing is not None else None
        self._spacing_warned: set[tuple[float, ...]] = set()
        if pretrained:
            load_net_weights(self.net, pretrained)
        self.loss_fn = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, batch=True)
        self.train_dsc = BinaryF1Score(threshold=self.threshold, zero_division=1.0)
        self.val_dsc = BinaryF1Score(threshold=self.threshold, zero_division=1.0)
        self.test_metrics = PerPatientSegmentationMetrics()
        self.test_metrics_intracranial = PerPatientSegmentationMetrics()

    # ---------------------------------------------------------------- forward / inference
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return INPUT_NORMS[self.input_norm](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of patches, normalised as in training."""
        return self.net(self.normalise(x))

    def _window_probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))

    def _sliding(self, x: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(
            x, self.roi_size, self.sw_batch_size, self._window_probs, overlap=self.overlap, mode=self.sw_mode
        )

    @torch.no_grad()
    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities for volumes (B, 1, X, Y, Z); 2D nets see axial slices (z) as their batch."""
        if image.ndim != 5:
            raise ValueError(f"SegmentationModule: volume batches must be (B, 1, X, Y, Z), got {tuple(image.shape)}")
        image = image.float()
        if len(self.roi_size) == 3:
            return torch.cat([self._sliding(image[b : b + 1]) for b in range(image.shape[0])]).float()
        out = []
        for b in range(image.shape[0]):
            slices = image[b].permute(3, 0, 1, 2)  # (1, X, Y, Z) → (Z, 1, X, Y)
            probs = [self._sliding(slices[i : i + self.slice_batch]) for i in range(0, slices.shape[0], self.slice_batch)]
            out.append(torch.cat(probs).permute(1, 2, 3, 0))  # (Z, 1, X, Y) → (1, X, Y, Z)
        return torch.stack(out).float()

    # ---------------------------------------------------------------- patch steps
    def _patch_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, label = batch["image"].float(), batch["label"].float()
        logits = self(image)
        return self.loss_fn(logits, label), torch.sigmoid(logits.detach()), label

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, probs, label = self._patch_step(batch)
        bs = label.shape[0]
        self.train_dsc(probs, label.long())
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("train/dsc", self.train_dsc, on_step=True, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if "affine" in batch:  # whole volumes (data `val_on: volumes`): scored as the test scores them
            return self._volume_validation(batch)
        loss, probs, label = self._patch_step(batch)
        bs = label.shape[0]
        self.val_dsc.update(probs, label.long())
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=bs)
        self.log("val/dsc", self.val_dsc, on_epoch=True, prog_bar=True, batch_size=bs)

    def _volume_validation(self, batch: dict[str, Any]) -> None:
        """`val/dsc` = mean over the validation patients of each whole volume's DSC after sliding-window inference,
        as `test` computes it (all vessels; skull-stripped data are cut to the brain). Pooled patch DSC misses the
        false vessels a net marks where no patch is cut (a 3D demo U-Net at 0.75 validation patch DSC scored
        0.47 on the whole test volumes)."""
        pred = self._volume_outputs(batch)["pred"].bool()
        label = batch["label"] > 0.5
        dsc = binary_f1_score(pred.flatten(1).long(), label.flatten(1).long(), multidim_average="samplewise",
                              zero_division=1.0)
        self.log("val/dsc", dsc.mean(), on_epoch=True, prog_bar=True, sync_dist=True, batch_size=dsc.numel())

    # ---------------------------------------------------------------- spacing
    def on_fit_start(self) -> None:
        """Check that the data's patches have the net's dimensionality, and record the spacing the net trains at
        (saved with the hyper-parameters in every checkpoint)."""
        settings = getattr(self.trainer.datamodule, "patch_settings", None)
        if settings is not None and len(settings.patch_size) != len(self.roi_size):
            raise ValueError(f"SegmentationModule: the data's patch_size {list(settings.patch_size)} "
                             f"(--data.init_args.patch_size) is {len(settings.patch_size)}D but roi_size "
                             f"{list(self.roi_size)} (--model.init_args.roi_size) and the net are "
                             f"{len(self.roi_size)}D; "
                             "combine a 3D model config (model/unet3d.yaml) with 3D data (data/pegasus_seg3d.yaml)")
        spacing = getattr(self.trainer.datamodule, "cohort_spacing", lambda: None)()
        if spacing is not None:
            self.train_spacing = tuple(float(v) for v in spacing)
            self.hparams["train_spacing"] = list(self.train_spacing)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """`tofgan test --ckpt_path` builds the module from the config: take the trained spacing from the file."""
        spacing = (checkpoint.get("hyper_parameters") or {}).get("train_spacing")
        if spacing is not None:
            self.train_spacing = tuple(float(v) for v in spacing)
            self.hparams["train_spacing"] = list(self.train_spacing)

    def _check_spacing(self, batch: dict[str, Any]) -> None:
        """Warn (once per spacing) when the net sees a volume at a spacing other than the one it was trained at,
        compared on the axes the net works on (in-plane for 2D nets)."""
        seen = batch.get("model_spacing", batch.get("spacing"))
        if self.train_spacing is None or seen is None:
            return
        axes = len(self.roi_size)
        for b, sp in enumerate(torch.as_tensor(seen).reshape(-1, 3).tolist()):
            key = tuple(round(v, 4) for v in sp)
            if same_spacing(sp[:axes], self.train_spacing[:axes]) or key in self._spacing_warned:
                continue
            self._spacing_warned.add(key)
            fmt = "×".join
            warnings.warn(f"SegmentationModule: the net was trained at {fmt(f'{v:g}' for v in self.train_spacing)} mm "
                          f"but patient {batch['patient_id'][b]!r} is seen at {fmt(f'{v:g}' for v in sp)} mm (not "
                          f"resampled to the training spacing); set data.init_args.target_spacing "
                          f"{list(self.train_spacing)} to resample volumes (predictions come back on the native grid)",
                          stacklevel=2)

    def _to_native(self, prob: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Probabilities on the model grid → the native grid of the label, then cut to the brain mask when the
        data were skull-stripped."""
        native = tuple(batch["label"].shape[2:]) if batch.get("label") is not None else tuple(prob.shape[2:])
        model_affine, affine = batch.get("model_affine"), batch.get("affine")
        rows = []
        for b in range(prob.shape[0]):
            p = prob[b]
            same = model_affine is None or (tuple(p.shape[1:]) == native and torch.allclose(
                model_affine[b].double().cpu(), affine[b].double().cpu(), atol=1e-4))
            rows.append(p if same else resample_to_grid(p, model_affine[b], affine[b], native, "bilinear").clamp(0, 1))
        prob = torch.stack(rows)
        strip = batch.get("skull_strip")
        if strip is not None:
            strip = torch.as_tensor(strip).reshape(-1).bool().to(prob.device)
            prob = torch.where(strip.view(-1, 1, 1, 1, 1) & (batch["brain_mask"].to(prob.device) <= 0.5),
                               torch.zeros_like(prob), prob)
        return prob

    # ---------------------------------------------------------------- volume steps
    def _volume_outputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        self._check_spacing(batch)
        prob = self._to_native(self.predict_volume(batch["image"]), batch)
        return {
            "prob": prob,
            "pred": (prob >= self.threshold).to(torch.uint8),
            "patient_id": list(batch["patient_id"]),
            "affine": batch["affine"],
        }

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out = self._volume_outputs(batch)
        pred, label = out["pred"].bool(), batch["label"] > 0.5
        spacing = batch.get("spacing")
        self.test_metrics.update(pred, label, spacing, out["patient_id"])
        keep = intracranial_rows(batch)
        if keep:
            brain = batch["brain_mask"][keep] > 0.5
            sp = spacing[keep] if isinstance(spacing, torch.Tensor) and spacing.ndim == 2 else spacing
            self.test_metrics_intracranial.update(pred[keep] & brain, label[keep] & brain, sp,
                                                  [out["patient_id"][i] for i in keep])
        return out

    def on_test_epoch_end(self) -> None:
        results, tables = {}, {}
        groups = (("all", "test", self.test_metrics), ("intracranial", "test/intracranial", self.test_metrics_intracranial))
        # compute/per_patient_table are collectives: every rank calls both, whatever its own data.
        for group, prefix, metric in groups:
            with warnings.catch_warnings():  # a rank (or a cohort without brain masks) may have no rows: fine
                warnings.filterwarnings("ignore", message=".*was called before the ``update``.*")
                res, table = metric.compute(), metric.per_patient_table()
            metric.reset()
            if res["n_patients"].item() == 0:
                continue
            results[group], tables[group] = {k: v.item() for k, v in res.items()}, table
            for name in METRIC_NAMES:
                self.log(f"{prefix}/{name}", res[f"{name}_mean"].float(), sync_dist=True)
                for stat in ("mean", "std", "n_undefined"):
                    self.log(f"{prefix}/{name}_{stat}", res[f"{name}_{stat}"].float(), sync_dist=True)
            self.log(f"{prefix}/n_patients", res["n_patients"].float(), sync_dist=True)
        # Every rank resolves the folder: trainer.log_dir broadcasts under DDP.
        out_dir = Path(self.report_dir or self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.is_global_zero and results:
            self._write_report(results, tables, out_dir)

    def _write_report(self, results: dict[str, dict[str, float]], tables: dict[str, list[dict]], out_dir: Path) -> None:
        """test_per_patient.csv (one row per patient, intracranial_* columns when masks exist) + test_summary.json."""
        out_dir.mkdir(parents=True, exist_ok=True)
        rows: dict[str, dict[str, Any]] = {}
        fields = ["patient_id"]
        for group, table in tables.items():
            col = "" if group == "all" else f"{group}_"
            fields += [f"{col}{n}" for n in METRIC_NAMES]
            for r in table:
                rows.setdefault(r["patient_id"], {"patient_id": r["patient_id"]}).update(
                    {f"{col}{n}": r[n] for n in METRIC_NAMES}
                )
        with open(out_dir / "test_per_patient.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows[k] for k in sorted(rows))

        def clean(v: float) -> float | None:  # JSON has no NaN
            return None if math.isnan(v) else v

        summary = {
            "results": {g: {m: clean(v) for m, v in r.items()} for g, r in results.items()},
            "split": getattr(self.trainer.datamodule, "test_split", "test"),
            "threshold": self.threshold,
            "std": "sample standard deviation over patients (ddof=1)",
            "hd95": "95th percentile of pooled symmetric surface distances, mm",
            "bavd": "balanced average Hausdorff distance over all label voxels, mm",
            "bavd_vox": "the same bAVD in voxels (unit spacing), as the 3D paper reports it",
            "empty_mask_policy": EMPTY_MASK_POLICY,
        }
        (out_dir / "test_summary.json").write_text(json.dumps(summary, indent=2))

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Probabilities and binary masks on CPU: Lightning keeps predict outputs unless return_predictions=False."""
        out = self._volume_outputs(batch)
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "epoch"}}
