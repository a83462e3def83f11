"""Shared DataModule machinery: cohort (real or simulated on first use), patient splits, patch cache,
patch dataset with per-patch normalisation, and per-device batch size.

`batch_size` is the GLOBAL batch size (as the papers state it); each DDP process loads
batch_size // world_size, and a batch size not divisible by the world size is refused rather than
silently changing the effective batch.

Preprocessing (`target_spacing`, `skull_strip`; `datamodules.preprocess`) is attached to every patient record, so
the patch cache, validation and the test volumes all see the same resampled / skull-stripped volumes, and it is
part of the patch settings, hence of the cache key and the run manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.cohort import CohortError, PatientRecord, discover_cohort
from datamodules.cohort_checks import listed_patient_ids, needs_simulation, validate_patients
from datamodules.patch_store import PatchStore, build_patch_store
from datamodules.patches import PatchSettings
from datamodules.preprocess import PreparedPatchSettings, VolumePrep
from datamodules.splits import split_patients

log = logging.getLogger(__name__)

Normalization = Literal["minmax", "zscore", "none"]


def pin_memory_for(trainer: object | None) -> bool:
    """Pinned host memory (faster, asynchronous copies to the GPU) only when the trainer runs on CUDA; without a
    trainer, when CUDA exists. Shared by every DataModule's loaders."""
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None:
        from lightning.pytorch.accelerators import CUDAAccelerator

        return isinstance(accelerator, CUDAAccelerator)
    return torch.cuda.is_available()


@dataclass
class SimulationSpec:
    """How to simulate the cohort when cohort_dir is the default simulated cohort and holds none (arguments of
    simulation.cohort.simulate_cohort; where it may simulate: `datamodules.cohort_checks`)."""

    profile: str = "pegasus"
    n_patients: int = 66
    scale: float = 1.0
    seed: int = 0


def normalize_patch(x: np.ndarray, mode: Normalization) -> np.ndarray:
    """Per-patch normalisation. minmax → [-1, 1] (a constant patch maps to -1, i.e. background);
    zscore → zero mean, unit SD (a constant patch maps to 0)."""
    x = np.asarray(x, dtype=np.float32)
    if mode == "none":
        return x
    if mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            return np.full_like(x, -1.0)
        return (x - lo) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)
    if mode == "zscore":
        sd = float(x.std())
        return (x - np.float32(x.mean())) / np.float32(sd if sd > 0 else 1.0)
    raise ValueError(f"unknown normalization {mode!r}; expected 'minmax', 'zscore' or 'none'")


class PatchDataset(Dataset):
    """Patches of a PatchStore (subset by index) as {"image": (1,*patch) f32, "label": (1,*patch) f32}.

    The store is opened lazily in each worker: a pickled memmap would be copied whole into spawned workers.
    """

    def __init__(self, store_root: str | Path, indices: np.ndarray | None = None,
                 normalization: Normalization = "none") -> None:
        self.store_root = Path(store_root)
        self.normalization = normalization
        self._store: PatchStore | None = None
        self.indices = np.arange(len(self.store)) if indices is None else np.asarray(indices, dtype=np.int64)

    @property
    def store(self) -> PatchStore:
        if self._store is None:
            self._store = PatchStore(self.store_root)
        return self._store

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.indices[i])
        image = normalize_patch(np.array(self.store.images[j], dtype=np.float32), self.normalization)  # copy: memmap is read-only
        label = np.array(self.store.labels[j], dtype=np.float32)
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}


