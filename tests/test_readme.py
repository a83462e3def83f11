"""The README's commands are what runs: each parses with the shipped configs, and the pipeline block
(GAN fit → resume → synthesize → U-Net fit → test with NIfTI predictions) runs end to end at tiny size."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cli import COMMANDS, TRAINER_COMMANDS, main
from tests.cli_helpers import TEST_CONFIGS
from tests.fixtures_cohort import tiny_affine, write_tiny_cohort

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PIPELINE_MARK = "tofgan synthesize --checkpoint <gan-run>"


def bash_blocks(text: str) -> list[list[list[str]]]:
    """Each ```bash block of the README as its `tofgan` commands (continuations joined, comments dropped)."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", body)
        lines = [ln.strip() for ln in joined.splitlines()]
        blocks.append([shlex.split(ln) for ln in lines if ln.startswith("tofgan ")])
    return blocks


def readme_commands() -> list[list[str]]:
    return [cmd for block in bash_blocks(README.read_text()) for cmd in block]


def pipeline_block() -> list[list[str]]:
    text = README.read_text()
    (block,) = [b for b, raw in zip(bash_blocks(text), re.findall(r"```bash\n(.*?)```", text, flags=re.S))
                if PIPELINE_MARK in raw]
    return block


def test_readme_names_only_existing_commands_and_configs() -> None:
    commands = readme_commands()
    assert len(commands) >= 5
    for cmd in commands:
        assert cmd[1] in COMMANDS, f"README runs unknown command {cmd[1]!r}"
        for arg in cmd:
            if arg.startswith("configs/") and arg.endswith(".yaml"):
                assert (REPO / arg).is_file(), f"README names missing config {arg}"
    for table_cmd in re.findall(r"^\| `tofgan ([a-z-]+)", README.read_text(), flags=re.M):
        assert table_cmd in COMMANDS, f"README's table names unknown command {table_cmd!r}"


@pytest.mark.parametrize("cmd", readme_commands(), ids=lambda c: " ".join(c[1:3]))
def test_readme_command_parses(cmd: list[str], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """Every README command line is accepted by its parser as written (configs merged, types checked)."""
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_:
        main([*cmd[1:], "--print_config"])
    assert exit_.value.code in (0, None), capsys.readouterr().err[-2000:]


def _tiny(cmd: list[str], cohort: Path, runs: dict[str, Path]) -> list[str]:
    """The README command on the CPU at tiny size: cpu/csv instead of gpu/wandb, the tiny model and data
    overrides of tests/configs, the tiny cohort, 1–2 epochs, few synthetic samples, placeholders resolved."""
    args = []
    for arg in cmd[1:]:
        arg = arg.replace("configs/trainer/gpu.yaml", "configs/trainer/cpu.yaml")
        arg = arg.replace("configs/logger/wandb.yaml", "configs/logger/csv.yaml")
        for name, folder in runs.items():
            arg = arg.replace(f"<{name}>", str(folder))
        args.append(str(REPO / arg) if arg.startswith("configs/") else arg)
    if cmd[1] not in TRAINER_COMMANDS:
        return [*args, "--n_samples", "24"] if cmd[1] == "synthesize" else args
    family = "tiny_seg.yaml" if any("half_unet" in a for a in args) else "tiny_gan.yaml"
    epochs = "2" if "--ckpt_path" in args and cmd[1] == "fit" else "1"
    return [*args, "--config", str(TEST_CONFIGS / family), "--data.init_args.cohort_dir", str(cohort),
            "--data.init_args.cache_dir", "cache", "--trainer.max_epochs", epochs]


@pytest.mark.slow
def test_readme_pipeline_runs_at_tiny_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    monkeypatch.chdir(tmp_path)  # the README's relative outputs/ paths land in tmp_path
    runs: dict[str, Path] = {}
    block = pipeline_block()
    assert [c[1] for c in block] == ["fit", "fit", "synthesize", "fit", "test"]
    for cmd in block:
        result = main(_tiny(cmd, cohort, runs))
        if cmd[1] in ("fit", "test"):
            log_dir = Path(result.trainer.log_dir).resolve()
            assert log_dir.parent == (tmp_path / "outputs" / "lightning_logs").resolve(), log_dir  # as the README says
            if cmd[1] == "fit":
                assert (log_dir / "checkpoints" / "last.ckpt").is_file()
                assert (log_dir / "run_manifest.json").is_file() and (log_dir / "config.yaml").is_file()
                runs["unet-run" if any("half_unet" in a for a in cmd) else "gan-run"] = log_dir
    resumed = json.loads((runs["gan-run"] / "run_manifest.json").read_text())
    assert resumed, "the resumed GAN run wrote no manifest"
    store = json.loads((tmp_path / "outputs" / "synthetic" / "manifest.json").read_text())
    assert store["n_samples"] == 24
    test_dir = Path(result.trainer.log_dir)
    rows = (test_dir / "test_per_patient.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # header + the two tiny test patients
    preds = sorted((test_dir / "predictions").glob("*_pred.nii.gz"))
    assert len(preds) == 2
    img = nib.load(preds[0])
    assert np.allclose(img.affine, tiny_affine()) and set(np.unique(np.asarray(img.dataobj))) <= {0, 1}
