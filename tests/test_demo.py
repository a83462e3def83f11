"""`tofgan demo` through the CLI on the tiny fixture cohort: every step runs and the report holds both rows."""

from __future__ import annotations

import csv
import json

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
        ("synthetic (3D WGAN-GP-SN)", "all"), ("synthetic (3D WGAN-GP-SN)", "intracranial"), ("real", "all"),
        ("real", "intracranial")]  # fmt: skip
    assert all(r["patients"] == "2" and " ± " in r["DSC"] and r["BAVD_VOX"] for r in rows)
    store = tmp_path / "demo3d" / "synthetic"
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["n_samples"] == 12 and manifest["patch_size"] == [32, 32, 8]
    readme = (report / "README.md").read_text()
    assert "Synthetic / real intracranial DSC" in readme and "| synthetic | 12 |" in readme
    assert "| real (GAN training patches) | 36 |" in readme  # 3 patients × (2×2×2 grid + 4 vessel-centred)
    figure = imread(report / "samples3d.png")
    assert figure.ndim == 3 and figure.shape[1] > figure.shape[0] and (report / "gan_losses.png").is_file()
