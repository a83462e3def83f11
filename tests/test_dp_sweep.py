"""`dp_sweep` end to end on the tiny cohort: real and non-DP references, a patch-level and a pretrained patient-level
row, selection among snapshots, CSV/markdown/PNG outputs, and resume from the state file."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import workflows.dp_sweep as sweep
from tests.cli_helpers import TEST_CONFIGS
from tests.fixtures_cohort import write_tiny_cohort

pytestmark = pytest.mark.slow


def test_sweep_rows_and_privacy_args() -> None:
    rows = sweep.sweep_rows([3.0], [0.65], [7.0], [7.0], True, [1.0])
    assert [r["name"] for r in rows] == ["non-DP (σ=∞)", "patch σ=0.65", "patch ε=3", "patch ε=1 pretrained", "patient ε=7",
                                         "patient ε=7 pretrained"]  # fmt: skip
    assert rows[3]["unit"] == "patch" and rows[3]["pretrained"] and rows[3]["target_epsilon"] == 1.0
    rows = [r for r in rows if r["name"] != "patch ε=1 pretrained"]
    assert sweep.privacy_args(rows[0], None) == ["--model.init_args.noise_multiplier", ".inf"]
    assert sweep.privacy_args(rows[4], "pre.ckpt")[-4:] == ["--model.init_args.target_epsilon", "7.0",
                                                            "--model.init_args.pretrained", "pre.ckpt"]


def test_tiny_sweep_end_to_end_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    data = ["--data.init_args.cohort_dir", str(cohort), "--data.init_args.cache_dir", str(tmp_path / "cache")]
    gan_args = ["--config", str(TEST_CONFIGS / "tiny_gan.yaml"), *data, "--trainer.max_epochs", "5",
                "--data.init_args.steps_per_epoch", "6", "--model.init_args.fake_term", "joint"]  # fmt: skip
    unet_args = ["--config", str(TEST_CONFIGS / "tiny_seg.yaml"), *data, "--trainer.max_epochs", "1"]
    kwargs = dict(out_dir=str(tmp_path / "sweep"), patch_epsilons=[20.0], patient_epsilons=[], pretrained_epsilons=[60.0],
                  candidates=1, n_synthetic=24, gan_args=gan_args, unet_args=unet_args, wandb=False,
                  pretrained_args=["--model.init_args.critic_trainable", "head_and_norms"])  # fmt: skip
    out = sweep.dp_sweep(**kwargs)
    rows = {r["row"]: r for r in csv.DictReader(open(out / "dp_sweep.csv"))}
    assert set(rows) == {"real", "non-DP (σ=∞)", "public only (ε=0)", "patch ε=20", "patient ε=60 pretrained"}
    assert float(rows["public only (ε=0)"]["epsilon"]) == 0.0
    assert 0 < float(rows["patch ε=20"]["epsilon"]) <= 20 and math.isinf(float(rows["non-DP (σ=∞)"]["epsilon"]))
    assert rows["patient ε=60 pretrained"]["unit"] == "patient" and float(rows["patient ε=60 pretrained"]["epsilon"]) <= 60
    assert all(0 <= float(r["dsc_intracranial_mean"]) <= 1 for r in rows.values())
    assert (out / "dp_sweep.png").is_file() and "| patch ε=20 |" in (out / "README.md").read_text()
    state = json.loads((out / "compare_state.json").read_text())["steps"]
    privacy = {k: state[f"cand/{k}/epoch=4"]["privacy"] for k in ("patch_20", "patient_60_pretrained")}
    assert privacy["patch_20"]["fake_term"] == "joint" and privacy["patch_20"]["critic_trainable"] == "all"
    assert privacy["patient_60_pretrained"]["critic_trainable"] == "head_and_norms"  # pretrained_args: fine-tuning rows only

    def must_not_run(*args: object, **kw: object) -> None:
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(sweep, "fit_gan", must_not_run)
    monkeypatch.setattr(sweep, "run_fit", must_not_run)
    sweep.dp_sweep(**kwargs)


def test_snapshots_fall_back_to_last_checkpoint_of_a_short_run(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no epoch=N.ckpt"):
        sweep.snapshots(str(tmp_path), 1)
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert sweep.snapshots(str(tmp_path), 2) == [tmp_path / "checkpoints" / "last.ckpt"]
    for e in (4, 9):
        (tmp_path / "checkpoints" / f"epoch={e}.ckpt").write_bytes(b"")
    assert [p.name for p in sweep.snapshots(str(tmp_path), 1)] == ["epoch=9.ckpt"]
