"""`dp_sweep` end to end on the tiny cohort: real and non-DP references, a patch-level and a pretrained patient-level
row, selection among snapshots, CSV/markdown/PNG outputs, and resume from the state file."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import workflows.dp_sweep as sweep
import workflows.dp_sweep_report as sweep_report
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


def test_repeats_are_seeded_apart_summarised_with_a_t_interval_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    data = ["--data.init_args.cohort_dir", str(cohort), "--data.init_args.cache_dir", str(tmp_path / "cache")]
    gan_args = ["--config", str(TEST_CONFIGS / "tiny_gan.yaml"), *data, "--trainer.max_epochs", "1",
                "--data.init_args.steps_per_epoch", "2"]  # fmt: skip
    kwargs = dict(out_dir=str(tmp_path / "sweep"), patch_epsilons=[20.0], patient_epsilons=[], pretrained_epsilons=[],
                  non_dp=False, candidates=1, n_synthetic=8, gan_args=gan_args, wandb=False,
                  unet_args=["--config", str(TEST_CONFIGS / "tiny_seg.yaml"), *data, "--trainer.max_epochs", "1"])  # fmt: skip
    out = sweep.dp_sweep(**kwargs, repeats=2)
    runs = list(csv.DictReader(open(out / "dp_sweep_runs.csv")))
    assert sorted((r["row"], r["repeat"], r["seed"]) for r in runs) == [("patch ε=20", "0", "0"), ("patch ε=20", "1", "1"),
                                                                       ("real", "0", "0"), ("real", "1", "1")]  # fmt: skip
    state = json.loads((out / "compare_state.json").read_text())["steps"]
    assert {"row/real", "row/real_r1", "row/patch_20", "row/patch_20_r1"} <= set(state)  # repeat 0 keeps the old keys
    assert state["gan/patch_20"]["run_dir"] != state["gan/patch_20_r1"]["run_dir"]
    rows = {r["row"]: r for r in csv.DictReader(open(out / "dp_sweep.csv"))}
    for name in ("real", "patch ε=20"):
        dsc = [float(r["dsc_intracranial_mean"]) for r in runs if r["row"] == name]
        mean, ci = sweep_report.mean_ci(dsc)
        assert rows[name]["repeats"] == "2" and float(rows[name]["dsc_intracranial_mean"]) == pytest.approx(mean)
        assert float(rows[name]["dsc_intracranial_ci95"]) == pytest.approx(ci)
    assert "| n |" in (out / "README.md").read_text() and (out / "dp_sweep.png").is_file()

    def must_not_run(*args: object, **kw: object) -> None:
        raise AssertionError("a finished repeat ran again")

    monkeypatch.setattr(sweep, "fit_gan", must_not_run)
    monkeypatch.setattr(sweep, "run_fit", must_not_run)
    sweep.dp_sweep(**kwargs, repeats=2)
    sweep.dp_sweep(**kwargs)  # fewer repeats: the report is rewritten from the first repeat alone
    assert next(r for r in csv.DictReader(open(out / "dp_sweep.csv")) if r["row"] == "real")["repeats"] == "1"


def test_mean_ci_is_the_student_t_interval() -> None:
    mean, half = sweep_report.mean_ci([0.4, 0.5, 0.6])
    assert mean == pytest.approx(0.5) and half == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-6)  # t(0.975, 2)
    assert sweep_report.mean_ci([0.3]) == (0.3, None)
    row = sweep_report.summarise([{"row": "r", "epsilon": 6.9, "dsc_intracranial_mean": 0.4, "dsc_all_mean": 0.5},
                                  {"row": "r", "epsilon": 7.0, "dsc_intracranial_mean": 0.6, "dsc_all_mean": None}])
    assert row["epsilon"] == 7.0 and row["repeats"] == 2 and row["dsc_all_ci95"] is None and row["dsc_intracranial_runs"] == "0.4000;0.6000"


def test_snapshots_fall_back_to_last_checkpoint_of_a_short_run(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no epoch=N.ckpt"):
        sweep.snapshots(str(tmp_path), 1)
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert sweep.snapshots(str(tmp_path), 2) == [tmp_path / "checkpoints" / "last.ckpt"]
    for e in (4, 9):
        (tmp_path / "checkpoints" / f"epoch={e}.ckpt").write_bytes(b"")
    assert [p.name for p in sweep.snapshots(str(tmp_path), 1)] == ["epoch=9.ckpt"]
