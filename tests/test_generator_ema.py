"""The generator's exponential moving average (`GANModule(generator_ema=…)`): the average equals the EMA
recomputed by hand from the generator's weights after each generator step, every sample comes from it, and
a checkpoint carries it to synthesis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from datamodules.patch_store import PatchStore
from lightning_modules.wgan import WGANGP
from networks.gan3d import Generator3D, WGANCritic3D
from tests.test_gan3d_synthesize import SIZE
from tests.test_wgan import LATENT, loader, tiny_wgan, trainer
from workflows.synthesize import synthesize

DECAY = 0.8  # short memory: four steps still leave every weight visibly different from the average


class RecordGenerator(Callback):
    """The generator's parameters and BatchNorm buffers after each training batch (before the module's hook)."""

    def __init__(self) -> None:
        self.states: list[tuple[int, dict[str, torch.Tensor]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.generator.state_dict().items()}
        self.states.append((pl_module.step_counts["generator"], state))


def hand_ema(states: list[tuple[int, dict[str, torch.Tensor]]], decay: float) -> dict[str, torch.Tensor]:
    """e₁ = w₁, eₖ = d·eₖ₋₁ + (1 − d)·wₖ over the weights wₖ after the k-th generator step."""
    ema: dict[str, torch.Tensor] = {}
    seen = 0
    for steps, state in states:
        if steps == seen:  # a critic-only batch (n_critic = 2)
            continue
        seen = steps
        for k, w in state.items():
            if not w.is_floating_point():
                continue
            ema[k] = w.clone() if k not in ema else decay * ema[k] + (1 - decay) * w
    return ema


def test_average_is_the_ema_of_generator_steps_and_samples_come_from_it():
    torch.manual_seed(0)
    model, record = tiny_wgan(n_critic=2, generator_ema=DECAY), RecordGenerator()
    trainer(max_epochs=1, callbacks=[record]).fit(model, loader(8))  # 8 batches: 4 generator steps
    assert model.step_counts["generator"] == 4 and int(model.generator_average.n_averaged) == 4
    average = model.generator_average.module.state_dict()
    for key, value in hand_ema(record.states, DECAY).items():
        torch.testing.assert_close(average[key], value, msg=key)
        assert not torch.equal(value, model.generator.state_dict()[key]) or value.numel() == 0 or "running" in key
    assert not any(p.requires_grad for p in model.generator_average.parameters())  # never optimised, never reduced
    z = torch.randn(3, LATENT, generator=torch.Generator().manual_seed(5))
    model.generator_average.module.eval()
    expected = model.generator_average.module(z)
    images, labels = model.generate(3, seed=5)
    torch.testing.assert_close(images, expected[:, :1])
    assert torch.equal(labels, model.decode_label(expected[:, 1:2]))
    assert not torch.allclose(images, model.generator.eval()(z)[:, :1])  # not the trained weights


def test_without_ema_samples_come_from_the_trained_generator():
    model = tiny_wgan()
    assert model.generator_average is None and model.sampling_generator is model.generator


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_the_open_unit_interval_is_refused(decay: float):
    with pytest.raises(ValueError, match="generator_ema must lie in"):
        tiny_wgan(generator_ema=decay)


def test_3d_checkpoint_synthesises_from_the_average(tmp_path: Path):
    torch.manual_seed(0)
    model = WGANGP(Generator3D(8, 16, out_size=SIZE), WGANCritic3D(ndf=16, in_size=SIZE), latent_dim=8, n_critic=1,
                   n_sample_grid=2, generator_ema=0.5)  # fmt: skip
    fit = trainer(max_epochs=1, default_root_dir=str(tmp_path))
    fit.fit(model, loader(3, shape=SIZE, batch=2))
    fit.save_checkpoint(tmp_path / "g.ckpt", weights_only=True)  # what the periodic snapshots hold
    root = synthesize(str(tmp_path / "g.ckpt"), str(tmp_path / "syn"), n_samples=4, seed=1, device="cpu")
    expected, _ = model.generate(4, seed=1)
    torch.testing.assert_close(torch.from_numpy(np.array(PatchStore(root).images)), expected)
    assert json.loads((root / "manifest.json").read_text())["generator_ema"] == 0.5
