"""SegmentationDataModule training modes: real only, synthetic only, real + synthetic, pooled synthetic stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.patch_store import PatchStore, write_patch_store
from datamodules.segmentation_data import SegmentationDataModule
from tests.fixtures_cohort import write_tiny_cohort

PATCH = 24
PER_PATIENT = 8  # n_vessel 4 + n_random 4


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return write_tiny_cohort(tmp_path_factory.mktemp("modes") / "cohort", n_patients=6)


def _store(root, n: int, value: float) -> str:
    """A synthetic store whose images are all `value`, so its patches can be recognised in the train set."""
    images = np.full((n, 1, PATCH, PATCH), value, np.float32)
    labels = np.zeros((n, 1, PATCH, PATCH), np.uint8)
    labels[:, :, 10:14, :] = 1
    write_patch_store(root, images, labels, {"kind": "synthetic"})
    return str(root)


def _dm(cohort, tmp_path, **kw) -> SegmentationDataModule:
    dm = SegmentationDataModule(cohort_dir=str(cohort), n_train=3, n_val=1, n_test=2, cache_dir=str(tmp_path / "cache"),
                                patch_size=[PATCH, PATCH], n_vessel=4, n_random=4, batch_size=4, **kw)
    dm.setup("fit")
    return dm


def _values(dataset) -> list[float]:
    return [float(dataset[i]["image"].flatten()[0]) for i in range(len(dataset))]


def test_real_only(cohort, tmp_path):
    dm = _dm(cohort, tmp_path)
    assert len(dm.train_set) == 3 * PER_PATIENT and len(dm.val_set) == PER_PATIENT
    store = PatchStore(dm.store.root)
    train_ids = set(store.patient_ids[dm.train_set.indices])
    assert train_ids == set(dm.splits["train"]) and not train_ids & set(dm.splits["val"] + dm.splits["test"])


def test_synthetic_only_keeps_real_validation(cohort, tmp_path):
    s1 = _store(tmp_path / "s1", 10, -0.5)
    dm = _dm(cohort, tmp_path, use_real=False, synthetic_stores=[s1])
    assert len(dm.train_set) == 10 and set(_values(dm.train_set)) == {-0.5}
    assert len(dm.val_set) == PER_PATIENT  # validation on the real validation patient
    assert set(PatchStore(dm.store.root).patient_ids) == set(dm.splits["val"])  # no real train patches cached


def test_real_plus_synthetic_and_pooled_stores(cohort, tmp_path):
    s1, s2 = _store(tmp_path / "s1", 10, -0.5), _store(tmp_path / "s2", 6, 0.25)
    both = _dm(cohort, tmp_path, synthetic_stores=[s1])
    assert len(both.train_set) == 3 * PER_PATIENT + 10
    values = _values(both.train_set)
    assert values.count(-0.5) == 10
    pooled = _dm(cohort, tmp_path, use_real=False, synthetic_stores=[s1, s2])
    values = _values(pooled.train_set)
    assert len(values) == 16 and values.count(-0.5) == 10 and values.count(0.25) == 6
    batch = next(iter(pooled.train_dataloader()))
    assert batch["image"].shape == (4, 1, PATCH, PATCH) and batch["label"].dtype == torch.float32


def test_no_training_data_is_refused(cohort, tmp_path):
    with pytest.raises(ValueError, match="no training data"):
        SegmentationDataModule(cohort_dir=str(cohort), use_real=False)


def test_synthetic_patch_size_mismatch_names_the_store(cohort, tmp_path):
    bad = tmp_path / "bad"
    write_patch_store(bad, np.zeros((2, 1, 16, 16), np.float32), np.zeros((2, 1, 16, 16), np.uint8), {})
    with pytest.raises(ValueError, match="bad"):
        _dm(cohort, tmp_path, synthetic_stores=[str(bad)])
