"""Pix2Pix LightningModule: one D and one G step per batch, no D gradient after the G step, losses, overfitting
two slices, the target range carried by the checkpoint, test reports in physical units, fine-tuning weights."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

from datamodules.perfusion_data import PerfusionDataModule
from lightning_modules.pix2pix import Pix2Pix
from networks.pix2pix import PatchDiscriminator, TemporalUnetGenerator, UnetGenerator
from tests.perfusion_fixtures import write_tiny_cohort

SHAPE = (32, 32, 3)


def cpu_temp_pix2pix(**kwargs) -> Pix2Pix:
    """The CPU variant of configs/experiment/cpu_thesis_temp_pix2pix.yaml (62,129 + 21,225 parameters)."""
    torch.manual_seed(0)
    return Pix2Pix(TemporalUnetGenerator(ngf=4, unet_ngf=4, num_downs=5), PatchDiscriminator(81, ndf=8), **kwargs)


def trainer(root: Path, **kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=str(root), **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("dsc"), n_patients=4, shape=SHAPE)  # the simulator, tiny


def datamodule(cohort: Path, **kwargs) -> PerfusionDataModule:
    return PerfusionDataModule(cohort_dir=str(cohort), target_map="tmax", batch_size=2, **kwargs)


def adam_steps(opt: torch.optim.Optimizer) -> int:
    """Steps Adam has taken (its per-parameter `step`, equal over all parameters)."""
    steps = {int(state["step"]) for state in opt.state.values()}
    assert len(steps) <= 1 and len(opt.state) == sum(len(g["params"]) for g in opt.param_groups)
    return steps.pop() if steps else 0


class StepAudit(Callback):
    """Per training batch: optimiser steps taken and D parameters holding a gradient after the batch."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.d_grads_left: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.steps.append(tuple(adam_steps(opt.optimizer) for opt in pl_module.optimizers()))
        self.d_grads_left.append(sum(p.grad is not None for p in pl_module.discriminator.parameters()))


def test_one_discriminator_and_one_generator_step_per_batch(cohort: Path, tmp_path: Path) -> None:
    module, audit = cpu_temp_pix2pix(), StepAudit()
    seen_d_grads: list[int] = []
    generator_step = module._generator_step

    def checked_generator_step(frames, target, fake) -> None:  # noqa: ANN001
        before = [p.detach().clone() for p in module.discriminator.parameters()]
        generator_step(frames, target, fake)
        seen_d_grads.append(sum(p.grad is not None for p in module.discriminator.parameters()))
        assert all(torch.equal(a, p) for a, p in zip(before, module.discriminator.parameters()))  # D untouched

    module._generator_step = checked_generator_step
    trainer(tmp_path, max_steps=6, limit_val_batches=0, callbacks=[audit]).fit(module, datamodule(cohort))
    assert audit.steps == [(1, 1), (2, 2), (3, 3)]  # Lightning's global_step counts both: 6 = 3 batches
    assert seen_d_grads == [0, 0, 0] and audit.d_grads_left == [0, 0, 0]
    assert all(p.requires_grad for p in module.parameters())  # toggling restored


def test_losses_are_the_papers(cohort: Path) -> None:
    """D: 0.5·(BCE(D(x,y),1) + BCE(D(x,G(x)),0)); G: BCE(D(x,G(x)),1) + λ·L1, on the networks' outputs."""
    module = cpu_temp_pix2pix(lambda_l1=3.0)
    dm = datamodule(cohort)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda k, v, **_: logged.__setitem__(k, v)  # type: ignore[method-assign]
    module.log_dict = lambda d, **_: logged.update(d)  # type: ignore[method-assign]
    module.optimizers = lambda: [torch.optim.SGD(module.discriminator.parameters(), lr=0.0),  # type: ignore[method-assign]
                                 torch.optim.SGD(module.generator.parameters(), lr=0.0)]  # fmt: skip
    module.manual_backward = lambda loss: loss.backward()  # type: ignore[method-assign]
    module.toggled_optimizer = lambda opt: __import__("contextlib").nullcontext()  # type: ignore[method-assign]
    module.training_step(batch, 0)
    x, y = batch["frames"], batch["target"]
    with torch.no_grad():
        fake = module.generator(x)
        d = lambda m: module.discriminator(torch.cat([x, m], 1))  # noqa: E731
        bce = F.binary_cross_entropy_with_logits
        d_real, d_fake = d(y), d(fake)
        want_d = 0.5 * (bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake)))
        want_g = bce(d_fake, torch.ones_like(d_fake)) + 3.0 * F.l1_loss(fake, y)
    torch.testing.assert_close(logged["train/d_loss"], want_d)
    torch.testing.assert_close(logged["train/g_loss"], want_g)


def test_discriminator_width_must_match_the_frames() -> None:
    with pytest.raises(ValueError, match="in_channels must be 80 \\+ 1 = 81, got 80"):
        Pix2Pix(UnetGenerator(80, 1, 5, 4), PatchDiscriminator(80, ndf=4))


