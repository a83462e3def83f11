"""Segmentation data: train on real and/or synthetic patches, validate on real val patches, test/predict on
whole real volumes. Images stay raw (normalization="none"): the segmentation module z-scores each
patch/window itself, which is what lets raw real patches and [-1, 1] synthetic patches be pooled.

Training data modes (SPEC §4, Kossen et al. 2021 Table 2): real only (`use_real`, no stores), synthetic only
(`use_real: false` + `synthetic_stores`), real + synthetic ("augmentation" rows), or several synthetic stores
pooled; validation is always on the real validation patients (their patches, or with `val_on: volumes` their
whole volumes). `augment` switches on the paper's classical
augmentation (`datamodules.augmentation`) for the training patches only, real and synthetic alike (2D only).

2D and 3D alike: a 3-entry `patch_size` gives 3D patches (`data/pegasus_seg3d.yaml`: 250 vessel-centred per
patient, `grid [0, 0, 0]`), cached, validated and pooled with synthetic 3D stores the same way. Real and synthetic
stores are memory-mapped (`datamodules.patch_store.PatchStore`): a paper-scale 3D store (tens of GiB) is read one
patch per item, never loaded whole."""

from __future__ import annotations

from typing import Literal

from torch.utils.data import ConcatDataset, DataLoader, Dataset

from datamodules.augmentation import AugmentedDataset
from datamodules.base import CohortDataModule, Normalization, PatchDataset, SimulationSpec
from datamodules.patch_store import PatchStore
from datamodules.sampling import ResumableLoader, epoch_shuffle_sampler
from datamodules.volumes import VolumeDataset


class SegmentationDataModule(CohortDataModule):
    def __init__(
        self,
        cohort_dir: str,
        simulate: SimulationSpec | None = None,
        n_train: int = 41,
        n_val: int = 11,
        n_test: int = 14,
        split_seed: int = 0,
        cache_dir: str = ".cache/patches",
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        patch_size: list[int] = [96, 96],  # noqa: B006 - read only
        n_vessel: int = 500,
        n_random: int = 500,
        grid: list[int] = [3, 3, 2],  # noqa: B006
        normalization: Normalization = "none",
        use_real: bool = True,
        synthetic_stores: list[str] = [],  # noqa: B006
        predict_split: Literal["train", "val", "test"] = "test",
        augment: bool = False,
        test_split: Literal["val", "test"] = "test",
        target_spacing: list[float] | None = None,
        skull_strip: bool = False,
        val_on: Literal["patches", "volumes"] = "patches",
    ) -> None:
        """`test_split: val` runs `tofgan test` on the validation patients' whole volumes: the per-patient
        validation DSC / 95HD of the paper's Table 2 (the fit-time `val/dsc` is pooled over patches).
        `target_spacing` (mm) resamples every volume before patches are cut and before inference; predictions
        come back on the native grid. `skull_strip` zeroes the image and label outside the brain mask (the 2D
        paper's protocol). Both: `datamodules.preprocess`. `val_on: volumes` validates (and so selects epochs) on
        the validation patients' whole volumes by sliding window, scored as the test scores them, instead of on
        their patches: slower, but patches miss the false vessels a net marks away from them."""
        super().__init__(cohort_dir, simulate, n_train, n_val, n_test, split_seed, cache_dir, batch_size,
                         num_workers, seed, target_spacing, skull_strip)
        if not use_real and not synthetic_stores:
            raise ValueError("SegmentationDataModule: use_real is False and no synthetic_stores given: "
                             "there would be no training data")
        self.patch_settings = self.make_patch_settings(patch_size, n_vessel, n_random, grid, seed)
        if augment and self.patch_settings.is_3d:
            raise ValueError(f"SegmentationDataModule: augment is the 2D papers' in-plane augmentation (rotation, "
                             f"shear, flip of 2D patches) and patch_size {list(patch_size)} is 3D; set augment false")
        self.normalization: Normalization = normalization
        self.use_real = use_real
        self.synthetic_stores = [str(s) for s in synthetic_stores]
        self.predict_split = predict_split
        self.test_split = test_split
        self.val_on = val_on
        self.augment = augment
        self.train_set: Dataset | None = None
        self.val_set: PatchDataset | None = None

    def patch_patients(self) -> list[str]:
        return (self.splits["train"] if self.use_real else []) + self.splits["val"]

    def _synthetic_sets(self) -> list[PatchDataset]:
        sets = []
        for root in self.synthetic_stores:
            store = PatchStore(root)
            if store.patch_size != self.patch_settings.patch_size:
                raise ValueError(f"{root}: synthetic patch size {store.patch_size} differs from patch_size "
                                 f"{self.patch_settings.patch_size}")
            sets.append(PatchDataset(root, None, self.normalization))
        return sets

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.store is None:
            return
        parts: list[Dataset] = []
        if self.use_real:
            parts.append(PatchDataset(self.store.root, self.store.indices_for(self.splits["train"]),
                                      self.normalization))
        parts += self._synthetic_sets()
        self.train_set = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        if self.augment:
            self.train_set = AugmentedDataset(self.train_set, seed=self.seed)
        self.val_set = PatchDataset(self.store.root, self.store.indices_for(self.splits["val"]), self.normalization)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        # Shuffle seeded by (seed, epoch), sharded over DDP ranks, resumable mid-epoch (datamodules.sampling);
        # augmented patches get (epoch, index) keys, from which each patch's augmentation is drawn.
        sampler = epoch_shuffle_sampler(self.train_set, self.trainer, self.seed, keyed=self.augment)
        return ResumableLoader.like(self._loader(self.train_set, sampler=sampler, shuffle=False, drop_last=True))

    def val_dataloader(self) -> DataLoader:
        if self.val_on == "volumes":
            return self._loader(VolumeDataset(self.records_of("val")), batch_size=1)
        assert self.val_set is not None, "call setup('fit') first"
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(VolumeDataset(self.records_of(self.test_split)), batch_size=1)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(VolumeDataset(self.records_of(self.predict_split)), batch_size=1)
