"""The training loaders deliver the same patches with 0 and 4 worker processes (order aside), for the 2D GAN and the
2D segmentation data modules and for each of two DDP ranks' shards: the workers read the memory-mapped store
themselves (nothing copied, nothing lost or duplicated). bench/bench_loader.py measures their speed."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from datamodules.gan_data import GANPatchDataModule
from datamodules.segmentation_data import SegmentationDataModule
from tests.fixtures_cohort import write_tiny_cohort

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*worker processes in total.*")]
COMMON = {"simulate": None, "n_train": 3, "n_val": 1, "n_test": 2, "patch_size": [24, 24], "n_vessel": 4,
          "n_random": 4, "batch_size": 4}


def _patches(loader: torch.utils.data.DataLoader) -> Counter:
    """Multiset of (image, label) patches of one epoch, by content hash."""
    seen: Counter = Counter()
    for batch in loader:
        for image, label in zip(batch["image"], batch["label"]):
            seen[hashlib.sha256(image.numpy().tobytes() + label.numpy().tobytes()).hexdigest()] += 1
    return seen


@pytest.mark.parametrize("module", [GANPatchDataModule, SegmentationDataModule])
def test_same_patches_with_0_and_4_workers(module: type, tmp_path: Path) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    epochs = {}
    for workers in (0, 4):
        for rank in (0, 1):
            dm = module(cohort_dir=str(cohort), cache_dir=str(tmp_path / "cache"), num_workers=workers, **COMMON)
            dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, state=SimpleNamespace(fn="fit"))
            dm.prepare_data()
            dm.setup("fit")
            epochs[workers, rank] = _patches(dm.train_dataloader())
    for rank in (0, 1):
        assert sum(epochs[0, rank].values()) >= 4, "an epoch of the shard holds patches"
        assert epochs[0, rank] == epochs[4, rank], f"rank {rank}: workers changed the patches delivered"
    assert epochs[0, 0] != epochs[0, 1], "the two ranks were handed the same patches: no sharding exercised"
