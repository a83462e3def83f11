"""W&B runs carry what a dashboard compares runs by: read back from the offline run files (WANDB_MODE=offline).

A tiny GAN fit and a tiny U-Net fit + test through `cli.main` with the shipped trainer config and a W&B logger:
group (WANDB_RUN_GROUP, as workflows/SLURM scripts set it), job type, tags (paper row, model, precision, privacy
unit, WANDB_TAGS), the merged config with the data module's arguments, summary test metrics (mean and SD), the
per-patient table, sample grids as images, and the W&B run id in the run folder's run_manifest.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from callbacks.wandb_run import log_synthesis_run, privacy_tags
from cli import main
from tests.cli_helpers import TEST_CONFIGS
from tests.fixtures_cohort import write_tiny_cohort
from tests.wandb_offline import read_offline_run
from workflows.compose import CONFIGS, experiment_args
from workflows.runs import finish_wandb


def _fit_or_test(command: str, experiment: str, cohort: Path, root: Path, *extra: str, **wandb_args: Any) -> Any:
    root.mkdir(parents=True, exist_ok=True)
    logger = root / f"logger-{command}.yaml"
    logger.write_text(yaml.safe_dump({"trainer": {"logger": [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root)}},
        {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "tofgan", "save_dir": str(root), **wandb_args}},
    ]}}))  # fmt: skip
    family = "tiny_seg.yaml" if "unet" in experiment else "tiny_gan.yaml"
    args = [command, *experiment_args(CONFIGS / "experiment" / experiment, {"trainer": "trainer/cpu.yaml"}),
            "--config", str(TEST_CONFIGS / family), "--config", str(logger),
            "--data.init_args.cohort_dir", str(cohort), "--data.init_args.cache_dir", str(root.parent / "cache"),
            "--trainer.default_root_dir", str(root), *extra]  # fmt: skip
    try:
        return main(args)
    finally:
        finish_wandb()


def _runs(root: Path) -> list[Path]:
    return sorted((root / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_gan_and_unet_runs_carry_dashboard_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_RUN_GROUP", "compare-test")
    monkeypatch.setenv("WANDB_TAGS", "sweep-a")
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)

    _fit_or_test("fit", "cpu_wgan_gp.yaml", cohort, tmp_path / "gan", "--trainer.max_epochs", "1")
    (gan_dir,) = _runs(tmp_path / "gan")
    gan = read_offline_run(gan_dir)
    assert gan["group"] == "compare-test" and gan["job_type"] == "gan-fit", gan["job_type"]
    assert {"sweep-a", "row:cpu_wgan_gp", "model:WGANGP", "precision:32-true", "privacy:none"} <= set(gan["tags"])
    data = gan["config"]["data"]
    assert data["batch_size"] == 4 and data["patch_size"] == [24, 24] and data["patch_settings"]["n_vessel"] == 4
    assert gan["config"]["cli"]["model"]["class_path"].endswith("WGANGP")
    assert any(k.startswith("samples/") for k in gan["history_keys"]), gan["history_keys"]
    (manifest_path,) = (tmp_path / "gan").glob("lightning_logs/version_*/run_manifest.json")
    (record,) = json.loads(manifest_path.read_text())["wandb"]
    assert record["id"] == gan["id"] and record["job_type"] == "gan-fit" and record["group"] == "compare-test"

    root = tmp_path / "unet"
    _fit_or_test("fit", "cpu_unet.yaml", cohort, root, "--trainer.max_epochs", "1")
    (ckpt,) = root.glob("lightning_logs/version_*/checkpoints/last.ckpt")
    # A job type given to the logger (as a workflow would) wins over the derived one.
    _fit_or_test("test", "cpu_unet.yaml", cohort, root, "--ckpt_path", str(ckpt), job_type="unet-test-external")
    fit_run, test_run = (read_offline_run(d) for d in _runs(root))
    assert fit_run["job_type"] == "unet-fit" and test_run["job_type"] == "unet-test-external"
    assert {"row:cpu_unet", "model:SegmentationModule"} <= set(test_run["tags"])
    for key in ("test/dsc_mean", "test/dsc_std", "test/hd95_mean", "test/hd95_std", "test/bavd_mean", "test/bavd_std"):
        assert key in test_run["summary"], sorted(test_run["summary"])
    assert test_run["summary"]["test/per_patient/_type"] == "table-file"
    assert test_run["summary"]["test/per_patient/nrows"] == 2  # the two test patients
    (table,) = (_runs(root)[1] / "files").rglob("per_patient*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][:2] == ["patient_id", "dsc"] and len(content["data"]) == 2


@pytest.mark.slow  # W&B's service start-up alone takes ~10 s here
def test_synthesis_run_carries_job_type_group_privacy_and_preview(tmp_path: Path) -> None:
    from matplotlib.image import imsave
    import numpy as np

    store = tmp_path / "synthetic" / "wgan"
    store.mkdir(parents=True)
    imsave(store / "preview.png", np.zeros((8, 8)), cmap="gray")
    privacy = {"private": True, "unit": "patient", "epsilon": 6.8312, "delta": 1e-5}
    manifest = {"gan_class": "lightning_modules.dp_wgan.DPWGAN", "n_samples": 100, "seed": 0, "privacy": privacy}
    run_id = log_synthesis_run(store, manifest, group="dp-sweep-x")
    (run_dir,) = (tmp_path / "synthetic" / "wandb").glob(f"offline-run-*-{run_id}")
    assert not (store / "wandb").exists()  # beside the store, not inside it
    run = read_offline_run(run_dir)
    assert run["job_type"] == "synthesize" and run["group"] == "dp-sweep-x"
    assert {"model:DPWGAN", "privacy:patient", "epsilon:6.83"} <= set(run["tags"])
    assert run["summary"]["n_samples"] == 100 and run["summary"]["privacy/epsilon"] == pytest.approx(6.8312)
    assert run["config"]["privacy"]["unit"] == "patient" and "samples/preview/_type" in run["summary"]


def test_privacy_tags() -> None:
    assert privacy_tags(None) == ["privacy:none"]
    assert privacy_tags({"private": False, "unit": "patch", "epsilon": None}) == ["privacy:none"]
    assert privacy_tags({"private": True, "unit": "patch", "epsilon": 1.234}) == ["privacy:patch", "epsilon:1.23"]
