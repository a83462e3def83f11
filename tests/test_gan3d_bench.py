"""bench/bench_gan3d.py: the FLOP counts of the paper configs (meta device) and a tiny CPU run of its loops."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_gan3d import Case, count_flops, default_cases, main  # noqa: E402


@pytest.mark.parametrize("case, tflop", [
    (Case("project", "sn", "32"), 13.93),               # ≈ 4·F_G + 15·F_D (notes/3d-paper.md A2: 13.94)
    (Case("project", "sn", "32", "subpixel"), 4.793),   # folded G: 8/27 of the conv FLOPs (A2: 4.80)
    (Case("authors", "sn", "32"), 20.49),               # fake with graph, penalty through G (A2: 20.49)
    (Case("project", "c_sn_mp", "bf16"), 55.40),        # doubled filters (A2: 55.41)
    (Case("authors", "c_sn_mp", "16-mixed"), 81.51),    # (A2: 81.50)
])  # fmt: skip
def test_paper_flops_per_iteration_on_meta(case, tflop):
    assert count_flops(case, "paper", 4) / 1e12 == pytest.approx(tflop, rel=1e-3)


def test_tiny_bench_runs_both_loops_on_cpu(tmp_path):
    cases = default_cases()
    picks = [cases.index(c) for c in (Case("authors", "sn", "32"), Case("authors", "sn_mp", "16-mixed"),
                                      Case("project", "sn", "32"), Case("project", "sn_mp", "bf16", "subpixel"))]
    out = tmp_path / "bench.json"
    rows = main(["--scale", "tiny", "--device", "cpu", "--warmup", "1", "--iters", "2", "--cases", *map(str, picks),
                 "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["rows"] == rows and len(rows) == 4
    assert all(math.isfinite(r["ms_per_iteration"]) and r["ms_per_iteration"] > 0 for r in rows)
    authors, _, project, folded = (r["tflop_per_iteration"] for r in rows)
    assert authors > project > folded  # the detached fake and the folded G both save work
    assert rows[3]["precision_run"] == "bf16-mixed" and rows[1]["precision_run"].startswith("fp16")
