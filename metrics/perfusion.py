"""Image metrics of the perfusion chapter (thesis ch. 7): MAE, NRMSE, SSIM, PSNR per slice, averaged per patient.

Definitions (the authors' `evaluate.py`, scikit-image defaults; equal to scikit-image 0.26 on random arrays,
tests/test_perfusion_metrics.py):
- MAE = mean |p − y|; NRMSE = RMSE / √(mean y²) (skimage `normalized_root_mse`, "euclidean");
- SSIM: 7×7 uniform window, K1 0.01, K2 0.03, sample covariance (N/(N−1)), mean over the map cropped by 3
  pixels (skimage `structural_similarity` defaults). Written here because torchmetrics' SSIM uses population
  covariance and reflect padding (0.631 vs skimage 0.641 on the same random pair, measured);
- PSNR = 10 log10(data_range² / MSE), in float64 here (torchmetrics' `peak_signal_noise_ratio` casts the range to
  float32: 7e-7 dB off skimage, measured); MAE is torchmetrics' `mean_absolute_error`.
`data_range` is always explicit: 2 in the networks' [−1, 1] units (the thesis), the training-set min–max range of
the target map in physical units.

Brain-masked variants ("brain") use only mask pixels (SSIM: the SSIM map averaged over the mask pixels of the
cropped map); "all" uses the whole slice.

Empty-slice policy (`UNDEFINED_POLICY`): a value that is not finite — NRMSE of an all-zero target, PSNR of an exact
prediction (inf), any masked metric of a slice without brain, the masked SSIM of a slice whose brain lies only
in the 3-pixel border SSIM crops away — is undefined: it is kept in the per-slice table as
NaN, left out of every mean and counted as `n_undefined`. No mean ever includes a NaN or inf.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional import mean_absolute_error

METRICS = ("mae", "nrmse", "ssim", "psnr")
REGIONS = ("all", "brain")
SSIM_WIN, SSIM_K1, SSIM_K2 = 7, 0.01, 0.03
UNDEFINED_POLICY = ("non-finite values (NRMSE of an all-zero target, PSNR of an exact prediction, any brain-masked "
                    "metric of a slice without brain) are NaN in the per-slice table, left out of the means and "
                    "counted as n_undefined")  # fmt: skip


def _check(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> None:
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"metrics/perfusion.py: pred and target must be equal 2D slices, got {tuple(pred.shape)}"
                         f" and {tuple(target.shape)}")  # fmt: skip
    if min(pred.shape) < SSIM_WIN:
        raise ValueError(f"metrics/perfusion.py: slices must be at least {SSIM_WIN}×{SSIM_WIN} for SSIM, got {tuple(pred.shape)}")
    if not data_range > 0:
        raise ValueError(f"metrics/perfusion.py: data_range must be > 0, got {data_range}")


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """skimage's SSIM map (defaults) on the valid region: (H, W) → (H − 6, W − 6), float64."""
    x, y = pred.double()[None, None], target.double()[None, None]
    mean = lambda t: F.avg_pool2d(t, SSIM_WIN, stride=1)  # noqa: E731 - the uniform filter, valid region only
    n = SSIM_WIN * SSIM_WIN
    cov_norm = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx, vy = cov_norm * (mean(x * x) - ux * ux), cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2)))[0, 0]


