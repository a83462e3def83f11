"""Every shipped experiment config runs `fit` (fast_dev_run) through `cli.main` on a tiny cohort."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import main
from tests.cli_helpers import EXPERIMENTS, cpu_args
from workflows.compose import composed_fragments
from tests.fixtures_cohort import write_tiny_cohort


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_patients=6)


def test_experiments_are_shipped() -> None:
    names = {p.stem for p in EXPERIMENTS}
    assert {"kossen2021_unet", "cpu_unet"} <= names


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_composes_from_existing_fragments(experiment: Path) -> None:
    for fragment in composed_fragments(experiment):
        assert (experiment.parents[1] / fragment).is_file(), f"{experiment.name}: missing fragment {fragment}"


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_fits_fast_dev_run(experiment: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    cli = main(["fit", *cpu_args(experiment, tiny_cohort, tmp_path), "--trainer.fast_dev_run", "true"])
    assert cli.trainer.state.finished
    logged = cli.trainer.callback_metrics
    assert logged, "fit logged no metric"
    assert all(v.isfinite().all() for v in logged.values()), logged
