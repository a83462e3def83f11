"""The 3D U-Net under DDP with two CPU processes (gloo) through the `tofgan` console script
(cpu_subramaniam2022_unet3d.yaml at the tests' tiny 3D size): BatchNorm nets and the sharded 3D patch loader on two
ranks. (Per-patient test metrics under DDP are the dimension-free code that tests/test_ddp.py checks for 1 = 2
processes.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort
from tests.test_ddp import DDP, TOFGAN

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp")]
EXPERIMENT = CONFIGS / "experiment" / "cpu_subramaniam2022_unet3d.yaml"


def test_unet3d_fits_under_ddp(tmp_path: Path) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    args = [*cpu_args(EXPERIMENT, cohort, tmp_path), "--data.init_args.n_train", "2", "--trainer.max_epochs", "1"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([TOFGAN, "fit", *args, *DDP], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # two ranks
    (ckpt,) = tmp_path.rglob("last.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    # 2 patients × 8 patches = 16, global batch 4 = 2 per rank, 8 patches per rank: 4 steps (as on one process)
    assert state["global_step"] == 4
    tracked = {k: v for k, v in state["state_dict"].items() if k.endswith("num_batches_tracked")}
    assert tracked and all(int(v) == 4 for v in tracked.values())  # every BatchNorm updated on each rank's step
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