def slice_metrics(pred: torch.Tensor, target: torch.Tensor, data_range: float,
                  mask: torch.Tensor | None = None) -> dict[str, float]:  # fmt: skip
    """MAE, NRMSE, SSIM, PSNR of one 2D slice (within `mask` when given); undefined values are NaN."""
    pred, target = torch.as_tensor(pred).double(), torch.as_tensor(target).double()
    _check(pred, target, data_range)
    region = torch.ones_like(target, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
    if region.shape != target.shape:
        raise ValueError(f"metrics/perfusion.py: mask {tuple(region.shape)} differs from the slice {tuple(target.shape)}")
    pad = (SSIM_WIN - 1) // 2
    inner = region[pad:-pad, pad:-pad]
    if not region.any():
        return dict.fromkeys(METRICS, math.nan)
    p, y = pred[region], target[region]
    mse = torch.mean((p - y) ** 2)
    values = {
        "mae": mean_absolute_error(p, y).item(),
        "nrmse": (torch.sqrt(mse) / torch.sqrt(torch.mean(y**2))).item() if torch.any(y != 0) else math.nan,
        # brain only in the 3-pixel border SSIM crops away: SSIM undefined, the other metrics still are
        "ssim": ssim_map(pred, target, data_range)[inner].mean().item() if inner.any() else math.nan,
        "psnr": (10 * torch.log10(data_range**2 / mse)).item() if mse > 0 else math.inf,
    }
    return {k: v if math.isfinite(v) else math.nan for k, v in values.items()}


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample SD (ddof 1), n_undefined) over the finite values; NaN where too few are defined."""
    v = np.asarray(values, dtype=float)
    ok = v[np.isfinite(v)]
    mean = float(ok.mean()) if ok.size else math.nan
    sd = float(ok.std(ddof=1)) if ok.size > 1 else math.nan
    return mean, sd, int(v.size - ok.size)


class PerfusionScores:
    """Per-slice rows of named comparisons ("pred_vs_pipeline", …), summarised per patient and over patients.

    A row is keyed by (comparison, region, patient, slice); a repeated key (a DistributedSampler pads ranks with
    repeats) is kept once. Per patient: mean over the patient's defined slices; over the cohort: mean ± SD over
    patients (the thesis' Figs. 4 and 6), each with its count of undefined values.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str, int], dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, comparison: str, pred: torch.Tensor, target: torch.Tensor, data_range: float,
            mask: torch.Tensor | None, patients: Sequence[str], slices: Sequence[int]) -> None:  # fmt: skip
        """One row per slice of the batch (B, 1, H, W) for each region ("all", and "brain" when `mask` is given)."""
        if len(patients) != len(pred) or len(slices) != len(pred):
            raise ValueError(f"metrics/perfusion.py: {len(pred)} slices but {len(patients)} patients, {len(slices)} indices")
        for i, (patient, z) in enumerate(zip(patients, slices)):
            key = (comparison, str(patient), int(z))
            self.rows[(key[0], "all", key[1], key[2])] = slice_metrics(pred[i, 0], target[i, 0], data_range)
            if mask is not None:
                self.rows[(key[0], "brain", key[1], key[2])] = slice_metrics(pred[i, 0], target[i, 0], data_range, mask[i, 0])

    def merge(self, other_rows: dict[tuple[str, str, str, int], dict[str, float]]) -> None:
        for key, row in other_rows.items():
            self.rows.setdefault(key, row)

    def per_slice_table(self) -> list[dict[str, Any]]:
        return [{"comparison": c, "region": r, "patient": p, "slice": z, **v}
                for (c, r, p, z), v in sorted(self.rows.items())]  # fmt: skip

    def per_patient_table(self) -> list[dict[str, Any]]:
        groups: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
        for (c, r, p, _), v in sorted(self.rows.items()):
            groups[(c, r, p)].append(v)
        table = []
        for (c, r, p), rows in groups.items():
            row: dict[str, Any] = {"comparison": c, "region": r, "patient": p, "n_slices": len(rows)}
            for m in METRICS:
                row[m], _, row[f"{m}_n_undefined"] = mean_sd([x[m] for x in rows])
            table.append(row)
        return table

    def summary(self) -> dict[str, float]:
        """{"<comparison>/<region>/<metric>_mean|_sd|_n_undefined": …, "…/n_patients": …} over patients."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in self.per_patient_table():
            groups[(row["comparison"], row["region"])].append(row)
        out: dict[str, float] = {}
        for (c, r), rows in groups.items():
            out[f"{c}/{r}/n_patients"] = float(len(rows))
            for m in METRICS:
                mean, sd, _ = mean_sd([x[m] for x in rows])  # a patient without defined slices: NaN, left out
                slices_undefined = sum(x[f"{m}_n_undefined"] for x in rows)
                out[f"{c}/{r}/{m}_mean"], out[f"{c}/{r}/{m}_sd"] = mean, sd
                out[f"{c}/{r}/{m}_n_undefined"] = float(slices_undefined)  # slices left out
        return out

    def write(self, out: str | Path, info: dict[str, Any]) -> None:
        """per_slice.csv, per_patient.csv and summary.json (`info` + the undefined-value policy) in `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name, table in (("per_slice.csv", self.per_slice_table()), ("per_patient.csv", self.per_patient_table())):
            if table:
                _atomic_write(out / name, lambda f, t=table: _write_csv(f, t))
        _atomic_write(out / "summary.json",
                      lambda f: json.dump({**info, "undefined_policy": UNDEFINED_POLICY}, f, indent=2, default=float))


def _write_csv(f: Any, table: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(f, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)


def _atomic_write(path: Path, write: Any) -> None:
    """Written to a temporary file beside `path`, then renamed: a crash never leaves half a report."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        write(f)
    os.replace(tmp, path)
