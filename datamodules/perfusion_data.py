"""Slices of DSC-MRI series and one perfusion map for pix2pix / temp-pix2pix (thesis ch. 7, SPEC §3.4).

Contract with the model: /work/notes_tmp/perfusion_interface.md. A batch is
{"frames": (B,T,H,W) in [-1,1], "target": (B,1,H,W) in [-1,1], "mask": (B,1,H,W) bool,
 "pipeline"/"truth": (B,1,H,W) physical units, "patient": [str], "slice": (B,) long}; H, W follow x, y.

Why these choices:
- Scaling is the paper's `datanorm="once"`: one global min–max of the *training* patients, per sequence (signal,
  target map), to [-1, 1]. Per-slice scaling would leak the answer's range into the input; the scalers are in
  `state_dict()` so checkpoints carry them and physical-unit metrics work after a reload.
- Splits are by patient (`datamodules.splits`): slices of one patient never straddle train and test.
- Only brain-containing slices (brain fraction >= `min_brain_fraction`) are used; empty slices would teach the
  networks nothing and make NRMSE undefined.
- The series is resampled in time to `frames` (the paper's 80; `datamodules.dsc_cohort`), the acquired TR is kept.
- `cache_dir` (paper-sized cohorts): the prepared slices are written once as .npy and memory-mapped; without it
  the prepared cohort is held in memory (fine at CPU sizes, ~22 GB at the paper's 203 × 21 × 80 × 128²).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, TypeVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import pin_memory_for
from datamodules.cohort import CohortError
from datamodules.cohort_checks import is_default_simulated_dir
from datamodules.dsc_cohort import (MAX_FRAMES, MIN_FRAMES, SERIES_NAME, list_patients, load_dsc_patient,
                                   read_cohort_meta)
from datamodules.sampling import ResumableLoader, epoch_shuffle_sampler
from datamodules.splits import split_patients

log = logging.getLogger(__name__)

MapName = Literal["cbf", "cbv", "mtt", "tmax", "ttp"]
#: Paper splits (train, val, test): Heidelberg acute stroke 204 patients, PEGASUS steno-occlusive 72 (thesis ch. 7).
DEFAULT_SPLITS = {"acute": (142, 20, 41), "steno": (50, 8, 12)}
CACHE_VERSION = "1"
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)  # the scalers return what they are given


@dataclass
class MinMaxScaler:
    """Global min–max to [-1, 1] and back; mutated in place by `load_state_dict` so datasets see the restored one."""

    lo: float = 0.0
    hi: float = 1.0

    @property
    def span(self) -> float:
        return self.hi - self.lo if self.hi > self.lo else 1.0

    def to_unit(self, x: ArrayT) -> ArrayT:
        return (x - self.lo) * (2.0 / self.span) - 1.0

    def to_physical(self, x: ArrayT) -> ArrayT:
        return (x + 1.0) * (self.span / 2.0) + self.lo

    def fit(self, arrays: list[np.ndarray]) -> MinMaxScaler:
        self.lo = float(min(float(np.min(a)) for a in arrays))
        self.hi = float(max(float(np.max(a)) for a in arrays))
        return self


def default_split(profile: str | None, n: int) -> tuple[int, int, int]:
    """The paper split of the profile; a smaller cohort gets the same proportions (at least 1 val and 1 test)."""
    tr, va, te = DEFAULT_SPLITS.get(profile or "acute", DEFAULT_SPLITS["acute"])
    total = tr + va + te
    if n >= total:
        return tr, va, te
    if n < 3:
        raise CohortError(f"a perfusion cohort needs at least 3 patients (train/val/test), found {n}")
    n_val, n_test = max(1, round(n * va / total)), max(1, round(n * te / total))
    return n - n_val - n_test, n_val, n_test


@dataclass
class DSCSimulationSpec:
    """Simulate the cohort on first use (only into data/simulated/dsc*, as the TOF DataModules do)."""

    profile: Literal["acute", "steno"] = "acute"
    n_patients: int = 12
    shape: tuple[int, int, int] = (32, 32, 6)
    seed: int = 0


class SliceStore:
    """Prepared brain slices of one patient: frames (S,T,X,Y), mask/pipeline/truth (S,X,Y), slice indices (S,)."""

    KEYS = ("frames", "mask", "pipeline", "truth", "slices")

    def __init__(self, arrays: dict[str, np.ndarray], tr_original: float, tr: float, te: float | None) -> None:
        self.arrays, self.tr_original, self.tr, self.te = arrays, tr_original, tr, te

    @classmethod
    def build(cls, root: Path, pid: str, target_map: str, frames: int | None, min_brain_fraction: float,
              min_source_frames: int) -> SliceStore:
        p = load_dsc_patient(root, pid, target_map, frames, min_source_frames)
        frac = p.mask.mean(axis=(0, 1))
        keep = np.flatnonzero(frac >= min_brain_fraction)
        if keep.size == 0:
            raise CohortError(f"{root / pid / 'brain_mask.nii.gz'}: no slice has a brain fraction >= "
                              f"{min_brain_fraction}")
        arrays = {"frames": np.ascontiguousarray(np.moveaxis(p.frames[..., keep], 3, 0)),  # (S,T,X,Y)
                  "mask": np.ascontiguousarray(np.moveaxis(p.mask[..., keep], 2, 0)),
                  "pipeline": np.ascontiguousarray(np.moveaxis(p.pipeline[..., keep], 2, 0)),
                  "truth": np.ascontiguousarray(np.moveaxis(p.truth[..., keep], 2, 0)),
                  "slices": keep.astype(np.int64)}
        return cls(arrays, p.tr_original, p.tr, p.te)

    def save(self, folder: Path) -> None:
        """Arrays first, timing json last (its presence marks a complete entry); each file written then renamed."""
        folder.mkdir(parents=True, exist_ok=True)
        for k in self.KEYS:
            tmp = folder / f".{k}.{os.getpid()}.npy"
            np.save(tmp, self.arrays[k])
            os.replace(tmp, folder / f"{k}.npy")
        tmp = folder / f".timing.{os.getpid()}.json"
        tmp.write_text(json.dumps({"tr_original": self.tr_original, "tr": self.tr, "te": self.te}))
        os.replace(tmp, folder / "timing.json")

    @classmethod
    def open(cls, folder: Path) -> SliceStore | None:
        if not (folder / "timing.json").is_file():
            return None
        t = json.loads((folder / "timing.json").read_text())
        arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in cls.KEYS}
        return cls(arrays, t["tr_original"], t["tr"], t["te"])


class PerfusionSliceDataset(Dataset):
    """Items of the contract's batch; scaling happens here so a restored scaler applies at once."""

    def __init__(self, stores: dict[str, SliceStore], ids: list[str], reference: str,
                 frames_scaler: MinMaxScaler, target_scaler: MinMaxScaler) -> None:
        self.stores, self.reference = stores, reference
        self.frames_scaler, self.target_scaler = frames_scaler, target_scaler
        self.index = [(pid, s) for pid in ids for s in range(len(stores[pid].arrays["slices"]))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        pid, s = self.index[i]
        a = self.stores[pid].arrays
        frames = torch.from_numpy(np.array(a["frames"][s], dtype=np.float32))
        pipeline = torch.from_numpy(np.array(a["pipeline"][s], dtype=np.float32))[None]
        truth = torch.from_numpy(np.array(a["truth"][s], dtype=np.float32))[None]
        target = pipeline if self.reference == "pipeline" else truth
        return {"frames": self.frames_scaler.to_unit(frames).float(),
                "target": self.target_scaler.to_unit(target).float(),
                "mask": torch.from_numpy(np.array(a["mask"][s], dtype=bool))[None],
                "pipeline": pipeline, "truth": truth, "patient": pid, "slice": int(a["slices"][s])}


class PerfusionDataModule(L.LightningDataModule):
    def __init__(
        self,
        cohort_dir: str,
        target_map: MapName = "tmax",
        reference: Literal["pipeline", "truth"] = "pipeline",
        frames: int | None = 80,
        batch_size: int = 4,
        split: tuple[int, int, int] | None = None,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        min_brain_fraction: float = 0.05,
        min_source_frames: int = 40,
        simulate: DSCSimulationSpec | None = None,
    ) -> None:
        """
        Args:
            cohort_dir: the cohort folder (layout of `tofgan simulate-dsc`).
            target_map: the map the networks learn.
            reference: "pipeline" (the oSVD maps, the paper's setting: software maps) or "truth" (simulator truth).
            frames: frames per series after linear resampling in time (80 as the paper; 64–127 for temp-pix2pix);
                null keeps the acquired frames, which must then be 64–127.
            batch_size: global batch size (4 as the paper); each DDP rank loads batch_size / world size.
            split: (train, val, test) patients; null: the profile's paper split (acute 142/20/41, steno 50/8/12),
                in proportion when the cohort is smaller.
            seed: split and shuffle seed.
            num_workers: DataLoader workers.
            cache_dir: where prepared slices are memory-mapped from (null: held in memory).
            min_brain_fraction: a slice is used when at least this share of it is brain.
            min_source_frames: fewest acquired frames accepted for resampling (Heidelberg had 50–75).
            simulate: simulate the cohort first when cohort_dir is data/simulated/dsc* and holds none.
        """
        super().__init__()
        if frames is not None and not MIN_FRAMES <= frames <= MAX_FRAMES:
            raise ValueError(f"PerfusionDataModule: frames={frames} (--data.init_args.frames): the temporal "
                             f"network reduces only {MIN_FRAMES}–{MAX_FRAMES} frames to one; resample to a count in "
                             "that range (the paper: 80)")
        if batch_size < 1:
            raise ValueError(f"PerfusionDataModule: batch_size (--data.init_args.batch_size) must be >= 1, "
                             f"got {batch_size}")
        if isinstance(simulate, dict):
            simulate = DSCSimulationSpec(**simulate)
        self.cohort_dir = Path(cohort_dir)
        self.target_map, self.reference, self.frames = target_map, reference, frames
        self.batch_size, self.split, self.seed, self.num_workers = batch_size, split, seed, num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.min_brain_fraction, self.min_source_frames, self.simulate = min_brain_fraction, min_source_frames, simulate
        self.frames_scaler, self.target_scaler = MinMaxScaler(), MinMaxScaler()
        self.splits: dict[str, list[str]] = {}
        self.stores: dict[str, SliceStore] = {}
        self.profile: str | None = None

    # ------------------------------------------------------------------ cohort
    def _ensure_cohort(self) -> None:
        if self.simulate is None:
            return
        default_dir = is_default_simulated_dir(self.cohort_dir, "dsc")
        meta = read_cohort_meta(self.cohort_dir)
        s = self.simulate
        want = {"profile": s.profile, "n_patients": s.n_patients, "shape": list(s.shape), "seed": s.seed}
        diff = [f"{k}: {meta.get(k)!r} on disk, {v!r} asked" for k, v in want.items() if meta and meta.get(k) != v]
        if diff:
            raise CohortError(f"{self.cohort_dir / 'cohort.json'}: simulated with other settings ({'; '.join(diff)}); "
                              "use another cohort_dir or the same `simulate` settings")
        if meta.get("complete", bool(meta)) or not default_dir:
            return  # a finished cohort, or not the default folder (then it must already hold a cohort)
        from simulation.dsc_cohort import simulate_dsc_cohort  # lazy: the data layer must not need the simulator

        simulate_dsc_cohort(str(self.cohort_dir), profile=s.profile, n_patients=s.n_patients, shape=tuple(s.shape),
                            seed=s.seed, progress=True)

    def _store(self, pid: str) -> SliceStore:
        args = (self.cohort_dir, pid, self.target_map, self.frames, self.min_brain_fraction, self.min_source_frames)
        if self.cache_dir is None:
            return SliceStore.build(*args)
        folder = self.cache_dir / self._cache_key(pid)
        store = SliceStore.open(folder)
        if store is None:
            store = SliceStore.build(*args)
            store.save(folder)
            store = SliceStore.open(folder)
        assert store is not None
        return store

    def _cache_key(self, pid: str) -> str:
        """Settings and the source files' size and mtime: a changed file or setting is prepared again."""
        src = self.cohort_dir / pid
        files = sorted(p for p in src.rglob("*.nii*") if p.is_file())
        stamp = [(str(p.relative_to(src)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        key = json.dumps([CACHE_VERSION, str(self.cohort_dir.resolve()), pid, self.target_map, self.frames,
                          self.min_brain_fraction, self.min_source_frames, stamp])
        return f"{pid}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def setup(self, stage: str | None = None) -> None:
        if self.stores:
            return
        self._ensure_cohort()
        ids = list_patients(self.cohort_dir)
        self.profile = read_cohort_meta(self.cohort_dir).get("profile") or \
            (self.simulate.profile if self.simulate else None)
        try:
            n = self.split or default_split(self.profile, len(ids))
        except CohortError as err:
            raise CohortError(f"{self.cohort_dir}: {err}") from None
        self.splits = split_patients(ids, n[0], n[1], n[2], self.seed)
        for pid in (p for split in self.splits.values() for p in split):
            self.stores[pid] = self._store(pid)
        train = [self.stores[p].arrays for p in self.splits["train"]]
        if self.reference == "truth" and any(np.isnan(a["truth"]).any() for a in train):
            raise CohortError(f"{self.cohort_dir}: reference 'truth' but some training patients have no "
                              f"truth/{self.target_map}.nii.gz (real data): use reference 'pipeline'")
        if not self._restored:
            self.frames_scaler.fit([a["frames"] for a in train])
            self.target_scaler.fit([a[self.reference] for a in train])
        log.info("perfusion cohort %s: %s", self.cohort_dir, {k: len(v) for k, v in self.splits.items()})

    _restored = False

    def dataset(self, split: str) -> PerfusionSliceDataset:
        return PerfusionSliceDataset(self.stores, self.splits[split], self.reference, self.frames_scaler,
                                     self.target_scaler)

    def timing(self, patient_id: str) -> dict[str, float | None]:
        """Acquired TR, resampled TR and TE (seconds) of a patient."""
        s = self.stores[patient_id]
        return {"tr_original": s.tr_original, "tr": s.tr, "te": s.te}

    # ------------------------------------------------------------------ loaders
    @property
    def per_device_batch_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        ws = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        if self.batch_size % ws:
            raise ValueError(f"batch_size {self.batch_size} is the global batch and must be divisible by the "
                             f"world size {ws}")
        return self.batch_size // ws

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        sampler = epoch_shuffle_sampler(ds, getattr(self, "trainer", None), self.seed)
        return ResumableLoader(ds, batch_size=self.per_device_batch_size, sampler=sampler, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0, pin_memory=self._pin_memory())

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=self.per_device_batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=self._pin_memory())

    def _pin_memory(self) -> bool:
        return pin_memory_for(getattr(self, "trainer", None))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        return {"target_map": self.target_map, "reference": self.reference, "frames": self.frames,
                "splits": self.splits, "target_scaler": asdict(self.target_scaler),
                "frames_scaler": asdict(self.frames_scaler)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the training-set scalers (a resumed run keeps its scaling even if the cohort changed)."""
        if state.get("target_map", self.target_map) != self.target_map:
            raise ValueError(f"PerfusionDataModule: the checkpoint was trained on {state['target_map']!r}, this run "
                             f"asks {self.target_map!r} (--data.init_args.target_map)")
        for name in ("target_scaler", "frames_scaler"):
            if name in state:
                scaler = getattr(self, name)
                scaler.lo, scaler.hi = float(state[name]["lo"]), float(state[name]["hi"])
        self._restored = True

    def data_manifest(self) -> dict:
        """What a run trained on, for `callbacks.run_manifest.RunManifest`."""
        return {"cohort_dir": str(self.cohort_dir.resolve()), "series": SERIES_NAME, "profile": self.profile,
                **self.state_dict(), "timing": {p: self.timing(p) for p in self.stores}}
