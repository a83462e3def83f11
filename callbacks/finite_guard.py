"""Stop (or skip) a training step whose losses, gradients or weights are not finite, before anything is saved.

Lightning does not check: NaN patches gave NaN losses, exit status 0 and a checkpoint of NaN weights. This
callback works for every LightningModule of the suite, automatic (U-Net) and manual optimisation (GANs) alike:

* `on_before_optimizer_step` runs after backward and before the parameter update, also in manual optimisation
  (`LightningOptimizer.step` → precision plugin → `_after_closure`). Non-finite gradients make that step a no-op
  (gradients set to None: torch optimisers then change neither weights nor their state), so the weights stay
  the last good ones. Under "16-mixed" the GradScaler has already unscaled the gradients and skips such a step
  itself (normal while it calibrates its scale): those steps are counted and logged as `train/amp_skipped_steps`,
  and only `max_consecutive_skips` in a row stop the run.
* `on_train_batch_end` reads the `train/…` values the module logged in this batch and checks the weights.
  Lightning runs ModelCheckpoint callbacks after all others, so raising here means no checkpoint of this step is
  written and the previous `last.ckpt` stays intact.

`on_nonfinite="stop"` (default) raises `NonFiniteTrainingError` naming the step, the network(s) and the loss
key(s). `"skip"` skips such optimizer steps and goes on, counting them in `train/nonfinite_skipped_steps`; in that
mode the decision rests on the gradients (a NaN loss gives NaN gradients), non-finite weights still stop the run,
and so do more than `max_consecutive_skips` skipped batches in a row (the data are broken, not one batch).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteTrainingError(FloatingPointError):
    """A loss, gradient or weight became NaN/Inf during training; the message says where."""


def _network(names: list[str]) -> str:
    """Top-level module names (generator, critic, net, ...) of qualified parameter names."""
    return ", ".join(sorted({n.split(".", 1)[0] for n in names})) or "?"


def _listing(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", … ({len(names)} tensors)" if len(names) > n else "")


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """One fused pass and one host sync: the total L2 norm is NaN/Inf iff an element is, or iff the norm
    overflows float32 (> 3.4e38, a blow-up as well). ~12× faster than per-tensor isfinite on the CPU."""
    return not tensors or bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors)))


def _nonfinite(named: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the non-finite tensors (slow path, only after `_all_finite` failed)."""
    bad = [n for n, t in named if not bool(torch.isfinite(t).all())]
    return bad or [f"total norm overflows float32 ({', '.join(n for n, _ in named[:2])}, …)"]


class FiniteGuard(Callback):
    """See the module docstring.

    Args:
        on_nonfinite: "stop" raises NonFiniteTrainingError at the first non-finite loss or gradient; "skip"
            skips optimizer steps with non-finite gradients and counts them (`train/nonfinite_skipped_steps`).
        max_consecutive_skips: more batches in a row with skipped steps (by "skip" or by the AMP GradScaler)
            stop the run.
        check_weights: also check every weight after each batch (one fused pass).
    """

    def __init__(self, on_nonfinite: Literal["stop", "skip"] = "stop", max_consecutive_skips: int = 25,
                 check_weights: bool = True) -> None:
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.check_weights = check_weights
        self.skipped_steps = 0
        self.amp_skipped_steps = 0
        self._consecutive = 0
        self._names: dict[int, str] = {}
        self._batch_grads: list[str] = []  # problems found by on_before_optimizer_step in this batch
        self._batch_amp_skip = False

    # ------------------------------------------------------------------ hooks
    def state_dict(self) -> dict[str, int]:
        """The counts travel in the checkpoint, so a resumed run goes on counting."""
        return {"skipped_steps": self.skipped_steps, "amp_skipped_steps": self.amp_skipped_steps}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.amp_skipped_steps = int(state_dict.get("amp_skipped_steps", 0))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._names = {id(p): n for n, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch_grads, self._batch_amp_skip = [], False

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        if _all_finite([p.grad for p in params]):
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            self._batch_amp_skip = True  # GradScaler.step skips it and lowers its scale
            return
        bad = _nonfinite([(self._names.get(id(p), "?"), p.grad) for p in params])
        for p in params:
            p.grad = None  # the update becomes a no-op: weights and optimiser state stay as they were
        self._batch_grads.append(f"gradient of {_network(bad)} ({_listing(bad)}); that optimizer step was skipped")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
        weights = self._bad_weights(pl_module) if self.check_weights else []
        if weights:
            self._raise(trainer, where, [f"weights of {_network(weights)} ({_listing(weights)})"])
        if self.on_nonfinite == "stop":
            losses = self._bad_losses(trainer)
            problems = [f"loss {', '.join(losses)}"] if losses else []
            problems += self._batch_grads
            if self._any_rank(trainer, bool(problems)):
                self._raise(trainer, where, problems or ["on another rank"])
        skipped = bool(self._batch_grads)
        self.skipped_steps += skipped
        self.amp_skipped_steps += self._batch_amp_skip
        self._consecutive = self._consecutive + 1 if (skipped or self._batch_amp_skip) else 0
        if self._consecutive > self.max_consecutive_skips:
            what = "GradScaler skipped" if self._batch_amp_skip else "non-finite gradients skipped"
            self._raise(trainer, where, [f"{self._consecutive} batches in a row had their steps {what}; "
                                         f"last: {'; '.join(self._batch_grads) or 'non-finite scaled gradients'}"])
        if self.on_nonfinite == "skip":
            pl_module.log("train/nonfinite_skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            pl_module.log("train/amp_skipped_steps", float(self.amp_skipped_steps), on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _bad_losses(trainer: L.Trainer) -> list[str]:
        """`train/…` values logged in this step that are not finite (the `_step` twin of a key is dropped)."""
        logged = {k: v for k, v in trainer.callback_metrics.items()
                  if k.startswith("train/") and isinstance(v, torch.Tensor)}
        if not logged:
            return []
        device = next(iter(logged.values())).device
        finite = torch.stack([torch.isfinite(v.detach()).all().to(device) for v in logged.values()]).tolist()
        return sorted({k.removesuffix("_step") for k, ok in zip(logged, finite) if not ok})

    @staticmethod
    def _bad_weights(pl_module: L.LightningModule) -> list[str]:
        named = [(n, p.detach()) for n, p in pl_module.named_parameters()]
        return [] if _all_finite([p for _, p in named]) else _nonfinite(named)

    @staticmethod
    def _any_rank(trainer: L.Trainer, flag: bool) -> bool:
        """Every DDP rank must stop together (a loss can be NaN on one rank only)."""
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))
        return flag

    def _raise(self, trainer: L.Trainer, where: str, problems: list[str]) -> None:
        hint = ("Nothing of this step was saved: the last checkpoint is the last good state. Look for NaN/Inf in "
                "the data or lower the learning rate; `on_nonfinite: skip` skips such steps and counts them.")
        raise NonFiniteTrainingError(f"non-finite values at {where}: {'; '.join(problems)}. {hint}")
