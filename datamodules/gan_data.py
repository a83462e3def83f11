"""GAN training data: image+label patches of the train patients, image min–max scaled to [-1, 1] per patch.

Test stage (`tofgan test` on a GAN checkpoint): the GAN is judged against real patches, so the test loaders
are [train patches, held-out test-patient patches] (dataloader_idx 0 and 1), the latter extracted with the
same settings as the training patches into their own cached store (the train/val store is untouched).
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import DataLoader

from datamodules.base import CohortDataModule, Normalization, PatchDataset, SimulationSpec
from datamodules.patch_store import PatchStore, build_patch_store
from datamodules.sampling import ResumableLoader, epoch_shuffle_sampler

#: dataloader_idx of the test loaders (GANEvaluationCallback reads them by these indices).
TEST_TRAIN_IDX, TEST_HELDOUT_IDX = 0, 1


class GANPatchDataModule(CohortDataModule):
    """2D (patch_size of 2 entries; SPEC: 96×96, 500 vessel + 500 random per patient) or 3D (3 entries;
    SPEC: 128×128×64, `grid` [3,3,2] systematic patches + n_vessel=32, n_random=0). `grid` is ignored in 2D.
    The label stays {0,1}: the GAN module applies its own label encoding. `target_spacing` / `skull_strip`:
    volume preprocessing before patches are cut (`datamodules.preprocess`); the 2D paper's protocol strips."""

    def __init__(
        self,
        cohort_dir: str,
        simulate: SimulationSpec | None = None,
        n_train: int = 41,
        n_val: int = 11,
        n_test: int = 14,
        split_seed: int = 0,
        cache_dir: str = ".cache/patches",
        batch_size: int = 300,
        num_workers: int = 0,
        seed: int = 0,
        patch_size: list[int] = [96, 96],  # noqa: B006 - read only; LightningCLI shows the default
        n_vessel: int = 500,
        n_random: int = 500,
        grid: list[int] = [3, 3, 2],  # noqa: B006
        normalization: Normalization = "minmax",
        target_spacing: list[float] | None = None,
        skull_strip: bool = False,
    ) -> None:
        super().__init__(cohort_dir, simulate, n_train, n_val, n_test, split_seed, cache_dir, batch_size,
                         num_workers, seed, target_spacing, skull_strip)
        self.patch_settings = self.make_patch_settings(patch_size, n_vessel, n_random, grid, seed)
        self.normalization: Normalization = normalization
        self.train_set: PatchDataset | None = None
        self.val_set: PatchDataset | None = None
        self.test_store: PatchStore | None = None
        self.test_set: PatchDataset | None = None

    def _testing(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and getattr(trainer.state, "fn", None) == "test"

    def _build_test_store(self) -> PatchStore | None:
        """Held-out patches of the test patients, extracted like the training patches (own cache key)."""
        records = self.records_of("test")
        return build_patch_store(records, self.cache_dir, self.patch_settings) if records else None

    def prepare_data(self) -> None:
        super().prepare_data()
        if self._testing():  # once, on the main process, as the train store
            self._build_test_store()

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if stage == "test":
            if self.store is None:
                self.store = self._build_store()
            if self.test_store is None:
                self.test_store = self._build_test_store()
            if self.test_store is not None:
                self.test_set = PatchDataset(self.test_store.root, None, self.normalization)
        if self.store is not None:
            self.train_set = PatchDataset(self.store.root, self.store.indices_for(self.splits["train"]),
                                          self.normalization)
            self.val_set = PatchDataset(self.store.root, self.store.indices_for(self.splits["val"]),
                                        self.normalization)

    def train_sampling_kwargs(self) -> dict:
        """How train batches are drawn. Here a shuffle seeded by (seed, epoch), sharded over DDP ranks, with
        full batches (`datamodules.sampling`: a resumed run repeats the order); the DP issue overrides this
        (Poisson sampling, `sampling: Literal["shuffle","poisson"]`) without touching the rest."""
        assert self.train_set is not None, "call setup('fit') first"
        return {"sampler": epoch_shuffle_sampler(self.train_set, self.trainer, self.seed), "shuffle": False,
                "drop_last": True}  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        return ResumableLoader.like(self._loader(self.train_set, **self.train_sampling_kwargs()))

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup('fit') first"
        return self._loader(self.val_set)

    def test_dataloader(self) -> list[DataLoader]:
        """[train patches, held-out test patches] (the second only with test patients): real references of
        the GAN evaluation (FID to train vs to held-out patients = memorisation check)."""
        assert self.train_set is not None, "call setup('test') first"
        loaders = [self._loader(self.train_set)]
        if self.test_set is not None:
            loaders.append(self._loader(self.test_set))
        return loaders

    def patch_spacing(self) -> tuple[float, ...] | None:
        """Voxel size (mm) of the patches' axes, median over the cached patients (in-plane only for 2D
        patches); used for vessel radii in mm by the label-realism measures. None before setup."""
        if self.store is None:
            return None
        spacings = [p.get("spacing") for p in self.store.manifest.get("patients", {}).values() if p.get("spacing")]
        if not spacings:
            return None
        dims = len(self.patch_settings.patch_size)
        return tuple(float(v) for v in np.median(np.asarray(spacings, np.float64)[:, :dims], axis=0))
