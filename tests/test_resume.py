"""A killed `tofgan fit` resumed from its last.ckpt ends in exactly the state of the uninterrupted run.

What a user does, in subprocesses: `tofgan fit` with the shipped CPU trainer config (shuffled training data,
dropout and the paper's augmentation in the U-Net), killed with SIGKILL in the middle of its second epoch, then `tofgan fit … --ckpt_path
last.ckpt`. The kill comes from `tests.resume_kill.KillAtBatch` at a fixed batch so the test is deterministic;
a second `ResumeCheckpoint` saving every 4 batches into `steps/` provides the mid-epoch checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.checkpoint_state import assert_same_state, checkpoint_tensors, last_checkpoint
from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
EPOCHS, KILL_AT, SAVE_EVERY = 3, 10, 4  # 6 batches per epoch: killed at batch 4 of epoch 1, saved after its 2nd


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("resume_cohort"), n_patients=6)


def _start(experiment: str, cohort: Path, run: Path, *extra: str, kill: bool = False) -> subprocess.Popen:
    run.mkdir(parents=True)
    callbacks = [f"{{class_path: callbacks.checkpointing.ResumeCheckpoint, init_args: "
                 f"{{dirpath: '{run / 'steps'}', every_n_train_batches: {SAVE_EVERY}}}}}"]
    if kill:
        callbacks.append(f"{{class_path: tests.resume_kill.KillAtBatch, init_args: {{total_batch: {KILL_AT}}}}}")
    fragment = run / "test_callbacks.yaml"
    fragment.write_text("trainer:\n  callbacks+:\n" + "".join(f"    - {c}\n" for c in callbacks))
    args = ["fit", *cpu_args(CONFIGS / "experiment" / experiment, cohort, run), "--config", str(fragment),
            "--trainer.max_epochs", str(EPOCHS), *extra]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", "import cli; cli.main()", *args], cwd=run, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _finish(proc: subprocess.Popen, expect: int = 0) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    return err


# the GAN with the generator's weight average: its state (weights, BN statistics, counter) must resume too
@pytest.mark.parametrize(("experiment", "settings"), [("cpu_wgan_gp.yaml", ["--model.init_args.generator_ema", "0.9"]),
                                                      ("cpu_unet.yaml", ["--data.init_args.augment", "true"])])
def test_killed_fit_resumes_to_the_uninterrupted_state(experiment: str, settings: list[str], cohort: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    full = _start(experiment, cohort, tmp_path / "full", *settings)
    killed = _start(experiment, cohort, tmp_path / "killed", *settings, kill=True)
    _finish(killed, expect=-signal.SIGKILL)
    step_ckpt = tmp_path / "killed" / "steps" / "last.ckpt"
    progress = torch.load(step_ckpt, map_location="cpu", weights_only=True)["loops"]["fit_loop"]
    assert progress["epoch_progress"]["current"]["completed"] == 1  # saved inside the 2nd epoch …
    assert 0 < progress["epoch_loop.batch_progress"]["current"]["ready"] < 6  # … after some of its batches
    resumed = _start(experiment, cohort, tmp_path / "resumed", *settings, "--ckpt_path", str(step_ckpt))
    err = _finish(resumed)
    _finish(full)
    assert "not resumable" not in err

    want = checkpoint_tensors(last_checkpoint(tmp_path / "full"))
    got = checkpoint_tensors(last_checkpoint(tmp_path / "resumed"))
    assert len(want) > 40
    print(f"{experiment}: {len(want)} tensors compared, max |Δ| {assert_same_state(want, got)}")
