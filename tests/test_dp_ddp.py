"""DP-WGAN under DDP with two CPU processes (gloo): opacus' distributed optimiser adds the noise once (rank 0) and
all-reduces, so the ranks stay bit-identical and the noise std of the global update is σC/B_global."""

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
ROOT = Path(__file__).resolve().parents[1]


def _ddp_fit(cohort: Path, root: Path, *extra: str) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    args = cpu_args(CONFIGS / "experiment" / "cpu_dp_wgan.yaml", cohort, root)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(ROOT), "DP_DUMP_DIR": str(root)}  # fmt: skip
    cmd = [TOFGAN, "fit", *args, *DDP, "--trainer.callbacks+", "tests.dp_helpers.DumpCritic",
           "--model.init_args.dp_noise_seed", "0", *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [torch.load(root / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("dp_ddp_cohort"), n_patients=6)


def test_two_ranks_stay_bit_identical_and_count_the_same_steps(cohort: Path, tmp_path: Path) -> None:
    r0, r1 = _ddp_fit(cohort, tmp_path, "--trainer.max_steps", "8", "--data.init_args.batch_size", "4")
    assert torch.equal(r0["end"], r1["end"]) and not torch.equal(r0["start"], r0["end"])
    assert r0["history"] == r1["history"] and r0["history"][0][2] == r0["steps"]["critic"] > 1


def test_noise_is_added_once_across_ranks(cohort: Path, tmp_path: Path) -> None:
    sigma, batch = 1000.0, 4  # the noise dominates the O(1) clipped and public terms
    r0, r1 = _ddp_fit(cohort, tmp_path, "--trainer.max_steps", "1", "--data.init_args.batch_size", str(batch),
                      "--model.init_args.noise_multiplier", str(sigma), "--model.init_args.weight_clip", "null",
                      "--model.init_args.critic_optimizer", "torch.optim.SGD", "--model.init_args.critic_optimizer.lr", "1.0")  # fmt: skip
    update = r0["start"] - r0["end"]
    assert torch.equal(r0["end"], r1["end"])
    # once: σC/B_global = 250; noise on every rank would give √2 times that
    assert float(update.std()) == pytest.approx(sigma * 1.0 / batch, rel=0.05)
