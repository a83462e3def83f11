"""`tofgan demo` through the CLI on the tiny fixture cohort: every step runs and the report holds both rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cli import main
from tests.cli_helpers import TEST_CONFIGS
from tests.fixtures_cohort import write_tiny_cohort

pytestmark = pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*")


@pytest.mark.slow
def test_tiny_demo_writes_the_report(tmp_path):
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    common = ["--data.init_args.cohort_dir", str(cohort), "--data.init_args.cache_dir", str(tmp_path / "cache"),
              "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1"]  # fmt: skip
    out = tmp_path / "demo"
    report = main(["demo", "--out_dir", str(out), "--n_synthetic", "16",
                   "--gan_args", str(["--config", str(TEST_CONFIGS / "tiny_gan.yaml"), *common]),
                   "--unet_args", str(["--config", str(TEST_CONFIGS / "tiny_seg.yaml"), *common])])  # fmt: skip
    with open(report / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["training data"], r["vessels"]) for r in rows] == [
        ("synthetic (WGAN-GP-SN)", "all"), ("synthetic (WGAN-GP-SN)", "intracranial"), ("real", "all"),
        ("real", "intracranial")]  # fmt: skip
    assert all(r["patients"] == "2" and " ± " in r["DSC"] for r in rows)
    readme = (report / "README.md").read_text()
    assert "| synthetic (WGAN-GP-SN) | all |" in readme and (report / "gan_losses.png").is_file()
    assert (report / "samples.png").is_file()


GAN3D = "3D WGAN-GP, generator EMA 0.998"  # cpu_demo3d_gan.yaml: GP critic, sampled from the weight average


@pytest.mark.slow
def test_tiny_3d_demo_writes_the_report(tmp_path):
    """`tofgan demo --dims 3` at tiny size: 3D GAN, streamed synthesis, 3D U-Nets, 3D sliding-window tests, report."""
    from matplotlib.image import imread

    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    common = ["--data.init_args.cohort_dir", str(cohort), "--data.init_args.cache_dir", str(tmp_path / "cache"),
              "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1"]  # fmt: skip
    seg = ["--config", str(TEST_CONFIGS / "tiny_seg3d.yaml"), *common, "--data.init_args.patch_size", "[32, 32, 8]",
           "--model.init_args.roi_size", "[32, 32, 8]"]  # the tiny 3D GAN's patch size
    report = main(["demo", "--dims", "3", "--out_dir", str(tmp_path / "demo3d"), "--n_synthetic", "12",
                   "--gan_args", str(["--config", str(TEST_CONFIGS / "tiny_gan3d.yaml"), *common]),
                   "--unet_args", str(seg)])  # fmt: skip
    with open(report / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["training data"], r["vessels"]) for r in rows] == [
        (f"synthetic ({GAN3D})", "all"), (f"synthetic ({GAN3D})", "intracranial"), ("real", "all"),
        ("real", "intracranial")]  # fmt: skip
    assert all(r["patients"] == "2" and " ± " in r["DSC"] and r["BAVD_VOX"] for r in rows)
    assert all(r["U-Net epoch"] == "0" for r in rows)  # each U-Net at its best-validation epoch (one here)
    store = tmp_path / "demo3d" / "synthetic" / "last"  # one epoch: no scored snapshot, the last checkpoint alone
    assert [p.name for p in store.parent.iterdir() if (p / "manifest.json").is_file()] == ["last"]  # the only store
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["n_samples"] == 12 and manifest["patch_size"] == [32, 32, 8]
    assert manifest["generator_ema"] == 0.998 and manifest["generator"]["init_args"]["upsample"] == "subpixel"
    readme = (report / "README.md").read_text()
    assert "Synthetic / real intracranial DSC" in readme and "| synthetic | 12 |" in readme
    assert "| real (GAN training patches) | 36 |" in readme  # 3 patients × (2×2×2 grid + 4 vessel-centred)
    figure = imread(report / "samples3d.png")
    assert figure.ndim == 3 and figure.shape[1] > figure.shape[0] and (report / "gan_losses.png").is_file()


def test_3d_demo_synthesises_from_the_scored_snapshots_of_the_second_half(tmp_path):
    """`workflows.demo3d.select_gan`: every snapshot of the run's second half with a label vessel-fraction score, named
    in the report with its score; the last checkpoint alone when the run scored no snapshot."""
    from types import SimpleNamespace

    from workflows.demo3d import GAN_SELECT, select_gan, selection_lines

    run = tmp_path / "gan" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    for epoch in (4, 9, 14, 19):
        (run / "checkpoints" / f"epoch={epoch}.ckpt").write_bytes(b"fake")
    last = run / "checkpoints" / "last.ckpt"
    rows = ["epoch,step,val/label_w1_vessel_fraction", "4,10,0.001", "9,20,0.02", "14,30,0.005", "19,40,0.03"]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    cli = SimpleNamespace(trainer=SimpleNamespace(loggers=[SimpleNamespace(log_dir=str(run))], max_epochs=20))
    chosen, selection = select_gan(cli, last)
    assert chosen == [run / "checkpoints" / "epoch=14.ckpt", run / "checkpoints" / "epoch=19.ckpt"]  # not 4 or 9
    assert selection["rule"] == GAN_SELECT and [c["epoch"] for c in selection["candidates"]] == [14, 19]
    lines = "\n".join(selection_lines(selection))
    assert "epochs 14, 19" in lines and "| 14 | 0.0050 |" in lines and "| 19 | 0.0300 |" in lines
    (run / "metrics.csv").write_text("epoch,step,train/loss\n0,1,1.0\n")
    chosen, selection = select_gan(cli, last)
    assert chosen == [last] and selection["rule"] == "last" and "never logged" in selection["why"]


def test_3d_demo_pools_equal_shares_of_each_snapshot(tmp_path, monkeypatch):
    """`synthesize_snapshots`: 7 pairs from 3 snapshots → 3 / 2 / 2, a store and a seed of its own each, an earlier
    run's stores cleared; `store_patches` draws equal shares from the pooled stores."""
    import numpy as np

    import workflows.synthesize
    from datamodules.patch_store import write_patch_store
    from workflows.demo3d import store_patches, synthesize_snapshots

    calls = []
    def fake_synthesize(ckpt, out, n_samples, seed, overwrite, wandb_group):
        calls.append((Path(ckpt).name, Path(out).name, n_samples, seed))
        value = float(len(calls))  # each store's patches carry its number
        images = np.full((n_samples, 1, 4, 4, 2), value, np.float32)
        write_patch_store(out, images, (images > 1.5).astype(np.uint8), {"source": ckpt})
        return out
    monkeypatch.setattr(workflows.synthesize, "synthesize", fake_synthesize)
    root = tmp_path / "synthetic"
    (root / "epoch=4").mkdir(parents=True)  # an earlier run's store
    ckpts = [tmp_path / f"epoch={e}.ckpt" for e in (14, 19, 24)]
    stores = synthesize_snapshots(ckpts, root, 7, seed=3)
    assert calls == [("epoch=14.ckpt", "epoch=14", 3, 3), ("epoch=19.ckpt", "epoch=19", 2, 4),
                     ("epoch=24.ckpt", "epoch=24", 2, 5)]
    assert sorted(p.name for p in root.iterdir()) == ["epoch=14", "epoch=19", "epoch=24"]
    images, labels = store_patches(stores, 6, seed=0)
    assert sorted(images[:, 0, 0, 0, 0].tolist()) == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0] and labels.shape == images.shape
