"""bench/gpu_check.py runs tiny on the CPU (same code paths as on a GPU: Lightning precision plugins, the U-Net
step, sliding-window inference, the 3D GAN row, the loader benchmark), so the prepared GPU check cannot rot; its JSON
renders the README performance table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gpu_check  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*worker processes in total.*")]


def test_gpu_check_runs_tiny_on_cpu_and_renders_the_table(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    gpu_check.main(["--scale", "tiny", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    precisions = [(r["precision"], r["critic_precision"]) for r in result["gan2d"]]
    assert precisions == gpu_check.PRECISIONS
    fp32 = result["gan2d"][0]
    assert fp32["gp_rel_diff_vs_fp32"] == 0.0 and fp32["gradient_penalty"] > 0
    assert all(r["gp_ok"] and r["samples_per_s"] > 0 for r in result["gan2d"])
    assert result["unet"]["samples_per_s"] > 0 and result["sliding_window"]["seconds_per_volume"] > 0
    assert result["gan3d"][0]["samples_per_s"] > 0
    assert {(r["kind"], r["workers"]) for r in result["loader"]} == {(k, w) for k in ("2d", "3d") for w in (0, 2, 4)}
    assert all(isinstance(r["input_bound"], bool) for r in result["loader"])

    table = gpu_check.render_table(result)
    assert table.count("| 2D GAN step") == len(gpu_check.PRECISIONS) and "sliding-window inference" in table
    assert table.count("| loader,") == 6
