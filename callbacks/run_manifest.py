"""Writes what a run needs to be reproduced next to its checkpoints, and hands it to the loggers."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

def run_dir(trainer: Trainer) -> Path:
    """The folder of this run: beside the checkpoints when there are any, else the log dir.

    With a W&B logger `trainer.log_dir` is shared by every run, while the checkpoint folder is per run.
    """
    ckpt = trainer.checkpoint_callback
    dirpath = getattr(ckpt, "dirpath", None)
    if dirpath:
        return Path(dirpath).parent
    return Path(trainer.log_dir or trainer.default_root_dir)


PACKAGES = ("torch", "lightning", "torchmetrics", "monai", "nibabel", "opacus", "numpy", "scipy", "wandb", "tofgan")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    """The suite's own commit, so a result can be traced to code; None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def wandb_record(trainer: Trainer) -> list[dict[str, Any]] | None:
    """Id, project, group, job type, name, tags and mode of each W&B run of this trainer (rank zero: starts the run
    if Lightning has not yet), so a dashboard row can be traced to its run folder and back."""
    from lightning.pytorch.loggers import WandbLogger

    records = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            records.append({"id": run.id, "project": run.project, "group": run.group or None,
                            "job_type": run.job_type or None, "name": run.name, "tags": list(run.tags or ()),
                            "offline": bool(run.offline), "dir": str(Path(run.dir).parent)})  # fmt: skip
    return records or None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


class RunManifest(Callback):
    """`run_manifest.json` in the log dir: seed, versions, data manifest hash, label threshold, privacy.

    LightningCLI already saves the merged `config.yaml` beside it; this adds what the config alone does
    not pin down. Models may expose `privacy_report() -> dict` (DP-GANs) and data modules
    `data_manifest() -> dict` (patch stores' settings and source hashes); both are recorded when present.
    The LightningModule and any callback may also expose `manifest_extras() -> dict`, whose keys are merged
    into the record (e.g. privacy accounting, or the settings changes a resumed run was allowed); a module
    with extras is recorded again at the end of fit, when they are final. With a W&B logger the record holds the
    W&B run's id, group, job type and tags (`wandb`).
    """

    def __init__(self, filename: str = "run_manifest.json") -> None:
        self.filename = filename

    def manifest(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        hparams = {k: _jsonable(v) for k, v in pl_module.hparams.items()}
        record: dict[str, Any] = {
            "command": sys.argv,
            "seed": os.environ.get("PL_GLOBAL_SEED"),
            "packages": package_versions(),
            "git_commit": git_commit(),
            "model_class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "label_encoding": hparams.get("label_encoding"),
            "label_threshold": getattr(pl_module, "label_threshold", hparams.get("label_threshold")),
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
        }
        if (wandb_runs := wandb_record(trainer)) is not None:
            record["wandb"] = wandb_runs
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "data_manifest"):
            data = datamodule.data_manifest()
            record["data"] = data
            record["data_manifest_sha256"] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        if hasattr(pl_module, "privacy_report"):
            record["privacy"] = pl_module.privacy_report()
        for source in (*trainer.callbacks, pl_module):
            extras = getattr(source, "manifest_extras", None)
            if callable(extras):
                record.update(extras())
        return record

    def write(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = run_dir(trainer)  # on every rank: it may broadcast under DDP
        if trainer.is_global_zero:
            self._write(trainer, pl_module, stage, folder)

    def _write(self, trainer: Trainer, pl_module: LightningModule, stage: str, folder: Path) -> None:
        record = self.manifest(trainer, pl_module)
        record["stage"] = stage
        out = folder / (self.filename if stage == "fit" else self.filename.replace(".json", f"_{stage}.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, default=repr))
        for logger in trainer.loggers:
            logger.log_hyperparams({"run_manifest": record})

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module, "fit")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Privacy spent is only known at the end of training.
        if hasattr(pl_module, "privacy_report") or callable(getattr(pl_module, "manifest_extras", None)):
            self.write(trainer, pl_module, "fit")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "test":
            self.write(trainer, pl_module, "test")
