"""Pieces shared by workflows that chain several `tofgan` runs in one process (demo, grid, transfer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml

Select = Literal["best", "last"]


def finish_wandb() -> None:
    """Lightning leaves the W&B run open; the next run of this process would log into it."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()


def run_fragments(run: str, out: Path, group: str | None, select: Select | None = None) -> list[str]:
    """Per-run config: CSV logger (scores are read back from it) first, W&B in `group` when given, and with
    `select` a ModelCheckpoint appended to the trainer's callbacks that keeps exactly the selected epoch:
    the best `val/dsc` (strictly better replaces, so ties keep the earlier epoch) or the last epoch.
    The workflow adds its own because trainer configs checkpoint at their own pace (e.g. every 5 epochs)."""
    loggers: list[dict[str, Any]] = [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(out / "runs"), "name": run}}]
    if group:
        loggers.append({"class_path": "lightning.pytorch.loggers.WandbLogger",
                        # absolute: W&B's service process (shared by every run of this process) resolves a relative
                        # dir against its own start-up folder, not the current one
                        "init_args": {"project": "tofgan", "save_dir": str(out.resolve()), "name": run,
                                      "group": group}})
    trainer: dict[str, Any] = {"logger": loggers}
    if select:
        monitor, mode = ("val/dsc", "max") if select == "best" else ("epoch", "max")
        trainer["callbacks+"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
            "dirpath": str(out / "runs" / run / "selected"), "filename": "selected-{epoch}", "monitor": monitor,
            "mode": mode, "save_top_k": 1, "save_weights_only": True, "save_last": False}}]
    fragment = out / "configs" / f"{run}.yaml"
    fragment.parent.mkdir(parents=True, exist_ok=True)
    fragment.write_text(yaml.safe_dump({"trainer": trainer}, sort_keys=False))
    return ["--config", str(fragment)]
