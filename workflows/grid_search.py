"""U-Net hyper-parameter grid on validation DSC, then test of the chosen member (Kossen et al. 2021 §2.4).

Paper grid: lr {1e-4, 8e-5} × dropout {0, 0.1} × classical augmentation off/on (batch sizes optional). Each
member is one `tofgan fit` (`cli.main`) of the same experiment with the same seed; all runs share one W&B
group. A member's score is its `val/dsc` (hard DSC pooled over every voxel of the REAL validation patients'
patches, whatever the training data) read per epoch from its CSV log.

Selection rule (`select`):
  * "best" (default): a member scores its best epoch's val/dsc, and that epoch's checkpoint is tested. With
    few epochs the last epoch's DSC is noisy, and the epoch is chosen on validation only, so the test set
    stays untouched; this is the model-selection-on-validation the paper describes.
  * "last": the member scores its last epoch and the last checkpoint is tested (the paper's fixed 15
    epochs read literally).
The member with the highest score wins; ties go to the earlier member in grid order; NaN scores never win.
The workflow appends its own ModelCheckpoint that keeps exactly the selected epoch (weights only), so it
does not depend on how often the trainer config checkpoints.

Outputs in `out_dir`: `grid.csv` (member, settings, val DSC, epoch, checkpoint), `selection.json`, the
runs under `runs/<member>/` (CSV logs in version_N/, the selected checkpoint in selected/), and the test report of the chosen member in `test/` (test_summary.json,
test_per_patient.csv, error_maps/).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from workflows.compose import experiment_args
from workflows.runs import Select, finish_wandb, run_fragments
ERROR_MAPS = "--trainer.callbacks+=callbacks.error_maps.ErrorMapCallback"


# ---------------------------------------------------------------------------- pure pieces
def grid_members(lrs: Sequence[float], dropouts: Sequence[float], augment: Sequence[bool],
                 batch_sizes: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The Cartesian grid, in a fixed order (lr, dropout, augment, batch size), each with a run name."""
    if not lrs or not dropouts or not augment:
        raise ValueError("grid_search: lrs, dropouts and augment need at least one value each")
    members = []
    for lr, dropout, aug, bs in itertools.product(lrs, dropouts, augment, batch_sizes or [None]):
        m: dict[str, Any] = {"lr": float(lr), "dropout": float(dropout), "augment": bool(aug), "batch_size": bs}
        m["member"] = f"lr{lr:g}_do{dropout:g}_aug{int(bool(aug))}" + (f"_bs{bs}" if bs else "")
        members.append(m)
    return members


def member_args(member: dict[str, Any]) -> list[str]:
    args = ["--model.init_args.optimizer.init_args.lr", repr(member["lr"]),
            "--model.init_args.net.init_args.dropout", repr(member["dropout"]),
            "--data.init_args.augment", str(member["augment"]).lower()]  # fmt: skip
    if member.get("batch_size"):
        args += ["--data.init_args.batch_size", str(int(member["batch_size"]))]
    return args


def epoch_scores(metrics_csv: str | Path, key: str = "val/dsc") -> dict[int, float]:
    """{epoch: value} of `key` from a CSVLogger metrics.csv (the last row of an epoch wins)."""
    scores: dict[int, float] = {}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get(key) not in (None, "") and row.get("epoch") not in (None, ""):
                scores[int(float(row["epoch"]))] = float(row[key])
    return scores


def pick_epoch(scores: dict[int, float], select: Select = "best") -> tuple[int, float]:
    """(epoch, score): the best finite epoch (earliest on ties) or the last epoch."""
    if not scores:
        raise ValueError("grid_search: the run logged no validation score")
    if select == "last":
        epoch = max(scores)
        return epoch, scores[epoch]
    finite = [(e, v) for e, v in sorted(scores.items()) if not math.isnan(v)]
    if not finite:
        return max(scores), float("nan")
    return max(finite, key=lambda ev: (ev[1], -ev[0]))


def select_member(rows: Sequence[dict[str, Any]], key: str = "val_dsc") -> int:
    """Index of the row with the highest finite `key`; the earliest on ties. ValueError if none is finite."""
    best = None
    for i, row in enumerate(rows):
        value = float(row[key]) if row.get(key) is not None else math.nan
        if not math.isnan(value) and (best is None or value > float(rows[best][key])):
            best = i
    if best is None:
        raise ValueError(f"grid_search: no member has a finite {key}")
    return best


# ---------------------------------------------------------------------------- runs through the CLI
@dataclass
class FitResult:
    run: str
    metrics_csv: Path
    checkpoint: Path  # the selected epoch's weights (written by the selection ModelCheckpoint)
    epoch: int
    score: float


