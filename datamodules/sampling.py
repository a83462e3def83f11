"""Train-batch order that a resumed run repeats exactly, also when it resumes in the middle of an epoch.

- `EpochShuffleSampler` is torch's `DistributedSampler` (shuffle seeded by seed + epoch, a disjoint shard per
  DDP rank; Lightning calls `set_epoch` before every epoch and leaves a DistributedSampler in place instead of
  injecting its own), plus a one-shot start offset for resuming inside an epoch.
- `ResumableLoader` is a DataLoader with Lightning's stateful-loader interface (`state_dict` /
  `load_state_dict`): the fit loop stores its state in every checkpoint and restores it before the first
  batch of a resumed run. Lightning itself restores only the batch counters and re-iterates the loader from
  the start of the epoch (warning "your dataloader is not resumable"); this loader skips the batches the
  interrupted run had already trained on instead, so the resumed epoch sees the same batches in the same order.
  Written here because torch's DataLoader has no such state and torchdata's StatefulDataLoader is not a
  dependency of the suite.

The position is counted in batches handed to the training loop (not indices drawn by the sampler), so it is
exact with worker prefetching too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """Shuffle depending on (seed, epoch) only, sharded over `num_replicas` ranks; see the module docstring."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 keyed: bool = False) -> None:  # fmt: skip
        """`keyed`: yield (epoch, index) instead of index, for datasets whose items depend on the epoch too
        (`datamodules.augmentation.AugmentedDataset` draws each patch's augmentation from them)."""
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.keyed = keyed
        self.start = 0  # indices of this epoch to skip once (set when resuming mid-epoch)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a resume offset belongs to the epoch it was saved in
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter([(self.epoch, i) for i in indices[start:]] if self.keyed else indices[start:])


class ResumableLoader(DataLoader):
    """DataLoader over an `EpochShuffleSampler` whose position in the epoch is saved in checkpoints."""

    sampler: EpochShuffleSampler
    _batches_done = 0

    @classmethod
    def like(cls, loader: DataLoader) -> DataLoader:
        """The same loader (every setting the datamodule chose) made resumable; unchanged for other samplers."""
        if not isinstance(loader.sampler, EpochShuffleSampler):
            return loader
        return cls(
            loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler, drop_last=loader.drop_last,
            num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
            timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
            prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
            multiprocessing_context=loader.multiprocessing_context,
        )  # fmt: skip

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self._batches_done = self.sampler.start // self.batch_size if self.batch_size else 0
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_done": self._batches_done,
                "batch_size": int(self.batch_size or 1), "num_replicas": self.sampler.num_replicas,
                "seed": self.sampler.seed}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Position the next iteration after the batches already trained on. The order of the rest of the
        epoch is only the same with the same batch size, world size and seed, so a change is refused."""
        now = {"batch_size": int(self.batch_size or 1), "num_replicas": self.sampler.num_replicas,
               "seed": self.sampler.seed}  # fmt: skip
        changed = {k: (state.get(k), v) for k, v in now.items() if state.get(k, v) != v}
        if changed:
            raise ValueError(
                "resuming inside an epoch needs the interrupted run's data order, but these settings changed "
                f"(checkpoint, now): {changed}; resume from an end-of-epoch checkpoint or restore the settings"
            )
        self.sampler.set_epoch(int(state["epoch"]))
        self.sampler.start = int(state["batches_done"]) * now["batch_size"]


def epoch_shuffle_sampler(dataset: Dataset, trainer: Any, seed: int, keyed: bool = False) -> EpochShuffleSampler:
    """The train sampler of a datamodule: this process's shard (whole dataset without a Trainer)."""
    world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
    rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0
    return EpochShuffleSampler(dataset, num_replicas=world, rank=rank, seed=seed, keyed=keyed)
