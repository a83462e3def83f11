"""Composition of shipped experiment configs for tests: the `# compose:` line, CPU trainer, tiny overrides."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TEST_CONFIGS = Path(__file__).resolve().parent / "configs"
EXPERIMENTS = sorted((CONFIGS / "experiment").glob("*.yaml"))


def composed_fragments(experiment: Path) -> list[str]:
    first = experiment.read_text().splitlines()[0]
    if not first.startswith("# compose:"):
        raise AssertionError(f"{experiment}: first line must be '# compose: <fragments>'")
    return first.removeprefix("# compose:").split()


def cpu_args(experiment: Path, cohort: Path, root: Path) -> list[str]:
    """--config arguments of an experiment on the CPU with the tiny override for its model family."""
    fragments = composed_fragments(experiment)
    fragments = ["trainer/cpu.yaml" if f.startswith("trainer/") else f for f in fragments]
    fragments = ["logger/csv.yaml" if f.startswith("logger/") else f for f in fragments]
    family = "tiny_seg.yaml" if any("seg" in f for f in fragments) else "tiny_gan.yaml"
    args: list[str] = []
    for name in fragments:
        args += ["--config", str(CONFIGS / name)]
    args += ["--config", str(experiment), "--config", str(TEST_CONFIGS / family)]
    return args + [
        "--data.init_args.cohort_dir", str(cohort),
        "--data.init_args.cache_dir", str(root / "cache"),
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
    ]  # fmt: skip
