"""GAN training data: image+label patches of the train patients, image min–max scaled to [-1, 1] per patch.

Test stage (`tofgan test` on a GAN checkpoint): the GAN is judged against real patches, so the test loaders
are [train patches, held-out test-patient patches] (dataloader_idx 0 and 1), the latter extracted with the
same settings as the training patches into their own cached store (the train/val store is untouched).

Canaries (`canaries`: the npz of `metrics.dp_audit.write_canary_set`, `tofgan audit --canaries`): the canary
patches marked "included" are appended to the training loader's dataset only (not to `train_set`, which the GAN
evaluation and the audit use as the real members), normalised as the real patches are; the data manifest records
their count and the file's sha256, so the audit can check it scores the canaries this run trained with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from datamodules.base import CohortDataModule, Normalization, PatchDataset, SimulationSpec, normalize_patch
from datamodules.patch_store import PatchStore, build_patch_store, file_sha256
from datamodules.sampling import ResumableLoader, epoch_shuffle_sampler

#: dataloader_idx of the test loaders (GANEvaluationCallback reads them by these indices).
TEST_TRAIN_IDX, TEST_HELDOUT_IDX = 0, 1


class CanaryPatches(Dataset):
    """Canary patches of a canary file (npz: images (m,1,…) f32, labels (m,1,…) {0,1}, included (m,) bool) as
    {"image", "label"} items like `PatchDataset`'s: the image normalised per patch with the real patches' mode.

    Args:
        path: the canary file. normalization: the data module's. only_included: keep only the canaries marked
            "included" (what training sees); False: all m (what the audit scores).
        patch_size: expected spatial shape (checked: a canary of another size would break the batch).
    """

    def __init__(self, path: str | Path, normalization: Normalization, only_included: bool = True,
                 patch_size: tuple[int, ...] | None = None) -> None:  # fmt: skip
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: canary file not found (write one with"
                                    " metrics.dp_audit.write_canary_set)")
        self.sha256 = file_sha256(self.path)
        try:
            data = np.load(self.path)  # allow_pickle False: a file holding objects is refused, never run
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an npz archive")
            with data:
                images, labels, included = data["images"], data["labels"], data["included"].astype(bool)
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(f"{self.path}: not a canary file (npz with images, labels, included): {err}") from err
        shapes_agree = images.shape == labels.shape and included.shape == images.shape[:1]
        if not shapes_agree or images.ndim < 4 or images.shape[1] != 1:
            raise ValueError(f"{self.path}: canary arrays disagree: images {images.shape}, labels {labels.shape},"
                             f" included {included.shape} (need (m,1,…), (m,1,…), (m,))")  # fmt: skip
        if not np.isfinite(images).all() or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{self.path}: canary images must be finite and labels 0 or 1")
        if patch_size is not None and tuple(images.shape[2:]) != tuple(patch_size):
            raise ValueError(f"{self.path}: canary patches are {list(images.shape[2:])}, the data's patch_size is"
                             f" {list(patch_size)}")  # fmt: skip
        self.n_canaries, self.n_included = len(images), int(included.sum())
        self.included = included
        keep = included if only_included else np.ones(len(images), bool)
        self.images, self.labels = images[keep].astype(np.float32), labels[keep].astype(np.float32)
        self.normalization: Normalization = normalization

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = normalize_patch(self.images[i], self.normalization)
        return {"image": torch.from_numpy(np.array(image)), "label": torch.from_numpy(self.labels[i].copy())}

    def record(self) -> dict[str, object]:
        """For the data manifest: file name (not its folder), sha256, counts."""
        return {"file": self.path.name, "sha256": self.sha256, "n_canaries": self.n_canaries,
                "n_included": self.n_included}  # fmt: skip


class GANPatchDataModule(CohortDataModule):
    """2D (patch_size of 2 entries; SPEC: 96×96, 500 vessel + 500 random per patient) or 3D (3 entries;
    SPEC: 128×128×64, `grid` [3,3,2] systematic patches + n_vessel=32, n_random=0). `grid` is ignored in 2D.
    The label stays {0,1}: the GAN module applies its own label encoding. `target_spacing` / `skull_strip`:
    volume preprocessing before patches are cut (`datamodules.preprocess`); the 2D paper's protocol strips.
    `canaries`: canary file whose "included" patches join the training loader (module docstring)."""

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
        canaries: str | None = None,
    ) -> None:
        super().__init__(cohort_dir, simulate, n_train, n_val, n_test, split_seed, cache_dir, batch_size,
                         num_workers, seed, target_spacing, skull_strip)
        self.patch_settings = self.make_patch_settings(patch_size, n_vessel, n_random, grid, seed)
        self.normalization: Normalization = normalization
        self.train_set: PatchDataset | None = None
        self.val_set: PatchDataset | None = None
        self.test_store: PatchStore | None = None
        self.test_set: PatchDataset | None = None
        self.canaries = canaries
        self.canary_set: CanaryPatches | None = None

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
        if self.canaries is not None and stage in (None, "fit") and self.canary_set is None:
            self.canary_set = CanaryPatches(self.canaries, self.normalization, True, self.patch_settings.patch_size)

    @property
    def fit_set(self) -> Dataset:
        """What the GAN trains on: the training patches, then the included canaries (if any)."""
        assert self.train_set is not None, "call setup('fit') first"
        return self.train_set if self.canary_set is None else ConcatDataset([self.train_set, self.canary_set])

    def train_sampling_kwargs(self) -> dict:
        """How train batches are drawn. Here a shuffle seeded by (seed, epoch), sharded over DDP ranks, with
        full batches (`datamodules.sampling`: a resumed run repeats the order); the DP issue overrides this
        (Poisson sampling, `sampling: Literal["shuffle","poisson"]`) without touching the rest."""
        return {"sampler": epoch_shuffle_sampler(self.fit_set, self.trainer, self.seed), "shuffle": False,
                "drop_last": True}  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader.like(self._loader(self.fit_set, **self.train_sampling_kwargs()))

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

    def data_manifest(self) -> dict:
        """The parent's record, plus the canaries' (file name, sha256, counts) when training with canaries."""
        record = super().data_manifest()
        if self.canary_set is not None:
            record["canaries"] = self.canary_set.record()
        return record

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
