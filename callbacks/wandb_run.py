"""What a W&B dashboard needs to compare runs, filled in from the run itself: job type, tags, the merged
configuration (data module arguments included) and the per-patient test table.

W&B's own mechanisms come first and are never overridden: `WandbLogger(group=…, job_type=…, tags=[…])` in a config or
workflow, or the environment variables WANDB_RUN_GROUP / WANDB_JOB_TYPE / WANDB_TAGS (comma-separated, added to the
tags here) that a workflow or a SLURM script sets. What neither gives, this callback derives before the W&B run
starts (Lightning starts it lazily, after the `setup` hook):

- job_type: `gan-fit`, `unet-fit`, `unet-test`, `gan-test` from the command and the model class, set in the
  WandbLogger's arguments by the CLI (`set_job_type`; Lightning starts the W&B run before any callback hook, and a
  run's job type cannot change once started); the tool commands use `synthesize` and `audit` (`start_tool_run`).
- tags: paper row (`row:<experiment config file name>`), `model:<class>`, `precision:<…>`, for GANs the privacy unit
  (`privacy:patch`, `privacy:patient`, `privacy:none`) and, at the end of a DP fit, `epsilon:<ε spent>`.
- config: the merged LightningCLI configuration under `cli` (model, data, trainer, seed) and the data module's
  arguments under `data` (batch size, patch settings, workers; Lightning logs only the model's hyper-parameters).
- on test end: `test/per_patient` as a wandb.Table from the run's `test_per_patient.csv` (summary metrics
  test/dsc_mean, …_std, test/hd95_*, test/bavd_* are logged by the segmentation module itself, ε by the DP module,
  FID / PRD by callbacks.gan_evaluation, sample grids by callbacks.sample_grid).

Inert without a WandbLogger. The W&B run id goes into run_manifest.json (callbacks.run_manifest.wandb_record).
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)

MAX_TAG = 64  # W&B's limit on a tag's length


def wandb_loggers(trainer: Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def is_gan(pl_module: LightningModule) -> bool:
    return hasattr(pl_module, "generator")


def job_type(command: str, model_class_path: str | None) -> str:
    """`gan-fit`, `unet-test`, …: `gan` for `lightning_modules.gan_base.GANModule`s, `unet` for
    `lightning_modules.segmentation.SegmentationModule`s, else the class name in lower case (`<command>` alone when
    the class is unknown)."""
    from lightning_modules.gan_base import GANModule
    from lightning_modules.segmentation import SegmentationModule

    module, _, name = (model_class_path or "").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        cls = None
    if not isinstance(cls, type):
        return command
    kind = "gan" if issubclass(cls, GANModule) else "unet" if issubclass(cls, SegmentationModule) else name.lower()
    return f"{kind}-{command}"


def set_job_type(command: str, config: Any) -> None:
    """Give every WandbLogger of a parsed `tofgan <command>` config a job type, unless the config or
    WANDB_JOB_TYPE already does. Called by `cli.TofganCLI.before_instantiate_classes`, before the logger exists."""
    trainer = config.get("trainer") or {}
    loggers = trainer.get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    model = config.get("model")
    for logger in loggers:
        if not hasattr(logger, "get") or not str(logger.get("class_path", "")).endswith("WandbLogger"):
            continue
        init = logger.get("init_args")
        if init is None:
            continue
        if not init.get("job_type") and not os.environ.get("WANDB_JOB_TYPE"):
            init["job_type"] = job_type(command, model.get("class_path") if model is not None else None)
        # wandb reads WANDB_RUN_GROUP / WANDB_TAGS once per process (its settings singleton): a later run in the same
        # process (workflows, tests) would keep the first run's group, so they are passed to the logger explicitly.
        if not init.get("group") and os.environ.get("WANDB_RUN_GROUP"):
            init["group"] = os.environ["WANDB_RUN_GROUP"]
        env_tags = [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]
        if env_tags:
            init["tags"] = [*(init.get("tags") or []), *(t for t in env_tags if t not in (init.get("tags") or []))]


def cli_config(trainer: Trainer) -> dict[str, Any] | None:
    """The merged LightningCLI configuration (None outside the CLI), as plain data."""
    for cb in trainer.callbacks:
        if isinstance(cb, SaveConfigCallback):
            import yaml

            try:
                config = yaml.safe_load(cb.parser.dump(cb.config, skip_none=False, skip_check=True))
            except (TypeError, ValueError, yaml.YAMLError) as err:  # logging must never stop a run
                log.warning("W&B: the merged config could not be dumped (%s); logging without it", err)
                return None
            config["config_files"] = [str(p) for p in (cb.config.get("config") or [])]  # not part of the dump
            return config
    return None


def paper_row(config: dict[str, Any] | None) -> str | None:
    """File name of the last `configs/experiment/…` config given, e.g. kossen2021_wgan_gp_sn."""
    paths = (config or {}).get("config_files") or []
    rows = [Path(p).stem for p in paths if "experiment" in Path(p).parts]
    return rows[-1] if rows else None


def data_arguments(trainer: Trainer, config: dict[str, Any] | None) -> dict[str, Any]:
    """The data module's arguments (from the CLI config when there is one) and its derived patch settings."""
    dm = getattr(trainer, "datamodule", None)
    data: dict[str, Any] = {}
    if config and isinstance(config.get("data"), dict):
        data = {"class_path": config["data"].get("class_path"), **(config["data"].get("init_args") or {})}
    elif dm is not None:
        data = {"class_path": f"{type(dm).__module__}.{type(dm).__qualname__}",
                **{k: getattr(dm, k) for k in ("batch_size", "num_workers", "seed") if hasattr(dm, k)}}
    settings = getattr(dm, "patch_settings", None)
    if settings is not None and hasattr(settings, "to_dict"):
        data["patch_settings"] = settings.to_dict()
    if dm is not None and hasattr(dm, "batch_size"):
        data["per_device_batch_size"] = int(dm.batch_size) // max(int(trainer.world_size or 1), 1)
    return data


