"""Experiment files name the config fragments they combine with in their first line: `# compose: a.yaml b.yaml`.

Workflows and tests read that line to build the repeated `--config` arguments, so an experiment's recipe
is written once, in the experiment file itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def composed_fragments(experiment: str | Path) -> list[str]:
    """Fragment paths (relative to `configs/`) listed on the experiment's `# compose:` line."""
    experiment = Path(experiment)
    first = experiment.read_text().splitlines()[0] if experiment.is_file() else ""
    if not first.startswith("# compose:"):
        raise ValueError(f"{experiment}: the first line must be '# compose: <fragment> …' (paths relative to configs/)")
    return first.removeprefix("# compose:").split()


def experiment_args(experiment: str | Path, replace: Mapping[str, str] | None = None) -> list[str]:
    """`--config` arguments: the composed fragments, then the experiment file itself (it overrides them).

    `replace` swaps fragments by folder, e.g. {"trainer": "trainer/cpu.yaml"} to run a GPU recipe on a CPU.
    """
    experiment = Path(experiment)
    if not experiment.is_absolute() and not experiment.exists():
        experiment = CONFIGS / "experiment" / experiment
    args: list[str] = []
    for fragment in composed_fragments(experiment):
        folder = fragment.split("/", 1)[0]
        args += ["--config", str(CONFIGS / (replace or {}).get(folder, fragment))]
    return args + ["--config", str(experiment)]
