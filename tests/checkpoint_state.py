"""Every tensor of a full Lightning checkpoint (model state and each optimiser's state) and the bit-equality check
the resume tests share: a resumed (or requeued) run must end exactly where the uninterrupted run ended."""

from __future__ import annotations

from pathlib import Path

import torch


def last_checkpoint(run: Path) -> Path:
    """The one `lightning_logs/version_*/checkpoints/last.ckpt` of a run folder (fails if there are several)."""
    found = sorted(run.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    assert len(found) == 1, f"{run}: expected one last.ckpt, found {[str(p) for p in found]}"
    return found[0]


def checkpoint_tensors(ckpt: Path) -> dict[tuple, torch.Tensor]:
    """("model", name) for every state-dict entry, ("optimizer", i, param, slot) for every optimiser tensor."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    tensors: dict[tuple, torch.Tensor] = {("model", k): v for k, v in state["state_dict"].items()}
    for i, opt in enumerate(state["optimizer_states"]):
        for param, slots in opt["state"].items():
            tensors |= {("optimizer", i, param, k): v for k, v in slots.items() if torch.is_tensor(v)}
    return tensors


def assert_same_state(want: dict[tuple, torch.Tensor], got: dict[tuple, torch.Tensor]) -> float:
    """Same keys, optimiser state present, every tensor `torch.equal`; returns the largest |difference| (0.0) so a
    caller can print it. On failure the message lists each differing tensor with its largest difference."""
    assert want.keys() == got.keys(), sorted(set(want) ^ set(got), key=str)
    assert any(k[0] == "optimizer" for k in want), "no optimiser state in the checkpoint"
    diffs = {k: (want[k].double() - got[k].double()).abs().max().item() for k in want if want[k].numel()}
    unequal = {k: diffs.get(k, "shape/dtype") for k in want if not torch.equal(want[k], got[k])}
    assert not unequal, unequal
    return max(diffs.values(), default=0.0)
