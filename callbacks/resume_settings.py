"""Refuses to resume a run with settings that define what it trains, unless the user allows each change.

`tofgan fit --ckpt_path last.ckpt` rebuilds the model and data from the configs given now, not from the
checkpoint: a changed label encoding, threshold, network width, n_critic, optimiser or patch size would
silently continue another experiment from the first one's weights (or fail deep inside a state dict).
`ResumeSettingsCheck` is the LightningCLI config-saving callback of `tofgan` (it still writes config.yaml):
it stores the model, data and seed settings in every full checkpoint and, when a fit resumes, compares
them with the current ones. Differences are refused with the keys named, unless listed in
`--allow_resume_changes key1,key2` (a key or a parent of keys; `init_args.` may be left out); allowed
changes are recorded in run_manifest.json through `manifest_extras`.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

CHECKPOINT_KEY = "tofgan_resume_settings"
#: Config sections that define what a run trains.
DEFINING_SECTIONS = ("seed_everything", "model", "data")
#: Settings inside those sections that change how, or where from, not what is trained.
NOT_DEFINING = (
    "data.num_workers", "data.cache_dir",
    "model.report_dir", "model.overlap", "model.sw_batch_size", "model.sw_mode", "model.slice_batch",
    "model.pretrained",  # initial weights only: the checkpoint's weights replace them
)  # fmt: skip


class ResumeSettingsError(ValueError):
    """A resumed fit whose model-defining settings differ from the checkpoint's."""


def _short(key: str) -> str:
    return key.replace(".init_args.", ".").replace(".init_args", "")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists and scalars are leaves; other objects become their repr."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: [flatten(v)[""] if not isinstance(v, dict) else flatten(v) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {prefix: value}
    return {prefix: repr(value)}


def defining_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Flat {dotted key: value} of the sections in DEFINING_SECTIONS, without NOT_DEFINING keys."""
    flat = flatten({k: config.get(k) for k in DEFINING_SECTIONS})
    return {k: v for k, v in flat.items() if not is_allowed(k, list(NOT_DEFINING))}


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, list[Any]]:
    """{key: [checkpoint value, current value]} for every setting both hold with different values, and every
    class_path that differs. A key only one side holds is an argument another version of a class has (e.g. a
    new torch optimiser option with its default); a changed class shows in its class_path."""
    keys = (set(saved) & set(now)) | {k for k in set(saved) ^ set(now) if k.endswith("class_path")}
    return {k: [saved.get(k), now.get(k)] for k in sorted(keys) if saved.get(k) != now.get(k)}


def is_allowed(key: str, allowed: list[str]) -> bool:
    return any(_short(key) == _short(a) or _short(key).startswith(_short(a) + ".") for a in allowed)


def parse_allowed(value: str | list[str] | None) -> list[str]:
    if not value:
        return []
    items = value if isinstance(value, list) else value.split(",")
    return [s.strip().removeprefix("--") for s in items if s.strip()]


class ResumeSettingsCheck(SaveConfigCallback):
    """LightningCLI's SaveConfigCallback plus the resume check of the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.config.as_dict() if hasattr(self.config, "as_dict") else dict(self.config)
        self.settings = defining_settings(config)
        self.allowed = parse_allowed(config.get("allow_resume_changes"))
        self.resume_record: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.settings

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != "fit":
            return
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            rank_zero_warn("the checkpoint holds no tofgan settings (written by another tool or an older "
                           "version): resuming without checking that the model and data settings match")  # fmt: skip
            return
        changed = changed_settings(saved, self.settings)
        refused = [k for k in changed if not is_allowed(k, self.allowed)]
        if refused:
            lines = "\n".join(f"  {k}: {changed[k][0]!r} in the checkpoint, {changed[k][1]!r} now" for k in refused)
            raise ResumeSettingsError(
                f"{trainer.ckpt_path}: resuming with settings that define the model or data changed:\n{lines}\n"
                "Restore them, or accept the change explicitly: "
                f"--allow_resume_changes {','.join(map(_short, refused))}"
            )
        self.resume_record = {"ckpt_path": str(trainer.ckpt_path), "allowed": self.allowed, "changed": changed}

    def manifest_extras(self) -> dict[str, Any]:
        """For run_manifest.json: the checkpoint resumed from and the setting changes the user allowed."""
        return {"resume": self.resume_record} if self.resume_record is not None else {}
