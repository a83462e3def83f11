"""GAN training data: image+label patches of the train patients, image min–max scaled to [-1, 1] per patch."""

from __future__ import annotations

from torch.utils.data import DataLoader

from datamodules.base import CohortDataModule, Normalization, PatchDataset, SimulationSpec
from datamodules.patches import PatchSettings


class GANPatchDataModule(CohortDataModule):
    """2D (patch_size of 2 entries; SPEC: 96×96, 500 vessel + 500 random per patient) or 3D (3 entries;
    SPEC: 128×128×64, `grid` [3,3,2] systematic patches + n_vessel=32, n_random=0). `grid` is ignored in 2D.
    The label stays {0,1}: the GAN module applies its own label encoding."""

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
    ) -> None:
        super().__init__(cohort_dir, simulate, n_train, n_val, n_test, split_seed, cache_dir, batch_size,
                         num_workers, seed)
        self.patch_settings = PatchSettings(tuple(patch_size), n_vessel, n_random, tuple(grid), seed)  # type: ignore[arg-type]
        self.normalization: Normalization = normalization
        self.train_set: PatchDataset | None = None
        self.val_set: PatchDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.store is not None:
            self.train_set = PatchDataset(self.store.root, self.store.indices_for(self.splits["train"]),
                                          self.normalization)
            self.val_set = PatchDataset(self.store.root, self.store.indices_for(self.splits["val"]),
                                        self.normalization)

    def train_sampling_kwargs(self) -> dict:
        """How train batches are drawn. Uniform shuffling with full batches here; the DP issue overrides
        this (Poisson sampling, `sampling: Literal["shuffle","poisson"]`) without touching the rest."""
        return {"shuffle": True, "drop_last": True}

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        return self._loader(self.train_set, **self.train_sampling_kwargs())

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup('fit') first"
        return self._loader(self.val_set)