def run_fit(experiment: str, run: str, out: Path, args: Sequence[str], group: str | None,
            select: Select = "best") -> FitResult:
    """One `tofgan fit`; returns the selected epoch, its val/dsc and its checkpoint."""
    from cli import main

    folder = out / "runs" / run / "selected"
    shutil.rmtree(folder, ignore_errors=True)  # a rerun must not find the previous run's selection
    cli = main(["fit", *experiment_args(experiment), *run_fragments(run, out, group, select), *args])
    finish_wandb()
    metrics_csv = Path(cli.trainer.loggers[0].log_dir) / "metrics.csv"
    epoch, score = pick_epoch(epoch_scores(metrics_csv), select)
    ckpt = next((Path(c.best_model_path) for c in cli.trainer.checkpoint_callbacks
                 if c.dirpath and Path(c.dirpath).resolve() == folder.resolve()), None)
    if ckpt is None or ckpt.name != f"selected-epoch={epoch}.ckpt":
        raise RuntimeError(f"{folder}: the kept checkpoint {ckpt} is not the selected epoch {epoch} of {metrics_csv}")
    return FitResult(run, metrics_csv, ckpt, epoch, score)


def run_test(experiment: str, run: str, ckpt: Path, out: Path, report_dir: Path, args: Sequence[str],
             group: str | None, error_maps: bool = True) -> dict[str, Any]:
    """Tests `ckpt` on the experiment's test patients; returns its test_summary.json."""
    from cli import main

    extra = [ERROR_MAPS] if error_maps else []
    main(["test", *experiment_args(experiment), *run_fragments(run, out, group), *args, "--ckpt_path", str(ckpt),
          "--model.init_args.report_dir", str(report_dir), *extra])  # fmt: skip
    finish_wandb()
    return json.loads((report_dir / "test_summary.json").read_text())


# ---------------------------------------------------------------------------- the workflow
def grid_search(
    experiment: str,
    out_dir: str,
    lrs: list[float] = [1e-4, 8e-5],  # noqa: B006 - read only
    dropouts: list[float] = [0.0, 0.1],  # noqa: B006
    augment: list[bool] = [False, True],  # noqa: B006
    batch_sizes: list[int] | None = None,
    extra_args: list[str] | None = None,
    test: bool = True,
    select: Select = "best",
    seed: int = 0,
    group: str | None = None,
    wandb: bool = True,
    error_maps: bool = True,
) -> Path:
    """Fits every grid member, picks the best by validation DSC, tests it; returns `out_dir`.

    Args:
        experiment: experiment file (name under configs/experiment/ or a path), e.g. kossen2021_unet.yaml.
        out_dir: folder of runs, grid.csv, selection.json and the test report.
        lrs: learning rates of the grid.
        dropouts: U-Net dropout rates of the grid.
        augment: classical augmentation off/on (`data.init_args.augment`).
        batch_sizes: global batch sizes of the grid; None keeps the experiment's.
        extra_args: more CLI arguments for every fit and the test (e.g. synthetic stores, max_epochs); they
            come before the member's own settings, which therefore always win.
        test: test the chosen member on the test patients.
        select: "best" epoch or "last" epoch of each member (module docstring).
        seed: `--seed_everything` of every run.
        group: W&B group of all runs (default: "grid-" + the out_dir name).
        wandb: False for CSV logs only (no W&B runs).
        error_maps: write error maps of the test patients.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    group = (group or f"grid-{out.name}") if wandb else None
    common = ["--seed_everything", str(seed), *(extra_args or [])]
    rows = []
    for member in grid_members(lrs, dropouts, augment, batch_sizes):
        fit = run_fit(experiment, member["member"], out, [*common, *member_args(member)], group, select)
        rows.append({**member, "val_dsc": fit.score, "epoch": fit.epoch, "checkpoint": str(fit.checkpoint)})
    columns = ["member", "lr", "dropout", "augment", "batch_size", "val_dsc", "epoch", "checkpoint"]
    with open(out / "grid.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    chosen = rows[select_member(rows)]
    selection: dict[str, Any] = {"experiment": experiment, "metric": "val/dsc", "select": select,
                                 "rule": "highest val/dsc on the real validation patients; ties → earlier member",
                                 "chosen": chosen, "test_summary": None}  # fmt: skip
    if test:
        report = out / "test"
        run_test(experiment, f"test-{chosen['member']}", Path(chosen["checkpoint"]), out, report,
                 [*common, *member_args(chosen)], group, error_maps)
        selection["test_summary"] = str(report / "test_summary.json")
    (out / "selection.json").write_text(json.dumps(selection, indent=2))
    return out
