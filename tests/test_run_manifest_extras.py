"""run_manifest.json merges `manifest_extras()` of the LightningModule (recorded again at the end of fit, when
e.g. privacy spent is final) and of callbacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks.run_manifest import RunManifest


class _ModelWithExtras(BoringModel):
    def manifest_extras(self) -> dict[str, Any]:
        return {"privacy": {"epsilon": float(self.global_step)}}


class _CallbackWithExtras(Callback):
    def manifest_extras(self) -> dict[str, Any]:
        return {"resume": {"ckpt_path": "somewhere"}}


def test_extras_of_module_and_callbacks_are_merged(tmp_path: Path) -> None:
    trainer = Trainer(default_root_dir=tmp_path, max_steps=3, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[RunManifest(), _CallbackWithExtras()])  # fmt: skip
    trainer.fit(_ModelWithExtras())
    record = json.loads((tmp_path / "run_manifest.json").read_text())
    assert record["privacy"] == {"epsilon": 3.0}  # the value at the end of fit, not at its start
    assert record["resume"] == {"ckpt_path": "somewhere"} and record["stage"] == "fit"
