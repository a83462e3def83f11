"""`tofgan demo` through the CLI on the tiny fixture cohort: every step runs and the report holds both rows."""

from __future__ import annotations

import csv

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
