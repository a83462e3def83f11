"""`tofgan fit/test --ckpt_path`: the checkpoint is read as data before Lightning sees it (needs the cli.py change)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import main
from lightning_modules.checkpoints import UnsafeCheckpointError
from tests.cli_helpers import CONFIGS, cpu_args
from tests.test_checkpoint_safety import crafted  # noqa: F401 - fixture


@pytest.mark.parametrize("command", ["fit", "test"])
def test_ckpt_path_with_pickled_code_is_refused(crafted, tmp_path: Path, command: str) -> None:  # noqa: F811
    path, marker = crafted
    args = cpu_args(CONFIGS / "experiment" / "cpu_wgan_gp_sn.yaml", tmp_path / "cohort", tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=str(path)) as err:
        main([command, *args, "--ckpt_path", str(path)])
    assert "weights_only=False" not in str(err.value) and not marker.exists()
    with pytest.raises(ValueError, match="--weights_only false: tofgan reads checkpoints as data only"):
        main([command, *args, "--ckpt_path", str(path), "--weights_only", "false"])
    assert not marker.exists()
