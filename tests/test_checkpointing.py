"""Resumable checkpoints: written atomically, at every epoch end and every N batches; train order by (seed, epoch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks.checkpointing import AtomicCheckpointIO, ResumeCheckpoint
from datamodules.sampling import EpochShuffleSampler, ResumableLoader


def test_atomic_save_keeps_the_previous_checkpoint_when_a_write_dies(tmp_path: Path, monkeypatch) -> None:
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, target)
    (tmp_path / ".last.ckpt.tmp-99999").write_bytes(b"left by a killed write")

    def dies_half_way(obj: Any, fh: Any) -> None:
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the orphan and the half write are gone
    io.save_checkpoint({"step": torch.tensor(3)}, target)
    assert torch.load(target, weights_only=True)["step"] == 3


class _SeenCheckpoints(Callback):
    def __init__(self, path: Path) -> None:
        self.path, self.steps = path, []

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        if self.path.is_file():
            self.steps.append(torch.load(self.path, weights_only=True)["global_step"])


def test_resume_checkpoint_saves_every_epoch_and_every_n_batches(tmp_path: Path) -> None:
    ckpt, seen = ResumeCheckpoint(dirpath=tmp_path, every_n_train_batches=3), _SeenCheckpoints(tmp_path / "last.ckpt")
    trainer = Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[ckpt, seen],
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      plugins=[AtomicCheckpointIO()])  # fmt: skip
    trainer.fit(BoringModel())
    # after batch 3 (step 3), at the end of epoch 0 (step 4), after batch 6 (step 6); the end: step 8
    assert sorted(set(seen.steps)) == [3, 4, 6]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 8
    assert "optimizer_states" in torch.load(tmp_path / "last.ckpt", weights_only=True)


def _order(sampler: EpochShuffleSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_shuffle_depends_on_seed_and_epoch_and_ranks_are_disjoint() -> None:
    data = list(range(20))
    one = EpochShuffleSampler(data, seed=3)
    assert _order(one, 0) == _order(EpochShuffleSampler(data, seed=3), 0)
    assert _order(one, 0) != _order(one, 1) and sorted(_order(one, 1)) == data
    ranks = [_order(EpochShuffleSampler(data, num_replicas=2, rank=r, seed=3), 1) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == data


def test_loader_resumes_after_the_batches_already_trained() -> None:
    data = torch.arange(24)
    loader = ResumableLoader(data, batch_size=4, sampler=EpochShuffleSampler(data, seed=1), drop_last=True)
    loader.sampler.set_epoch(2)
    it = iter(loader)
    first = [next(it), next(it)]
    state = loader.state_dict()
    rest = list(it)
    again = ResumableLoader(data, batch_size=4, sampler=EpochShuffleSampler(data, seed=1), drop_last=True)
    again.load_state_dict(state)
    again.sampler.set_epoch(2)  # what Lightning does before the resumed epoch
    resumed = list(again)
    assert len(first) + len(resumed) == len(loader) and all(torch.equal(a, b) for a, b in zip(rest, resumed))
    again.sampler.set_epoch(3)  # the next epoch is whole again
    assert len(list(again)) == len(loader)
    with pytest.raises(ValueError, match="batch_size"):
        ResumableLoader(data, batch_size=3, sampler=EpochShuffleSampler(data, seed=1)).load_state_dict(state)