def run_tags(trainer: Trainer, pl_module: LightningModule, config: dict[str, Any] | None) -> list[str]:
    tags = [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]
    row = paper_row(config)
    tags += [f"row:{row}"] if row else []
    tags += [f"model:{type(pl_module).__name__}", f"precision:{trainer.precision}"]
    return [t[:MAX_TAG] for t in tags]


def add_tags(trainer: Trainer, tags: list[str], replace_prefix: str | None = None) -> None:
    """Add tags to the started W&B runs (rank zero), dropping earlier tags that start with `replace_prefix`."""
    for logger in wandb_loggers(trainer):
        run = logger.experiment
        kept = [t for t in (run.tags or ()) if not (replace_prefix and t.startswith(replace_prefix))]
        run.tags = tuple(dict.fromkeys([*kept, *(t[:MAX_TAG] for t in tags)]))


class WandbRunInfo(Callback):
    """Fills job type, tags, config and the per-patient table of the W&B run; see the module docstring."""

    @rank_zero_only
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Lightning has started the W&B run just before this hook (job type and group are fixed by then: see
        `set_job_type`); tags can still be added, the config updated."""
        config = cli_config(trainer)
        add_tags(trainer, run_tags(trainer, pl_module, config))
        for logger in wandb_loggers(trainer):
            self._log_config(logger, trainer, config)

    @rank_zero_only
    def _log_config(self, logger: WandbLogger, trainer: Trainer, config: dict[str, Any] | None) -> None:
        record: dict[str, Any] = {"data": data_arguments(trainer, config)}
        if config is not None:
            record["cli"] = config
        logger.experiment.config.update(record, allow_val_change=True)

    @rank_zero_only
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Privacy unit of a GAN (a DP module knows it once its optimisers are configured, before this hook)."""
        if is_gan(pl_module):
            report = getattr(pl_module, "privacy_report", None)
            add_tags(trainer, privacy_tags(report() if callable(report) else None)[:1], replace_prefix="privacy:")

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """ε spent, known at the end of training (DP modules)."""
        report = getattr(pl_module, "privacy_report", None)
        if callable(report):
            add_tags(trainer, privacy_tags(report())[1:], replace_prefix="epsilon:")

    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # not trainer.log_dir: under DDP it broadcasts, and this hook runs on rank zero only (a deadlock)
        folder = Path(getattr(pl_module, "report_dir", None) or _run_dir(trainer))
        table = folder / "test_per_patient.csv"
        if not table.is_file() or not wandb_loggers(trainer):
            return
        with open(table, newline="") as fh:
            rows = list(csv.reader(fh))
        columns, data = rows[0], [[r[0], *(float(v) if v not in ("", "nan") else None for v in r[1:])] for r in rows[1:]]
        for logger in wandb_loggers(trainer):
            logger.log_table(key="test/per_patient", columns=columns, data=data)


