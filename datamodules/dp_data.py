"""GAN patches for DP training: a fresh Poisson sample of the TRAINING patients' patches at every step.

Why these samplers are written here instead of opacus' `DPDataLoader`: the batches are dicts (opacus' empty
batch collate expects tuples), patient-level sampling has no opacus sampler, and no subset may ever be replayed
(the accounting assumes every step is an independent Poisson sample): each pass draws from (seed, rank, epoch,
pass number), the DP module calls `set_epoch` at every epoch start (Lightning itself calls it only on
`dataloader.sampler`, not on a batch sampler), and the default seed is fresh OS entropy, so a resumed run does
not replay an earlier epoch's subsets either. The torch RNG is not a CSPRNG (opacus' secure_mode needs torchcsprng, which
has no release for this torch); the privacy record says so.

- `privacy_unit: patch`: every training patch independently with q = batch_size / N (B_exp = batch_size).
- `privacy_unit: patient`: every training patient independently with q = m / P (`patients_per_step` m), then
  k = `patches_per_patient` of its patches uniformly without replacement; items carry "patient" (0..P−1).
- An empty draw is yielded as an empty batch (shape (0, 1, H, W), or (0, 1, H, W, D) for 3D patches): the module
  makes a noise-only step.
- 2D or 3D: the patches are the parent's (`patch_size` of 2 or 3 entries, data/pegasus_gan3d.yaml); nothing here
  depends on their shape (the 3D paper's appendix DPGAN: experiment/subramaniam2022_dpgan_sigma*.yaml).
- DDP: records (patches or patients) are sharded rank::world; each rank samples its shard at rate q, so the
  union is a Poisson sample of the whole set. Set `trainer.use_distributed_sampler: false`.
- Canaries (`canaries`, the GAN-level one-run DP audit): each included canary is one more sampling unit — a
  single patch at patch level, a single-patch pseudo-patient at patient level — so N (or P) grows by the number
  of included canaries: q = B / (N + n) (patch) or m / (P + n) (patient), and the default δ = min(1/(N + n), 1e-3)
  (`DPWGAN`) with it; `privacy_sampling` reports `n_canaries` (the data manifest the canary file's sha256).
- Validation (and the GAN test stage) are the parent's: validation patients are outside the guarantee unless
  public; selecting epochs on them costs the training patients nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.gan_data import GANPatchDataModule

PrivacyUnit = Literal["patch", "patient"]


class PoissonBatchSampler:
    """Index batches: each record (or each patient's group of records) independently with probability q.

    Args:
        groups: one array of dataset indices per sampling unit (one index per unit at patch level).
        sample_rate: q.
        steps: batches per epoch.
        per_group: records drawn from a sampled group (uniformly, without replacement; None = all).
        seed, rank, world_size: randomness from (seed, rank, epoch) — seed None: OS entropy, drawn once per
            sampler (per fit); units sharded rank::world.
    """

    def __init__(self, groups: list[np.ndarray], sample_rate: float, steps: int, per_group: int | None = None,
                 seed: int | None = None, rank: int = 0, world_size: int = 1) -> None:  # fmt: skip
        if not 0 < sample_rate <= 1 or steps < 1:
            raise ValueError(f"datamodules/dp_data.py: need 0 < sample_rate ≤ 1 and steps ≥ 1, got {sample_rate}, {steps}")
        self.groups = groups[rank::world_size]
        self.sample_rate, self.steps, self.per_group = sample_rate, steps, per_group
        self.seed = secrets.randbits(63) if seed is None else seed
        self.rank, self.epoch, self.passes = rank, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        self.passes += 1  # two passes never share a stream, even if nobody calls set_epoch
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, self.passes])
        for _ in range(self.steps):
            chosen = np.flatnonzero(rng.random(len(self.groups)) < self.sample_rate)
            batch: list[int] = []
            for g in chosen:
                group = self.groups[g]
                if self.per_group is not None and len(group) > self.per_group:
                    group = rng.choice(group, self.per_group, replace=False)
                batch += [int(i) for i in group]
            yield batch


class PatientTaggedDataset(Dataset):
    """A patch dataset whose items also carry "patient": the index (0..P−1) of the training patient (canaries:
    P, P+1, … — one pseudo-patient each)."""

    def __init__(self, patches: Dataset, patient_index: np.ndarray) -> None:
        self.patches, self.patient_index = patches, patient_index

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.patches[i], "patient": torch.tensor(int(self.patient_index[i]))}


class EmptySafeCollate:
    """default_collate, or zero-row tensors shaped like one item when the Poisson draw is empty."""

    def __init__(self, example: dict[str, torch.Tensor]) -> None:
        self.shapes = {k: (tuple(v.shape), v.dtype) for k, v in example.items()}

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if items:
            return default_collate(items)
        return {k: torch.zeros((0, *shape), dtype=dtype) for k, (shape, dtype) in self.shapes.items()}


class DPGANPatchDataModule(GANPatchDataModule):
    """`GANPatchDataModule` with Poisson sampling of the training patches or patients, 2D or 3D (module docstring).

    Args (beyond the parent's; `batch_size` is the expected global batch B_exp at patch level):
        privacy_unit: "patch" or "patient".
        patients_per_step: m, the expected number of patients per step (patient level; q = m / P).
        patches_per_patient: k patches per sampled patient (patient level).
        sampling_seed: seed of the Poisson draws (independent of `seed`, which extracts the patches); None = OS
            entropy. A published seed reveals which records were in which batch: tests only.
        steps_per_epoch: critic steps per epoch; None → round(1/q) (one expected pass over the records). Only the
            bookkeeping (checkpoints, logs) depends on it: the accountant counts critic steps.
    """

    def __init__(self, *args: Any, privacy_unit: PrivacyUnit = "patch", patients_per_step: int = 4,
                 patches_per_patient: int = 8, sampling_seed: int | None = None, steps_per_epoch: int | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        if privacy_unit not in ("patch", "patient"):
            raise ValueError(f"datamodules/dp_data.py: privacy_unit must be 'patch' or 'patient', got {privacy_unit!r}")
        if patients_per_step < 1 or patches_per_patient < 1:
            raise ValueError("datamodules/dp_data.py: patients_per_step and patches_per_patient must be ≥ 1, got"
                             f" {patients_per_step}, {patches_per_patient}")  # fmt: skip
        self.privacy_unit: PrivacyUnit = privacy_unit
        self.patients_per_step, self.patches_per_patient = patients_per_step, patches_per_patient
        self.sampling_seed, self.steps_per_epoch = sampling_seed, steps_per_epoch

    # ------------------------------------------------------------------ what the accountant needs
    def train_patient_index(self) -> tuple[list[str], np.ndarray]:
        """(training patient ids, then "canary:j" per included canary; unit index of every record of `fit_set`
        in order: the training patches' patients 0..P−1, then one pseudo-patient P+j per canary)."""
        assert self.store is not None and self.train_set is not None, "call setup('fit') first"
        ids = np.asarray(self.store.patient_ids)[self.train_set.indices]
        patients = sorted(set(ids.tolist()))
        lookup = {p: i for i, p in enumerate(patients)}
        n_canaries = len(self.canary_set) if self.canary_set is not None else 0
        index = np.concatenate([[lookup[p] for p in ids], len(patients) + np.arange(n_canaries)]).astype(np.int64)
        return patients + [f"canary:{j}" for j in range(n_canaries)], index

    def privacy_sampling(self) -> dict[str, Any]:
        """Public sampling parameters: unit, q, global expected batch (rows the noise is divided by), population."""
        patients, index = self.train_patient_index()
        n_canaries = len(self.canary_set) if self.canary_set is not None else 0
        if self.privacy_unit == "patch":
            n = len(index)
            if self.batch_size > n:
                raise ValueError(f"datamodules/dp_data.py: batch_size {self.batch_size} exceeds the {n} training patches")
            q, population, expected = self.batch_size / n, n, float(self.batch_size)
        else:
            n = len(patients)
            if self.patients_per_step > n:
                raise ValueError(f"datamodules/dp_data.py: patients_per_step {self.patients_per_step} exceeds the {n}"
                                 " training patients")  # fmt: skip
            q, population, expected = self.patients_per_step / n, n, float(self.patients_per_step)
        return {"unit": self.privacy_unit, "sampling": "poisson", "sample_rate": q, "expected_batch_size": expected,
                "population": population, "steps_per_epoch": self.steps_per_epoch or max(1, round(1 / q)),
                "patches_per_patient": self.patches_per_patient if self.privacy_unit == "patient" else None,
                "n_train_patients": len(patients) - n_canaries, "n_train_patches": len(index) - n_canaries,
                "n_canaries": n_canaries}  # fmt: skip

    # ------------------------------------------------------------------ loaders
    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0

    def train_batch_sampler(self) -> PoissonBatchSampler:
        """The Poisson sampler of this rank (patch: one group per patch; patient: one group per patient; a canary
        is a group of one in both)."""
        _, index = self.train_patient_index()
        info = self.privacy_sampling()
        if self.privacy_unit == "patch":
            groups, per_group = [np.asarray([i]) for i in range(len(index))], None
        else:
            units = info["n_train_patients"] + info["n_canaries"]
            groups, per_group = [np.flatnonzero(index == u) for u in range(units)], self.patches_per_patient
        return PoissonBatchSampler(groups, info["sample_rate"], info["steps_per_epoch"], per_group,
                                   self.sampling_seed, self._rank(), self.world_size)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        _, index = self.train_patient_index()
        dataset = PatientTaggedDataset(self.fit_set, index)
        return DataLoader(dataset, batch_sampler=self.train_batch_sampler(), collate_fn=EmptySafeCollate(dataset[0]),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)  # fmt: skip
