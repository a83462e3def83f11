"""The privacy record of a DP-WGAN run: ε each epoch, the full record in the run manifest, checkpoint and W&B summary,
and the accountant's history through checkpoints (a resumed run's ε equals the uninterrupted run's).

A mixin of `lightning_modules.dp_wgan.DPWGAN`, kept apart so the training step reads alone. It reads the module's
`accountant`, `sampling`, `sigma`, `delta`, `private` and settings; what a record holds: dp-privacy.md §4.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from lightning_modules.dp_accounting import accountant_steps, epsilon_of, epsilon_report, opacus_version


class PrivacyRecord:
    """ε logging, `privacy_report()`, manifest extras, W&B summary and checkpointed accountant of a DP-WGAN."""

    def epsilon(self) -> float:
        if not self.private:
            return math.inf
        return epsilon_of(self.accountant.history, self.delta, "rdp") if self.delta else 0.0

    def on_train_epoch_end(self) -> None:
        """ε after this epoch (public); the σ = ∞ reference logs nothing here (its ε is ∞ by construction)."""
        if self.private:
            self.log_dict({"privacy/epsilon": self.epsilon(), "privacy/noise_multiplier": float(self.sigma),
                           "privacy/accountant_steps": float(accountant_steps(self.accountant.history))})

    def privacy_report(self) -> dict[str, Any]:
        """What the guarantee is and how it was computed (note §4): for the manifest, checkpoint and synthetic stores."""
        history = [list(h) for h in self.accountant.history]
        s = self.sampling
        record: dict[str, Any] = {
            "unit": s.get("unit"), "adjacency": "add/remove one " + (s.get("unit") or "record"), "private": self.private,
            "noise_multiplier": self.sigma, "max_grad_norm": self.max_grad_norm, "sampling": s.get("sampling"),
            "sample_rate": s.get("sample_rate"), "expected_batch_size": s.get("expected_batch_size"),
            "population": s.get("population"), "n_canaries": s.get("n_canaries"),
            "patches_per_patient": s.get("patches_per_patient"),
            "steps": accountant_steps(self.accountant.history), "steps_per_epoch": s.get("steps_per_epoch"),
            "epoch_definition": "round(1/q) critic steps; ε counts critic steps, one per real-data critic update",
            "delta": self.delta, "accountant": "rdp (guarantee); prv alongside, labelled", "history": history,
            "target_epsilon": self.target_epsilon, "step_budget": self.step_budget, "n_critic": self.n_critic,
            "fake_term": self.fake_term, "critic_trainable": self.critic_trainable, "gradient_penalty": self.gradient_penalty, "fake_batch_size": self.fake_batch_size, "weight_clip": self.weight_clip,
            "opacus_version": opacus_version(), "secure_mode": False,
            "rng": "os-entropy" if self.dp_noise_seed is None else "seeded (testing only: a known seed voids the guarantee)",
            "pretrained_on_public_data": self.pretrained,
            "selection_note": "epoch/model selection on private validation patients is outside the guarantee unless they are public",
        }  # fmt: skip
        if not self.private:
            return {**record, "epsilon": math.inf, "epsilon_prv": math.inf, "prv_note": "non-private (σ = ∞)"}
        record.update(epsilon_report(self.accountant.history, self.delta or 1e-5, self.prv_alongside))
        if s.get("unit") == "patient" and self.delta != 1e-5:
            record["epsilon_at_delta_1e-5"] = epsilon_of(self.accountant.history, 1e-5, "rdp")
        return record

    def manifest_extras(self) -> dict[str, Any]:
        return {"privacy": self.privacy_report()}

    def on_fit_end(self) -> None:  # type: ignore[misc]
        """ε in the W&B summary (the run manifest and checkpoints carry the full record)."""
        if self.global_rank != 0:
            return
        report = self.privacy_report()
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update({f"privacy/{k}": report[k] for k in ("epsilon", "epsilon_prv", "delta",
                                                  "noise_multiplier", "sample_rate", "steps", "unit")})  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["privacy"] = self.privacy_report()
        checkpoint["dp_accountant"] = {"history": [list(h) for h in self.accountant.history], "sigma": self.sigma}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("dp_accountant")
        if saved is not None:  # a resumed run continues the count (and keeps a σ chosen from a target ε)
            self.accountant.history = [tuple(h) for h in saved["history"]]
            self.sigma = saved["sigma"] if self.sigma is None else self.sigma