def _run_dir(trainer: Trainer) -> str:
    """`trainer.log_dir` without its broadcast (Lightning 2.6's rule: the first logger's log_dir for CSV/TensorBoard,
    else its save_dir)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if not trainer.loggers:
        return str(trainer.default_root_dir)
    first = trainer.loggers[0]
    folder = first.log_dir if isinstance(first, (CSVLogger, TensorBoardLogger)) else first.save_dir
    return str(folder or trainer.default_root_dir)


def privacy_tags(privacy: dict[str, Any] | None) -> list[str]:
    """`privacy:<unit>` and `epsilon:<ε>` of a privacy record (checkpoint, store manifest); `privacy:none` without."""
    if not privacy or not privacy.get("private", True):
        return ["privacy:none"]
    eps = privacy.get("epsilon")
    return [f"privacy:{privacy.get('unit') or 'patch'}"] + ([f"epsilon:{float(eps):.2f}"] if eps is not None else [])


def start_tool_run(job_type: str, out_dir: str | Path, name: str, config: dict[str, Any],
                   tags: list[str] | None = None, group: str | None = None) -> Any:
    """A W&B run for a tool command (synthesize, audit, export): offline unless logged in, in `group` (default
    WANDB_RUN_GROUP), tags from WANDB_TAGS plus `tags`. The caller logs into it and calls `run.finish()`."""
    import wandb

    from cli import _wandb_logged_in
    from workflows.runs import finish_wandb

    finish_wandb()
    env_tags = [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]
    return wandb.init(project="tofgan", job_type=os.environ.get("WANDB_JOB_TYPE") or job_type,
                      group=group or os.environ.get("WANDB_RUN_GROUP") or None,
                      dir=str(Path(out_dir).resolve()), name=name, config=config,
                      tags=[t[:MAX_TAG] for t in dict.fromkeys([*env_tags, *(tags or [])])],
                      mode=None if _wandb_logged_in() else "offline")  # fmt: skip


def log_synthesis_run(store_root: str | Path, manifest: dict[str, Any], group: str | None = None) -> str:
    """W&B run of `tofgan synthesize` (job type `synthesize`): generator, sample count, privacy, the preview grid.
    Its files go beside the store (`<parent>/wandb`), not into it. Returns the run id."""
    import wandb

    root = Path(store_root)
    keys = ("source_checkpoint_sha256", "gan_class", "n_samples", "seed", "label_encoding", "label_threshold",
            "latent_dim", "privacy")  # fmt: skip
    run = start_tool_run("synthesize", root.parent, f"synthesize-{root.name}", {k: manifest.get(k) for k in keys},
                         tags=[f"model:{str(manifest.get('gan_class', '')).rsplit('.', 1)[-1]}",
                               *privacy_tags(manifest.get("privacy"))], group=group)  # fmt: skip
    if (root / "preview.png").is_file():
        run.log({"samples/preview": wandb.Image(str(root / "preview.png"))})
    run.summary.update({"n_samples": manifest.get("n_samples"), "store": str(root.resolve()),
                        **({"privacy/epsilon": manifest["privacy"].get("epsilon")} if manifest.get("privacy") else {})})
    run_id = run.id
    run.finish()
    return run_id
