"""A killed 3D U-Net `tofgan fit` (cpu_subramaniam2022_unet3d.yaml at the tests' tiny 3D size: BatchNorm running
statistics, dropout, shuffled vessel-centred 3D patches) resumed from its mid-epoch last.ckpt ends in exactly the
state of the uninterrupted run. Same procedure and helpers as the 2D runs in tests/test_resume.py."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from tests.checkpoint_state import assert_same_state, checkpoint_tensors, last_checkpoint
from tests.fixtures_cohort import write_tiny_cohort
from tests.test_resume import _finish, _start

pytestmark = pytest.mark.slow
EXPERIMENT = "cpu_subramaniam2022_unet3d.yaml"  # tiny_seg3d.yaml: 3 patients × 8 patches / batch 4 = 6 batches


def test_killed_3d_unet_fit_resumes_to_the_uninterrupted_state(tmp_path: Path) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    full = _start(EXPERIMENT, cohort, tmp_path / "full")
    killed = _start(EXPERIMENT, cohort, tmp_path / "killed", kill=True)
    _finish(killed, expect=-signal.SIGKILL)
    step_ckpt = tmp_path / "killed" / "steps" / "last.ckpt"
    progress = torch.load(step_ckpt, map_location="cpu", weights_only=True)["loops"]["fit_loop"]
    assert progress["epoch_progress"]["current"]["completed"] == 1  # saved inside the 2nd epoch …
    assert 0 < progress["epoch_loop.batch_progress"]["current"]["ready"] < 6  # … after some of its batches
    err = _finish(_start(EXPERIMENT, cohort, tmp_path / "resumed", "--ckpt_path", str(step_ckpt)))
    _finish(full)
    assert "not resumable" not in err

    want = checkpoint_tensors(last_checkpoint(tmp_path / "full"))
    got = checkpoint_tensors(last_checkpoint(tmp_path / "resumed"))
    assert any("running_mean" in k[1] for k in want if k[0] == "model") and len(want) > 40
    assert_same_state(want, got)
