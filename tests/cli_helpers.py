"""Shipped experiment configs on the CPU for tests: the `# compose:` recipe plus a tiny override per family."""

from __future__ import annotations

from pathlib import Path

from workflows.compose import CONFIGS, composed_fragments, experiment_args

TEST_CONFIGS = Path(__file__).resolve().parent / "configs"
# Perfusion experiments (thesis_*, cpu_thesis_*) need a DSC cohort and their own tiny widths:
# tests/test_pix2pix_experiments.py fits each of them.
EXPERIMENTS = sorted(p for p in (CONFIGS / "experiment").glob("*.yaml") if "thesis_" not in p.stem)
CPU = {"trainer": "trainer/cpu.yaml", "logger": "logger/csv.yaml"}


def cpu_args(experiment: Path, cohort: Path, root: Path) -> list[str]:
    """--config arguments of an experiment on the CPU, shrunk by the tiny override of its model family."""
    fragments = composed_fragments(experiment)
    family = ("tiny_seg3d.yaml" if any("seg3d" in f for f in fragments)
              else "tiny_seg.yaml" if any("seg" in f for f in fragments)
              else "tiny_gan3d.yaml" if any("gan3d" in f for f in fragments) else "tiny_gan.yaml")
    return [
        *experiment_args(experiment, CPU),
        "--config", str(TEST_CONFIGS / family),
        "--data.init_args.cohort_dir", str(cohort),
        "--data.init_args.cache_dir", str(root / "cache"),
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
    ]  # fmt: skip