class CohortDataModule(L.LightningDataModule):
    """Base: subclasses set `self.patch_settings` (None = no patch cache) and define the loaders."""

    patch_settings: PatchSettings | None = None

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
        target_spacing: Sequence[float] | None = None,
        skull_strip: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(simulate, dict):
            simulate = SimulationSpec(**simulate)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cohort_dir = Path(cohort_dir)
        self.simulate = simulate
        self.n_train, self.n_val, self.n_test, self.split_seed = n_train, n_val, n_test, split_seed
        self.cache_dir = Path(cache_dir)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.prep = VolumePrep.from_args(target_spacing, skull_strip)  # None: native grid, unstripped
        self.records: list[PatientRecord] = []
        self.splits: dict[str, list[str]] = {}
        self.store: PatchStore | None = None

    def make_patch_settings(self, patch_size: Sequence[int], n_vessel: int, n_random: int, grid: Sequence[int],
                            seed: int) -> PatchSettings:
        """Patch settings including this DataModule's preprocessing (it changes the patches: part of the key)."""
        prep = self.prep or VolumePrep()
        return PreparedPatchSettings(tuple(patch_size), n_vessel, n_random, tuple(grid), seed,  # type: ignore[arg-type]
                                     target_spacing=prep.target_spacing, skull_strip=prep.skull_strip)

    # ------------------------------------------------------------------ cohort, splits, cache
    def ensure_cohort(self) -> None:
        """Simulate the cohort if `simulate` is set and cohort_dir is the default simulated cohort, absent or
        unfinished (rule: `datamodules.cohort_checks`); otherwise cohort_dir must hold a usable cohort."""
        if not needs_simulation(self.cohort_dir, self.simulate):
            return
        from simulation.cohort import simulate_cohort  # lazy: the data layer must not need the simulator

        assert self.simulate is not None
        log.info("simulating cohort %s into %s", self.simulate, self.cohort_dir)
        simulate_cohort(str(self.cohort_dir), profile=self.simulate.profile, n_patients=self.simulate.n_patients,
                        seed=self.simulate.seed, scale=self.simulate.scale, overwrite=False, progress=True)

    def _load_cohort(self) -> None:
        records = discover_cohort(self.cohort_dir)
        listed = listed_patient_ids(self.cohort_dir) if self.simulate is not None else None
        if listed is not None:  # a simulated cohort lists its patients: ignore extra folders
            records = [r for r in records if r.patient_id in set(listed)]
        if self.prep is not None:
            records = [replace(r, prep=self.prep) for r in records]
        self.records = records
        self.splits = split_patients([r.patient_id for r in self.records], self.n_train, self.n_val,
                                     self.n_test, self.split_seed)
        if self.prep is not None and self.prep.skull_strip:
            used = {pid for split in self.splits.values() for pid in split}
            for r in self.records:
                if r.patient_id in used and r.brain_mask is None:
                    raise CohortError(f"{r.image}: skull_strip needs a brain mask, and patient {r.patient_id!r} has "
                                      "none (add brain_mask.nii.gz / the cohort.csv column, or set skull_strip false)")

    def _validate_unpatched(self) -> None:
        """Validate the split patients the patch cache does not cover (test patients, unused train patients)
        before any training: patients in the cache were validated when it was extracted."""
        patched = set(self.patch_patients()) if self.patch_settings is not None else set()
        ids = {pid for split in self.splits.values() for pid in split} - patched
        validate_patients([r for r in self.records if r.patient_id in ids], self.cache_dir, self.patch_settings)

    def records_of(self, split: str) -> list[PatientRecord]:
        ids = set(self.splits[split])
        return [r for r in self.records if r.patient_id in ids]

    def patch_patients(self) -> list[str]:
        """Patients whose patches are cached; test patients are evaluated on whole volumes only."""
        return self.splits["train"] + self.splits["val"]

    def _build_store(self) -> PatchStore | None:
        if self.patch_settings is None:
            return None
        ids = set(self.patch_patients())
        return build_patch_store([r for r in self.records if r.patient_id in ids], self.cache_dir,
                                 self.patch_settings)

    def prepare_data(self) -> None:
        self.ensure_cohort()
        self._load_cohort()
        self._validate_unpatched()
        self._build_store()

    def setup(self, stage: str | None = None) -> None:
        if not self.records:
            self.ensure_cohort()
            self._load_cohort()
            self._validate_unpatched()  # cache hits after prepare_data (e.g. on other DDP ranks)
        if stage in (None, "fit", "validate") and self.store is None:
            self.store = self._build_store()  # a cache hit after prepare_data; builds if it was skipped

    # ------------------------------------------------------------------ loaders
    @property
    def world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1

    @property
    def per_device_batch_size(self) -> int:
        ws = self.world_size
        if self.batch_size % ws:
            raise ValueError(f"batch_size {self.batch_size} is the global batch and must be divisible by the "
                             f"world size {ws}")
        return self.batch_size // ws

    def _pin_memory(self) -> bool:
        return pin_memory_for(getattr(self, "trainer", None))

    def _loader(self, dataset: Dataset, *, batch_size: int | None = None, shuffle: bool = False,
                drop_last: bool = False, **kwargs: object) -> DataLoader:
        """Loader settings for every split. With `num_workers` > 0 the workers persist across epochs (no re-fork, the
        store's memory maps stay open) and each keeps `prefetch_factor` (torch's 2) batches ready; patches are read
        from the memory-mapped store in each worker (PatchDataset opens it lazily), so neither workers nor DDP ranks
        copy the store. bench/bench_loader.py measures whether this feeds the GPU step."""
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.per_device_batch_size if batch_size is None else batch_size,
                          shuffle=shuffle, drop_last=drop_last, num_workers=self.num_workers, generator=gen,
                          persistent_workers=self.num_workers > 0, pin_memory=self._pin_memory(), **kwargs)

    def cohort_spacing(self) -> tuple[float, float, float] | None:
        """Voxel size (mm) the nets train at: `target_spacing` if set, else the median native spacing of the
        patients in the patch cache. None before setup."""
        if self.prep is not None and self.prep.target_spacing is not None:
            return self.prep.target_spacing
        if self.store is None:
            return None
        spacings = [p.get("spacing") for p in self.store.manifest.get("patients", {}).values() if p.get("spacing")]
        if not spacings:
            return None
        median = np.median(np.asarray(spacings, np.float64), axis=0)
        return tuple(round(float(v), 6) for v in median)  # type: ignore[return-value]  # NIfTI zooms are float32

    def data_manifest(self) -> dict:
        """What a run trained on, for `callbacks.run_manifest.RunManifest`: cohort, split, patch store.

        The patch store's key hashes the extraction settings and every source file's sha256, so equal
        keys mean byte-identical training patches.
        """
        store = self.store.manifest if self.store is not None else {}
        return {
            "cohort_dir": str(self.cohort_dir.resolve()),
            "simulate": asdict(self.simulate) if self.simulate else None,
            "splits": self.splits,
            "patch_settings": self.patch_settings.to_dict() if self.patch_settings is not None else None,
            "preprocessing": (self.prep or VolumePrep()).to_dict(),
            "spacing": list(sp) if (sp := self.cohort_spacing()) is not None else None,
            "patch_store_key": store.get("key"),
            "sources": {pid: entry.get("sources") for pid, entry in store.get("patients", {}).items()}
            if isinstance(store.get("patients"), dict) else None,
        }

    def state_dict(self) -> dict:
        return {"splits": self.splits, "simulate": asdict(self.simulate) if self.simulate else None}
