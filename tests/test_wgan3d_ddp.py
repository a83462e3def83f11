"""The 3D GAN under DDP with two CPU processes (gloo) through the `tofgan` console script, bf16-mixed with the
fp32 critic (cpu_subramaniam2022_sn_mp.yaml at the tests' tiny 3D size)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort
from tests.test_ddp import DDP, TOFGAN

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp")]


def test_wgan3d_fits_under_ddp(tmp_path: Path) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    args = cpu_args(CONFIGS / "experiment" / "cpu_subramaniam2022_sn_mp.yaml", cohort, tmp_path)  # tiny_gan3d.yaml
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    ema = ["--model.init_args.generator_ema", "0.99"]  # the frozen weight average must stay out of DDP's reduction
    proc = subprocess.run([TOFGAN, "fit", *args, *DDP, "--trainer.max_steps", "4", "--trainer.max_epochs", "1", *ema],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert list(tmp_path.rglob("last.ckpt")), "no checkpoint written"
    out = proc.stdout + proc.stderr
    assert "Using bfloat16 Automatic Mixed Precision" in out and "MEMBER: 2/2" in out  # bf16, two ranks
