"""A real SLURM cluster (munge, slurmctld, slurmd on this machine; tests/slurm_cluster.py) runs
scripts/slurm_cpu.sbatch, the CPU twin of scripts/slurm_ddp.sbatch (same body, scripts/slurm_fit.sh), for the tiny
WGAN-GP with 2 tasks over gloo, twice:

- uninterrupted: both ranks run, the run folder holds what the README lists;
- pre-empted: at training batch PREEMPT_AT, `scancel --signal=USR1` (what `--signal=USR1@T` sends before the time
  limit) reaches both tasks; callbacks.slurm_requeue saves `hpc_ckpt_1.ckpt` through Lightning's auto-requeue and the
  job is requeued; the requeued job (same id, restart 1) resumes from it in a new run folder and ends with exactly the
  uninterrupted job's weights and optimiser states.

The layout check (allocation vs trainer.devices / num_nodes) runs without a cluster (DRY_RUN).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.checkpoint_state import assert_same_state, checkpoint_tensors
from tests.fixtures_cohort import write_tiny_cohort
from tests.slurm_cluster import LocalSlurm, unavailable_reason

pytestmark = pytest.mark.xdist_group("ddp")  # two DDP processes: not beside the other DDP tests
REPO = Path(__file__).resolve().parents[1]
TOFGAN = str(Path(sys.executable).with_name("tofgan"))
# 6 batches per epoch and rank (24 patches, global batch 4); USR1 at batch 8, saved at the next check (batch 10 with
# configs/trainer/slurm.yaml): inside epoch 2.
EPOCHS, PREEMPT_AT = 3, 8


@pytest.fixture(scope="module")
def cluster() -> LocalSlurm:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    slurm = LocalSlurm()
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()


def _submit(cluster: LocalSlurm, root: Path, cohort: Path, preempt: bool) -> str:
    root.mkdir(parents=True)
    extra = []
    if preempt:
        fragment = root / "preempt.yaml"
        fragment.write_text("trainer:\n  callbacks+:\n    - class_path: tests.slurm_signal.SignalJobAtBatch\n"
                            f"      init_args: {{total_batch: {PREEMPT_AT}}}\n")
        extra = [str(fragment)]
    env = {**os.environ, "TOFGAN": TOFGAN, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline",
           "TOFGAN_JOB_ROOT": str(root / "jobs"), "PYTHONWARNINGS": "ignore"}
    return cluster.submit(
        REPO / "scripts" / "slurm_cpu.sbatch", "configs/experiment/cpu_wgan_gp.yaml", "tests/configs/tiny_gan.yaml",
        *extra, "--data.init_args.cohort_dir", str(cohort), "--data.init_args.cache_dir", str(root.parent / "cache"),
        "--trainer.logger.init_args.save_dir", str(root), "--trainer.max_epochs", str(EPOCHS),
        options=["--ntasks-per-node=2", "--cpus-per-task=1", "--time=10", f"--output={root}/slurm-%j.out"],
        cwd=REPO, env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_sbatch_ddp_job_and_preempted_requeued_job_end_with_the_same_weights(cluster: LocalSlurm,
                                                                             tmp_path: Path) -> None:  # fmt: skip
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    full_id = _submit(cluster, tmp_path / "full", cohort, preempt=False)
    pre_id = _submit(cluster, tmp_path / "preempted", cohort, preempt=True)
    full = cluster.wait(full_id, timeout_s=400)  # generous: CI runs other tests beside it
    pre = cluster.wait(pre_id, timeout_s=400, restarts=1)
    out_full = (tmp_path / "full" / f"slurm-{full_id}.out").read_text(errors="replace")
    out_pre = (tmp_path / "preempted" / f"slurm-{pre_id}.out").read_text(errors="replace")
    assert full["JobState"] == "COMPLETED", out_full[-4000:]
    assert pre["JobState"] == "COMPLETED" and pre["Restarts"] == "1", (pre, out_pre[-4000:])

    # Both ranks ran, in one DDP group of two, and the run folder is as the README says.
    for rank in (0, 1):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in out_full
    run = tmp_path / "full" / "lightning_logs" / "version_0"
    for name in ("config.yaml", "run_manifest.json", "metrics.csv", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "run_manifest.json").read_text())["world_size"] == 2

    # Pre-emption: Lightning's hpc checkpoint in the job's folder, a second run folder that resumed from it.
    hpc = tmp_path / "preempted" / "jobs" / pre_id / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), sorted(p.name for p in (tmp_path / "preempted").rglob("*"))
    progress = torch.load(hpc, map_location="cpu", weights_only=True)["loops"]["fit_loop"]
    assert progress["epoch_progress"]["current"]["completed"] == 1  # saved inside the 2nd epoch …
    assert 0 < progress["epoch_loop.batch_progress"]["current"]["ready"] < 6  # … after some of its batches
    assert "restart 1:" in out_pre
    resumed = tmp_path / "preempted" / "lightning_logs" / "version_1"
    manifest = json.loads((resumed / "run_manifest.json").read_text())
    assert manifest["resume"]["ckpt_path"] == str(hpc), manifest.get("resume")

    assert_same_state(checkpoint_tensors(run / "checkpoints" / "last.ckpt"),
                      checkpoint_tensors(resumed / "checkpoints" / "last.ckpt"))


@pytest.mark.parametrize(("kind", "env", "args", "message"), [
    ("gpu", {"SLURM_NTASKS_PER_NODE": "4", "SLURM_GPUS_PER_NODE": "gpu:2"}, [], "--gpus-per-node=2 but --ntasks-per-node=4"),
    ("cpu", {"SLURM_NTASKS_PER_NODE": "2"}, ["--trainer.devices", "4"], "trainer.devices=4 but --ntasks-per-node=2"),
    ("cpu", {"SLURM_NTASKS_PER_NODE": "2"}, ["--trainer.num_nodes=2"], "trainer.num_nodes=2 but --nodes=1"),
    ("cpu", {"SLURM_NTASKS": "3", "SLURM_NTASKS_PER_NODE": "2"}, [], "--ntasks=3 but --nodes=1"),
    ("cpu", {}, [], "set --ntasks-per-node"),
])  # fmt: skip
def test_sbatch_layout_that_disagrees_with_the_trainer_stops_before_starting(kind: str, env: dict[str, str],
                                                                            args: list[str], message: str) -> None:  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", "scripts/slurm_fit.sh", kind, "configs/experiment/cpu_wgan_gp.yaml", *args],
                          cwd=REPO, env={**base, "SLURM_NNODES": "1", "DRY_RUN": "1", **env},
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_sbatch_passes_the_allocation_and_expands_the_experiment() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env = {**base, "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_GPUS_PER_NODE": "4", "DRY_RUN": "1",
           "SLURM_JOB_ID": "77"}
    proc = subprocess.run(["bash", "scripts/slurm_fit.sh", "gpu", "configs/experiment/kossen2021_wgan_gp_sn.yaml"],
                          cwd=REPO, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    cmd = proc.stdout
    for part in ("--config configs/trainer/gpu.yaml --config configs/trainer/ddp.yaml --config configs/trainer/slurm.yaml",
                 "--config configs/model/wgan_gp_sn.yaml --config configs/data/pegasus_gan.yaml",
                 "--trainer.devices 4 --trainer.num_nodes 2", "--trainer.default_root_dir outputs/slurm/77"):
        assert part in cmd, cmd
    assert cmd.count("trainer/gpu.yaml") == 1 and "logger/wandb.yaml" in cmd


def test_ckpt_starts_a_job_but_its_own_hpc_checkpoint_wins_after_a_requeue(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env = {**base, "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_ID": "9", "DRY_RUN": "1",
           "TOFGAN_JOB_ROOT": str(tmp_path), "CKPT": "runs/a/last.ckpt"}

    def command() -> str:
        return subprocess.run(["bash", "scripts/slurm_fit.sh", "cpu", "configs/experiment/cpu_wgan_gp.yaml"], cwd=REPO,
                              env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip

    assert "--ckpt_path runs/a/last.ckpt" in command() and f"--trainer.default_root_dir {tmp_path}/9" in command()
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "hpc_ckpt_1.ckpt").write_bytes(b"")  # this job was pre-empted once: Lightning resumes from it
    assert "--ckpt_path" not in command()


def test_requeue_checkpoint_with_a_foreign_class_path_is_refused() -> None:
    from types import SimpleNamespace

    from callbacks.slurm_requeue import SlurmPreemption
    from lightning_modules.checkpoints import UnsafeCheckpointError

    trainer = SimpleNamespace(ckpt_path="/x/outputs/slurm/7/hpc_ckpt_2.ckpt")
    bad = {"hyper_parameters": {"generator": {"class_path": "os.system", "init_args": {}}}}
    with pytest.raises(UnsafeCheckpointError, match="hpc_ckpt_2.ckpt"):
        SlurmPreemption().on_load_checkpoint(trainer, None, bad)  # type: ignore[arg-type]
    good = {"hyper_parameters": {"generator": {"class_path": "networks.gan2d.Generator2D", "init_args": {}}}}
    SlurmPreemption().on_load_checkpoint(trainer, None, good)  # type: ignore[arg-type]
