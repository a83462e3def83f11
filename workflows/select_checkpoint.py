"""Model selection over epochs: pick one of a run's per-epoch checkpoints by a rule, and record why.

The papers synthesised from a chosen epoch (e.g. 180 of 200), not from the last one. The trainer configs
keep every epoch's checkpoint (ModelCheckpoint `save_top_k: -1`, Lightning's `epoch=E-step=S.ckpt` names
under `<run>/checkpoints/`), so the choice can be made after training:
- "last": the checkpoint of the highest epoch (the default until evaluation metrics exist);
- "min:<key>" / "max:<key>": the epoch whose value of <key> in the run's CSVLogger `metrics.csv` is
  lowest / highest, among epochs that have a checkpoint. An epoch's value is the last non-empty value
  logged in it (epoch-level metrics are logged once per epoch; for step-level keys it is the last step's).
  Ties go to the earliest epoch.
The choice is written to `<run>/selection.json` (rule, epoch, value, every candidate), so a synthetic
store made from the returned checkpoint can be traced back to the rule that picked it.
"""

from __future__ import annotations

import csv
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

_EPOCH = re.compile(r"(?:^|[-_])epoch=(\d+)")
_STEP = re.compile(r"(?:^|[-_])step=(\d+)")


def epoch_checkpoints(run_dir: Path) -> dict[int, Path]:
    """{epoch: checkpoint} from `epoch=E` file names in run_dir/checkpoints (or run_dir itself).

    Several files for one epoch (re-runs write `…-v1.ckpt`): the highest step, then the newest file.
    """
    folder = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    best: dict[int, tuple[int, float, Path]] = {}
    for path in folder.glob("*.ckpt"):
        match = _EPOCH.search(path.stem)
        if match is None:
            continue
        step = _STEP.search(path.stem)
        key = (int(step.group(1)) if step else -1, path.stat().st_mtime, path)
        epoch = int(match.group(1))
        if epoch not in best or key[:2] > best[epoch][:2]:
            best[epoch] = key
    return {epoch: entry[2] for epoch, entry in sorted(best.items())}


def epoch_values(metrics_csv: Path, key: str) -> dict[int, float]:
    """{epoch: last non-empty finite value of `key` logged in that epoch} from a CSVLogger metrics.csv."""
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "epoch" not in columns:
            raise ValueError(f"{metrics_csv}: no 'epoch' column (not a Lightning CSVLogger metrics.csv?)")
        if key not in columns:
            available = ", ".join(c for c in columns if c not in ("epoch", "step"))
            raise KeyError(f"{metrics_csv}: metric {key!r} was never logged; logged keys: {available}")
        values: dict[int, float] = {}
        for row in reader:
            raw, epoch = row.get(key, ""), row.get("epoch", "")
            if raw in ("", None) or epoch in ("", None):
                continue
            value = float(raw)
            if math.isfinite(value):
                values[int(float(epoch))] = value
    return values


def _parse_rule(rule: str) -> tuple[str, str | None]:
    if rule == "last":
        return "last", None
    mode, sep, key = rule.partition(":")
    if mode not in ("min", "max") or not sep or not key:
        raise ValueError(f"select_checkpoint: rule must be 'last', 'min:<metric key>' or 'max:<metric key>', got {rule!r}")
    return mode, key


def _epoch_of(path: Path) -> int | None:
    """Epoch stored in a checkpoint (memory-mapped: the weights are not read)."""
    from lightning_modules.checkpoints import load_checkpoint_dict

    return load_checkpoint_dict(path, "Lightning checkpoint", mmap=True).get("epoch")


def select_checkpoint(run_dir: str, rule: str = "last", metrics_csv: str | None = None, min_epoch: int = 0) -> Path:
    """Returns the checkpoint `rule` picks among the run's per-epoch checkpoints; writes run_dir/selection.json.

    Args:
        run_dir: the run folder (holding `checkpoints/` and, for metric rules, `metrics.csv`).
        rule: "last", "min:<metric key>" or "max:<metric key>" (e.g. "min:val/fid").
        metrics_csv: the CSVLogger file to read; None → run_dir/metrics.csv.
        min_epoch: metric rules consider only epochs ≥ this (early snapshots of a short run can match one statistic
            by chance, e.g. label vessel fraction before vessels have shapes).
    """
    mode, key = _parse_rule(rule)
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run folder not found")
    checkpoints = epoch_checkpoints(run)
    record: dict = {"rule": rule, "metric": key, "mode": mode, "metrics_csv": None, "min_epoch": min_epoch}
    if not checkpoints:
        last = run / "checkpoints" / "last.ckpt"
        if mode != "last" or not last.is_file():
            raise FileNotFoundError(f"{run}: no per-epoch checkpoints ('epoch=N' in *.ckpt names) in {run}/checkpoints or {run}")
        epoch, chosen, value = _epoch_of(last), last, None  # a run that kept only last.ckpt
        candidates = [{"epoch": epoch, "checkpoint": str(last)}]
    elif mode == "last":
        epoch = max(checkpoints)
        chosen, value = checkpoints[epoch], None
        candidates = [{"epoch": e, "checkpoint": str(p)} for e, p in checkpoints.items()]
    else:
        csv_path = Path(metrics_csv) if metrics_csv else run / "metrics.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path}: metrics file not found (rule {rule!r} needs the run's CSVLogger metrics.csv)")
        values = epoch_values(csv_path, key)  # type: ignore[arg-type]
        common = sorted(e for e in set(values) & set(checkpoints) if e >= min_epoch)
        if not common:
            raise ValueError(
                f"{csv_path}: no epoch ≥ {min_epoch} has both a value of {key!r} (epochs {sorted(values)}) and a"
                f" checkpoint (epochs {sorted(checkpoints)})"
            )
        pick = min if mode == "min" else max
        epoch = pick(common, key=lambda e: (values[e], e) if mode == "min" else (values[e], -e))
        chosen, value = checkpoints[epoch], values[epoch]
        candidates = [{"epoch": e, "checkpoint": str(checkpoints[e]), "value": values[e]} for e in common]
        record["metrics_csv"] = str(csv_path)
    record.update(epoch=epoch, checkpoint=str(chosen), value=value, candidates=candidates,
                  selected_at=datetime.now(timezone.utc).isoformat())  # fmt: skip
    (run / "selection.json").write_text(json.dumps(record, indent=2))
    return chosen
