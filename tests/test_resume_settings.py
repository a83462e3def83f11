"""`tofgan fit --ckpt_path` refuses changed model/data settings, names them, and records allowed changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callbacks.resume_settings import ResumeSettingsError, changed_settings, defining_settings, is_allowed
from cli import main
from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """(fit arguments, last.ckpt) of a one-epoch WGAN-GP fit."""
    root = tmp_path_factory.mktemp("resume_settings")
    cohort = write_tiny_cohort(root / "cohort", n_patients=6)
    args = ["fit", *cpu_args(CONFIGS / "experiment" / "cpu_wgan_gp.yaml", cohort, root)]
    cli = main([*args, "--trainer.max_epochs", "1"])
    return args, Path(cli.trainer.checkpoint_callback.last_model_path)


def test_changed_settings_are_refused_with_their_names(first_run: tuple[list[str], Path]) -> None:
    args, ckpt = first_run
    changes = ["--model.init_args.n_critic", "3", "--model.init_args.label_encoding", "binary",
               "--model.init_args.critic_optimizer.init_args.lr", "0.001", "--data.init_args.normalization", "zscore"]
    with pytest.raises(ResumeSettingsError) as err:
        main([*args, *changes, "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt)])
    message = str(err.value)
    for key in ("model.init_args.n_critic", "model.init_args.label_encoding",
                "model.init_args.critic_optimizer.init_args.lr", "data.init_args.normalization"):  # fmt: skip
        assert key in message, message
    assert str(ckpt) in message and "--allow_resume_changes" in message
    assert "generator" not in message  # unchanged settings are not listed


def test_allowed_change_resumes_and_is_recorded(first_run: tuple[list[str], Path]) -> None:
    args, ckpt = first_run
    cli = main([*args, "--model.init_args.n_critic", "3", "--allow_resume_changes", "model.n_critic",
                "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt)])  # fmt: skip
    assert cli.trainer.current_epoch == 2 and cli.model.n_critic == 3
    manifest = json.loads((Path(cli.trainer.checkpoint_callback.dirpath).parent / "run_manifest.json").read_text())
    assert manifest["resume"]["ckpt_path"] == str(ckpt)
    assert manifest["resume"]["changed"] == {"model.init_args.n_critic": [5, 3]}
    assert manifest["resume"]["allowed"] == ["model.n_critic"]


def test_settings_helpers() -> None:
    config = {"seed_everything": 0, "trainer": {"max_epochs": 3},
              "model": {"class_path": "M",
                        "init_args": {"net": {"init_args": {"features": [4, 8]}}, "report_dir": "a"}},
              "data": {"init_args": {"patch_size": [24, 24], "num_workers": 2}}}  # fmt: skip
    flat = defining_settings(config)
    assert flat == {"seed_everything": 0, "model.class_path": "M", "model.init_args.net.init_args.features": [4, 8],
                    "data.init_args.patch_size": [24, 24]}  # trainer, report_dir and num_workers do not count
    now = {**flat, "model.init_args.net.init_args.features": [4, 16]}
    assert changed_settings(flat, now) == {"model.init_args.net.init_args.features": [[4, 8], [4, 16]]}
    newer = {**flat, "model.init_args.net.init_args.new_option": None, "data.init_args.sampler.class_path": "S"}
    assert changed_settings(flat, newer) == {"data.init_args.sampler.class_path": [None, "S"]}
    assert is_allowed("model.init_args.net.init_args.features", ["model.net"])
    assert is_allowed("model.init_args.net.init_args.features", ["model.init_args.net.init_args.features"])
    assert not is_allowed("model.init_args.net.init_args.features", ["model.n"])
