"""The perfusion experiment files (thesis_*, cpu_thesis_*) fit with fast_dev_run through `cli.main` on a tiny simulated
DSC cohort (the CPU files, the Tmax rows and each other map once; the remaining per-map rows are shown to be the Tmax
files with another map), and a fit interrupted mid-epoch resumes from its last.ckpt to exactly the uninterrupted state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from cli import main
from tests.checkpoint_state import assert_same_state, checkpoint_tensors, last_checkpoint
from workflows.compose import CONFIGS, composed_fragments, experiment_args

MAPS = ("cbf", "cbv", "mtt", "tmax", "ttp")
PERFUSION_EXPERIMENTS = sorted(p for p in (CONFIGS / "experiment").glob("*.yaml") if "thesis_" in p.stem)
CPU = {"trainer": "trainer/cpu.yaml", "logger": "logger/csv.yaml"}
# Tiny widths for 32×32 slices, through the classes and code paths of the paper configs.
TINY = {"model/pix2pix.yaml": "generator: {init_args: {ngf: 4, num_downs: 5}}",
        "model/temp_pix2pix.yaml": "generator: {init_args: {ngf: 4, unet_ngf: 4, num_downs: 5}}"}  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.perfusion_fixtures import write_tiny_cohort

    return write_tiny_cohort(tmp_path_factory.mktemp("dsc"), n_patients=4, shape=(32, 32, 2))


def perfusion_cpu_args(experiment: Path, cohort: Path, root: Path) -> list[str]:
    """--config arguments of a perfusion experiment on the CPU with tiny widths on the tiny cohort."""
    model = next(f for f in composed_fragments(experiment) if f.startswith("model/"))
    root.mkdir(parents=True, exist_ok=True)
    tiny = root / "tiny_perfusion.yaml"
    tiny.write_text(f"model:\n  init_args:\n    {TINY[model]}\n    discriminator: {{init_args: {{ndf: 8}}}}\n")
    return [*experiment_args(experiment, CPU), "--config", str(tiny),
            "--data.init_args.cohort_dir", str(cohort), "--data.init_args.simulate", "null",
            "--data.init_args.batch_size", "2", "--data.init_args.cache_dir", str(root / "cache"),
            "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root)]  # fmt: skip


def test_every_map_and_architecture_has_a_thesis_row() -> None:
    names = {p.stem for p in PERFUSION_EXPERIMENTS}
    for arch in ("pix2pix", "temp_pix2pix"):
        assert {f"cpu_thesis_{arch}", f"cpu_thesis_{arch}_steno"} <= names
        for m in ("cbf", "cbv", "mtt", "tmax", "ttp"):
            assert {f"thesis_{arch}_{m}", f"thesis_{arch}_{m}_steno"} <= names


def per_map_variant(experiment: Path) -> bool:
    """thesis_<arch>_<map>[_steno] for a map other than tmax: the tmax file with another target_map."""
    name = experiment.stem.removesuffix("_steno")
    return name.startswith("thesis_") and not name.endswith("_tmax")


def test_per_map_rows_differ_from_the_tmax_row_only_in_the_map() -> None:
    for experiment in filter(per_map_variant, PERFUSION_EXPERIMENTS):
        target_map = experiment.stem.removesuffix("_steno").rsplit("_", 1)[1]
        tmax = experiment.with_name(experiment.name.replace(f"_{target_map}", "_tmax"))
        mine, theirs = (yaml.safe_load(p.read_text()) for p in (experiment, tmax))
        assert mine["data"]["init_args"].pop("target_map") == target_map
        theirs["data"]["init_args"].pop("target_map")
        assert mine == theirs and composed_fragments(experiment) == composed_fragments(tmax), experiment.name


# The tmax rows and CPU files fit in every quick pass. The 16 per-map variants are the tmax files with another
# target_map (test above), so fitting each map once (temp-pix2pix, acute-like; slow, ~7 s) covers the other 12
# (~20 s saved); fitting all 20 thesis files repeated the same code path.
ONE_FIT_PER_MAP = {f"thesis_temp_pix2pix_{m}" for m in MAPS}
FITTED = [pytest.param(p, marks=pytest.mark.slow) if per_map_variant(p) else p
          for p in PERFUSION_EXPERIMENTS if not per_map_variant(p) or p.stem in ONE_FIT_PER_MAP]


@pytest.mark.parametrize("experiment", FITTED, ids=lambda p: p.stem)
def test_perfusion_experiment_fits_fast_dev_run(experiment: Path, cohort: Path, tmp_path: Path) -> None:
    for fragment in composed_fragments(experiment):
        assert (CONFIGS / fragment).is_file(), f"{experiment.name}: missing fragment {fragment}"
    cli = main(["fit", *perfusion_cpu_args(experiment, cohort, tmp_path), "--trainer.fast_dev_run", "true"])
    assert cli.trainer.state.finished
    logged = cli.trainer.callback_metrics
    assert {"train/l1", "train/d_loss", "val/l1"} <= set(logged)
    assert all(v.isfinite().all() for v in logged.values()), logged
    map_in_name = experiment.stem.removesuffix("_steno").rsplit("pix2pix_", 1)[-1]
    assert cli.datamodule.target_map == (map_in_name if map_in_name in MAPS else "tmax")


class StopAtBatch(Callback):
    """Raises after `batch` training batches: an in-process stand-in for a killed run."""

    def __init__(self, batch: int) -> None:
        self.batch, self.seen = batch, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.seen += 1
        if self.seen == self.batch:
            raise RuntimeError("stopped by the test")


@pytest.mark.slow
def test_interrupted_fit_resumes_to_the_uninterrupted_state(cohort: Path, tmp_path: Path) -> None:
    experiment = CONFIGS / "experiment" / "cpu_thesis_temp_pix2pix.yaml"
    # batch 1: 4 batches per epoch on the 4 training slices, so the save after batch 2 lies inside an epoch
    common = ["--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "1"]
    main(["fit", *perfusion_cpu_args(experiment, cohort, tmp_path / "full"), *common])
    steps = tmp_path / "killed" / "steps"
    stop = tmp_path / "stop.yaml"
    stop.write_text("trainer:\n  callbacks+:\n"
                    f"    - {{class_path: callbacks.checkpointing.ResumeCheckpoint, init_args: {{dirpath: '{steps}', every_n_train_batches: 2}}}}\n"
                    "    - {class_path: tests.test_pix2pix_experiments.StopAtBatch, init_args: {batch: 3}}\n")  # fmt: skip
    with pytest.raises(RuntimeError, match="stopped by the test"):
        main(["fit", *perfusion_cpu_args(experiment, cohort, tmp_path / "killed"), *common, "--config", str(stop)])
    progress = torch.load(steps / "last.ckpt", map_location="cpu", weights_only=True)["loops"]["fit_loop"]
    assert progress["epoch_progress"]["current"]["completed"] == 0  # saved inside the first epoch …
    assert progress["epoch_loop.batch_progress"]["current"]["ready"] == 2  # … after 2 of its 4 batches
    main(["fit", *perfusion_cpu_args(experiment, cohort, tmp_path / "resumed"), *common,
          "--ckpt_path", str(steps / "last.ckpt")])  # fmt: skip
    want = checkpoint_tensors(last_checkpoint(tmp_path / "full"))
    assert_same_state(want, checkpoint_tensors(last_checkpoint(tmp_path / "resumed")))
    assert not torch.equal(want[("model", "target_hi")], torch.tensor(1.0, dtype=torch.float64))  # range carried
