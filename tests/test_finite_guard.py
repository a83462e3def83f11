"""FiniteGuard: a NaN batch stops a GAN (manual optimisation) and a U-Net (automatic) run with a message naming
step, network and loss, before any checkpoint of that step; "skip" goes on and counts; AMP skips are logged."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from callbacks.finite_guard import FiniteGuard, NonFiniteTrainingError
from cli import main
from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort

pytestmark = [pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*"),
              pytest.mark.filterwarnings("ignore:Using ModelCheckpoint with manual optimization")]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("guard") / "cohort", n_patients=6)


def _guarded(tmp_path: Path, nan_batches: list[int], mode: str = "stop") -> str:
    """A config fragment with the shipped trainer callbacks (their FiniteGuard set to `mode`), the NaN injection
    and a last.ckpt refreshed after every batch. The list replaces cpu.yaml's, so there is one guard, as shipped."""
    shipped = yaml.safe_load((CONFIGS / "trainer" / "cpu.yaml").read_text())["trainer"]["callbacks"]
    guards = [c for c in shipped if c["class_path"] == "callbacks.finite_guard.FiniteGuard"]
    assert len(guards) == 1, "configs/trainer/cpu.yaml must enable exactly one FiniteGuard"
    guards[0]["init_args"] = {**guards[0].get("init_args", {}), "on_nonfinite": mode}
    cfg = {"trainer": {"callbacks": [
        *shipped,
        {"class_path": "tests.nan_injection.InjectNaN", "init_args": {"batches": nan_batches}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(tmp_path / "every_batch"), "every_n_train_steps": 1, "save_top_k": 1,
                       "save_last": True}},
    ]}}  # fmt: skip
    path = tmp_path / "guard.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _fit(experiment: str, cohort: Path, tmp_path: Path, nan_batches: list[int], mode: str = "stop",
         epochs: int = 2) -> L.pytorch.cli.LightningCLI:
    args = cpu_args(CONFIGS / "experiment" / experiment, cohort, tmp_path / "run")
    return main(["fit", *args, "--config", _guarded(tmp_path, nan_batches, mode), "--trainer.max_epochs",
                 str(epochs), "--trainer.log_every_n_steps", "1"])


def _checkpoint_tensors(path: Path) -> tuple[int, list[torch.Tensor]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["global_step"], list(ckpt["state_dict"].values())


@pytest.mark.parametrize(("experiment", "network", "loss"), [
    ("cpu_wgan_gp_sn.yaml", "critic", "train/critic_loss"),  # manual optimisation, two optimisers
    ("cpu_unet.yaml", "net", "train/loss"),  # automatic optimisation
])  # fmt: skip
def test_nan_batch_stops_the_run_and_keeps_the_last_good_checkpoint(cohort: Path, tmp_path: Path,
                                                                     experiment: str, network: str, loss: str) -> None:
    with pytest.raises(NonFiniteTrainingError) as err:
        _fit(experiment, cohort, tmp_path, nan_batches=[7])  # 6 batches per epoch: the 2nd batch of epoch 1
    msg = str(err.value)
    assert f"loss {loss}" in msg and f"gradient of {network} " in msg and "epoch 1, batch 1" in msg, msg
    step = int(re.search(r"global step (\d+)", msg).group(1))
    saved_step, tensors = _checkpoint_tensors(tmp_path / "every_batch" / "last.ckpt")
    assert 0 < saved_step < step  # the state after the batch before the NaN one
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def test_skip_mode_skips_counts_and_trains_on(cohort: Path, tmp_path: Path) -> None:
    cli = _fit("cpu_wgan_gp_sn.yaml", cohort, tmp_path, nan_batches=[2, 4], mode="skip", epochs=1)
    guard = next(c for c in cli.trainer.callbacks if isinstance(c, FiniteGuard))
    assert cli.trainer.state.finished and guard.skipped_steps == 2
    assert float(cli.trainer.callback_metrics["train/nonfinite_skipped_steps"]) == 2.0
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    states = torch.load(tmp_path / "every_batch" / "last.ckpt", weights_only=True)["callbacks"]
    assert states["FiniteGuard"] == {"skipped_steps": 2, "amp_skipped_steps": 0}  # a resume goes on counting


def test_skip_mode_stops_when_every_batch_is_broken(cohort: Path, tmp_path: Path) -> None:
    args = cpu_args(CONFIGS / "experiment" / "cpu_unet.yaml", cohort, tmp_path / "run")
    cfg = yaml.safe_load(Path(_guarded(tmp_path, list(range(100)), "skip")).read_text())
    guard = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("FiniteGuard"))
    guard["init_args"]["max_consecutive_skips"] = 3
    (tmp_path / "all_nan.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(NonFiniteTrainingError, match=r"4 batches in a row had their steps non-finite gradients "
                                                     r"skipped; last: gradient of net"):
        main(["fit", *args, "--config", str(tmp_path / "all_nan.yaml"), "--trainer.max_epochs", "1"])


class _Tiny(L.LightningModule):
    """Linear regression whose loss is multiplied by inf on chosen batches (an fp16 overflow)."""

    def __init__(self, inf_batches: set[int]) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.inf_batches = inf_batches

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).float(), y)
        self.log("train/loss", loss.detach().clamp(max=1e3))  # the logged value stays finite
        return loss * float("inf") if batch_idx in self.inf_batches else loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_amp_scaler_skips_are_counted_not_fatal(tmp_path: Path) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    guard = FiniteGuard()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[guard],
                        plugins=[MixedPrecision("16-mixed", "cpu", scaler)], default_root_dir=tmp_path)
    model = _Tiny({2, 5})
    trainer.fit(model, loader)
    assert trainer.state.finished and guard.amp_skipped_steps == 2 and guard.skipped_steps == 0
    assert float(trainer.callback_metrics["train/amp_skipped_steps"]) == 2.0
    assert scaler.get_scale() < 2.0**8  # the scaler did skip and back off
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_nan_on_one_ddp_rank_stops_every_rank_with_an_error_status(cohort: Path, tmp_path: Path) -> None:
    """As a user runs it: `tofgan fit` under DDP (2 CPU processes) exits non-zero, naming the problem, and
    does not hang with one rank waiting for the other."""
    from tests.test_ddp import DDP, TOFGAN

    guard = yaml.safe_load(Path(_guarded(tmp_path, [1])).read_text())
    inject = next(c for c in guard["trainer"]["callbacks"] if c["class_path"].endswith("InjectNaN"))
    inject["init_args"]["rank"] = 1
    (tmp_path / "ddp_guard.yaml").write_text(yaml.safe_dump(guard))
    args = cpu_args(CONFIGS / "experiment" / "cpu_unet.yaml", cohort, tmp_path / "run")
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # tests.nan_injection, from another cwd
    proc = subprocess.run([TOFGAN, "fit", *args, *DDP, "--config", str(tmp_path / "ddp_guard.yaml"),
                           "--trainer.max_epochs", "1", "--data.init_args.batch_size", "8"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "NonFiniteTrainingError: non-finite values at global step" in proc.stderr, proc.stderr[-3000:]
