"""3D segmentation data and the 3D U-Net end to end through `cli.main` (cpu_subramaniam2022_unet3d.yaml at the tests'
tiny 3D size): vessel-centred 3D patches cached in a memory-mapped store, training on real patches and on a
synthetic 3D store in the format `tofgan synthesize` streams, whole-volume 3D test with per-patient all-vessel
and intracranial metrics (bAVD in mm and voxels), NIfTI predictions and error maps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cli import main
from datamodules.base import PatchDataset
from datamodules.patch_store import PatchStore, write_patch_store
from datamodules.segmentation_data import SegmentationDataModule
from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import tiny_affine, write_tiny_cohort
from workflows.synthesize import write_streamed_store

EXPERIMENT = CONFIGS / "experiment" / "cpu_subramaniam2022_unet3d.yaml"
PATCH = (16, 16, 8)
pytestmark = pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*", "ignore:.*sync_dist.*",
                                        "ignore:.*does not have many workers.*")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("seg3d") / "cohort", n_patients=6)


def _dm(cohort: Path, cache: Path, **kw) -> SegmentationDataModule:
    args = dict(cohort_dir=str(cohort), n_train=3, n_val=1, n_test=2, cache_dir=str(cache), patch_size=list(PATCH),
                grid=[0, 0, 0], n_vessel=8, n_random=0, batch_size=4)
    dm = SegmentationDataModule(**{**args, **kw})
    dm.setup("fit")
    return dm


def test_3d_patches_are_vessel_centred_cached_and_memory_mapped(cohort: Path, tmp_path: Path) -> None:
    dm = _dm(cohort, tmp_path / "cache")
    store = PatchStore(dm.store.root)
    assert isinstance(store.images, np.memmap) and isinstance(store.labels, np.memmap)  # nothing read at opening
    assert store.patch_size == PATCH and len(dm.train_set) == 3 * 8 and len(dm.val_set) == 8
    centre = tuple(s // 2 for s in PATCH)
    assert all(store.labels[i, 0][centre] == 1 for i in range(len(store)))  # every patch centred on a vessel voxel
    item = dm.train_set[0]
    assert item["image"].shape == item["label"].shape == (1, *PATCH) and item["image"].dtype == torch.float32
    again = _dm(cohort, tmp_path / "cache")  # same settings and sources: the cached store, not a new extraction
    assert again.store.root == dm.store.root and again.store.manifest["created"] == dm.store.manifest["created"]


def test_synthetic_3d_store_is_read_lazily_and_checked(cohort: Path, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(3, 1, *PATCH, generator=g) * 2 - 1, (torch.rand(3, 1, *PATCH, generator=g) > 0.8).float())
               for _ in range(2)]
    root = write_streamed_store(tmp_path / "synthetic", iter(batches), 6, {"kind": "synthetic"})
    store = PatchStore(root)
    assert isinstance(store.images, np.memmap)
    dm = _dm(cohort, tmp_path / "cache", use_real=False, synthetic_stores=[str(root)])
    assert len(dm.train_set) == 6 and len(dm.val_set) == 8  # synthetic training, real validation
    torch.testing.assert_close(dm.train_set[4]["image"], batches[1][0][1])
    assert isinstance(PatchDataset(root).store.images, np.memmap)

    flat = write_patch_store(tmp_path / "2d", np.zeros((2, 1, 16, 16), np.float32), np.zeros((2, 1, 16, 16), np.uint8),
                             {"kind": "synthetic"})
    with pytest.raises(ValueError, match=r"2d: synthetic patch size \(16, 16\) differs from patch_size \(16, 16, 8\)"):
        _dm(cohort, tmp_path / "cache", use_real=False, synthetic_stores=[str(flat.root)])
    with pytest.raises(ValueError, match="augment is the 2D papers' in-plane augmentation"):
        SegmentationDataModule(cohort_dir=str(cohort), patch_size=list(PATCH), augment=True)


def _run(cohort: Path, root: Path, command: str, *extra: str):
    return main([command, *cpu_args(EXPERIMENT, cohort, root), *extra])


def test_unet3d_trains_on_real_and_synthetic_and_tests_whole_volumes(cohort: Path, tmp_path: Path) -> None:
    real = _run(cohort, tmp_path / "real", "fit", "--trainer.max_epochs", "1")
    ckpt = Path(real.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (Path(real.trainer.log_dir) / "checkpoints" / "best_val_dsc.ckpt").is_file()
    assert real.model.net.spatial_dims == 3 and real.model.train_spacing == pytest.approx((0.5, 0.5, 0.7))

    g = torch.Generator().manual_seed(1)
    pairs = [(torch.rand(4, 1, *PATCH, generator=g) * 2 - 1, (torch.rand(4, 1, *PATCH, generator=g) > 0.8).float())
             for _ in range(3)]
    store = write_streamed_store(tmp_path / "store", iter(pairs), 12, {"kind": "synthetic"})
    synthetic = _run(cohort, tmp_path / "synthetic", "fit", "--trainer.max_epochs", "1",
                     "--data.init_args.use_real", "false", "--data.init_args.synthetic_stores", f"[{store}]")
    assert synthetic.trainer.global_step == 3  # 12 synthetic pairs / batch 4

    report = tmp_path / "report"
    maps = "{class_path: callbacks.error_maps.ErrorMapCallback, init_args: {n_slices: 2}}"
    test = _run(cohort, tmp_path / "test", "test", "--ckpt_path", str(ckpt),
                "--model.init_args.report_dir", str(report),
                "--config", str(CONFIGS / "callbacks" / "nifti_predictions.yaml"), "--trainer.callbacks+", maps)
    assert test.trainer.state.finished
    rows = list(csv.DictReader((report / "test_per_patient.csv").open()))
    assert len(rows) == 2
    for row in rows:
        for col in ("dsc", "bavd", "bavd_vox", "intracranial_dsc", "intracranial_bavd_vox"):
            assert col in row and row[col] != "", col
    summary = json.loads((report / "test_summary.json").read_text())["results"]
    assert set(summary) == {"all", "intracranial"} and summary["all"]["n_patients"] == 2
    pred = nib.load(next((report / "predictions").glob("*_pred.nii.gz")))
    assert pred.shape == (40, 40, 12) and np.allclose(pred.affine, tiny_affine())
    assert len(list((report / "error_maps").glob("*.png"))) == 2


def test_validation_on_whole_volumes_scores_as_the_test_does(cohort: Path, tmp_path: Path) -> None:
    """`val_on: volumes`: `val/dsc` of a fit is the mean over the validation patients of the whole-volume DSC that
    `tofgan test` on the validation split (`test_split: val`) reports for the same weights; the epoch it selects is
    checkpointed by it."""
    vol = ("--data.init_args.val_on", "volumes", "--data.init_args.n_val", "2", "--data.init_args.n_test", "1")
    fit = _run(cohort, tmp_path / "fit", "fit", "--trainer.max_epochs", "1", *vol)
    val_dsc = float(fit.trainer.callback_metrics["val/dsc"])
    assert 0.0 < val_dsc < 1.0, val_dsc  # a net that marks some vessel and misses some
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "best_val_dsc.ckpt"
    report = tmp_path / "report"
    _run(cohort, tmp_path / "test", "test", "--ckpt_path", str(ckpt), "--model.init_args.report_dir", str(report),
         *vol, "--data.init_args.test_split", "val")
    rows = list(csv.DictReader((report / "test_per_patient.csv").open()))
    assert len(rows) == 2
    assert val_dsc == pytest.approx(np.mean([float(r["dsc"]) for r in rows]), abs=1e-5)
