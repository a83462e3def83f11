"""DDP with two CPU processes (gloo) through the `tofgan` console script, as a SLURM job would run it.

Lightning's DDP launcher re-executes the command line for the second rank, so these run in subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp")]
TOFGAN = str(Path(sys.executable).with_name("tofgan"))
DDP = ["--trainer.strategy", "ddp_find_unused_parameters_true", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def run_tofgan(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([TOFGAN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("ddp_cohort"), n_patients=6)


def test_wgan_fits_under_ddp(cohort: Path, tmp_path: Path) -> None:
    args = cpu_args(CONFIGS / "experiment" / "cpu_wgan_gp_sn.yaml", cohort, tmp_path)
    run_tofgan(["fit", *args, *DDP, "--trainer.max_steps", "6", "--data.init_args.batch_size", "8"], tmp_path)
    assert list(tmp_path.rglob("last.ckpt")), "no checkpoint written"


def test_unet_test_metrics_equal_with_one_and_two_processes(cohort: Path, tmp_path: Path) -> None:
    args = cpu_args(CONFIGS / "experiment" / "cpu_unet.yaml", cohort, tmp_path)
    run_tofgan(["fit", *args, "--trainer.max_epochs", "1", "--data.init_args.n_test", "3", "--data.init_args.n_train", "2"], tmp_path)
    ckpt = next(tmp_path.rglob("last.ckpt"))
    summaries = []
    for name, extra in (("one", []), ("two", DDP)):
        report = tmp_path / f"report-{name}"
        run_tofgan(["test", *args, *extra, "--ckpt_path", str(ckpt), "--data.init_args.n_test", "3", "--data.init_args.n_train", "2",
                    "--model.init_args.report_dir", str(report)], tmp_path)  # fmt: skip
        summaries.append(json.loads((report / "test_summary.json").read_text())["results"]["all"])
    one, two = summaries
    assert one["n_patients"] == two["n_patients"] == 3
    for key in ("dsc_mean", "dsc_std", "hd95_mean", "bavd_mean"):
        assert one[key] == pytest.approx(two[key], rel=1e-6, abs=1e-9), key