def test_cpu_temp_pix2pix_overfits_two_slices(cohort: Path, tmp_path: Path) -> None:
    """L1 (normalised) falls by more than half within 50 steps on two slices (notes/perfusion.md B8)."""
    dm = datamodule(cohort)
    dm.setup("fit")
    two = [dm.dataset("train")[i] for i in range(2)]
    loader = DataLoader(two * 50, batch_size=2, shuffle=False)
    adam = lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.5, 0.999))  # noqa: E731 - cpu_thesis_* setting
    module = cpu_temp_pix2pix(generator_optimizer=adam, discriminator_optimizer=adam)
    l1: list[float] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            l1.append(float(trainer.callback_metrics["train/l1"]))

    trainer(tmp_path, max_epochs=1, callbacks=[Record()]).fit(module, loader)
    assert len(l1) == 50
    assert min(l1[-5:]) < 0.5 * l1[0], l1


def test_checkpoint_carries_the_target_range_and_test_is_in_physical_units(cohort: Path, tmp_path: Path) -> None:
    dm = datamodule(cohort)
    module = cpu_temp_pix2pix(report_dir=str(tmp_path / "report"))
    fit = trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    fit.fit(module, dm)
    assert (module.target_lo.item(), module.target_hi.item()) == (dm.target_scaler.lo, dm.target_scaler.hi)
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["state_dict"]["target_hi"].item() == pytest.approx(dm.target_scaler.hi)

    reloaded = Pix2Pix.load_from_checkpoint(ckpt)  # networks rebuilt from the specs in the hyper-parameters
    assert isinstance(reloaded.generator, TemporalUnetGenerator) and reloaded.target_hi.item() == dm.target_scaler.hi
    fresh = cpu_temp_pix2pix(report_dir=str(tmp_path / "report"))
    results = trainer(tmp_path).test(fresh, datamodule(cohort), ckpt_path=str(ckpt), verbose=False)[0]
    assert fresh.target_hi.item() == pytest.approx(dm.target_scaler.hi)
    batch = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(fresh.to_physical(batch["target"]).float(), batch["pipeline"], atol=1e-5, rtol=1e-5)
    fresh.eval()  # Lightning hands the module back in train mode; test used BN running statistics
    per_slice = []  # the test set is one patient: its mean over slices of the brain MAE in physical units
    for b in dm.test_dataloader():
        error = (fresh.predict_step(b).double() - b["pipeline"].double()).abs()
        per_slice += [error[i][b["mask"][i]].mean().item() for i in range(len(error))]
    assert len(set(dm.splits["test"])) == 1 and len(per_slice) > 1
    rows = [r for r in json.loads((tmp_path / "report" / "summary.json").read_text()).items()]
    assert ("target_range", [dm.target_scaler.lo, dm.target_scaler.hi]) in rows
    assert results["test/pred_vs_pipeline/brain/mae_mean"] == pytest.approx(np.mean(per_slice), rel=1e-5)
    assert 0 < results["test/pipeline_vs_truth/brain/mae_mean"] < 5  # the fixture's ±20 % pipeline error, seconds
    example = np.load(tmp_path / "report" / "example.npz")
    assert any(k.endswith("/pred") for k in example.files) and any(k.endswith("/frames") for k in example.files)


def test_pretrained_weights_load_and_mismatch_names_the_file(cohort: Path, tmp_path: Path) -> None:
    module = cpu_temp_pix2pix()
    trainer(tmp_path, max_steps=2, limit_val_batches=0, enable_checkpointing=True).fit(module, datamodule(cohort))
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    tuned = Pix2Pix(TemporalUnetGenerator(ngf=4, unet_ngf=4, num_downs=5), PatchDiscriminator(81, ndf=8),
                    pretrained=str(ckpt))  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(module.generator.state_dict().values(), tuned.generator.state_dict().values()))
    with pytest.raises(ValueError, match=f"{ckpt.name}.*generator weights do not fit"):
        Pix2Pix(TemporalUnetGenerator(ngf=8, unet_ngf=4, num_downs=5), PatchDiscriminator(81, ndf=8), pretrained=str(ckpt))


def test_eval_batchnorm_batch_uses_batch_statistics_and_leaves_the_state(cohort: Path) -> None:
    dm = datamodule(cohort)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    running, batch_stats = cpu_temp_pix2pix().eval(), cpu_temp_pix2pix(eval_batchnorm="batch").eval()
    before = {k: v.clone() for k, v in batch_stats.state_dict().items()}
    out_running, out_batch = running.predict_step(batch), batch_stats.predict_step(batch)
    assert not torch.allclose(out_running, out_batch)  # same weights (seed 0), other statistics
    assert all(torch.equal(before[k], v) for k, v in batch_stats.state_dict().items())
    assert not any(m.training for m in batch_stats.modules())
